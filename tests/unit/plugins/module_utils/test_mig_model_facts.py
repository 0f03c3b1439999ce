# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The MIG test helpers (mig_support) are only as good as their likeness to real facts: checked against the real H100."""
from __future__ import annotations

from mig_support import model_gpu, real_h100_gpus  # pylint: disable=import-error


def test_model_facts_reproduce_the_real_h100_profiles():
    real = real_h100_gpus()[0]
    built = model_gpu('h100-80gb-hbm3', current=False)
    keys = ('id', 'name', 'slices', 'memory_slices', 'instances', 'placements', 'ofas')

    def rows(gpu):
        return sorted(({k: p[k] for k in keys} for p in gpu['mig']['profiles']), key=lambda p: p['id'])
    assert rows(built) == rows(real)
    assert built['pci']['device_id'] == real['pci']['device_id'] and built['name'] == real['name']


def test_instances_in_model_facts_get_the_driver_ids_and_first_fit_compute_instances():
    gpu = model_gpu('a100-sxm4-40gb', instances=(('3g.20gb', 4, [2, 1]), ('1g.5gb', 0)))
    three_g = next(g for g in gpu['mig']['gpu_instances'] if g['profile'] == '3g.20gb')
    assert three_g['id'] == 2 and [(c['slices'], c['placement']['start']) for c in three_g['compute_instances']] == [(2, 0), (1, 2)]
    assert [g['id'] for g in gpu['mig']['gpu_instances']] == [2, 7]
