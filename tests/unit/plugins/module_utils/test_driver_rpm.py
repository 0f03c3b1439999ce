# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RHEL-family driver planner (package names per layout, module stream, versionlock entries, plan, rollback) and
the pure parts of the dnf seam; the fleet test (tests/integration/driver_rhel) runs the same plans with real dnf."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _dnf, _driver, _driver_rpm, _packages

DRIVER = ['nvidia-open', 'cuda-drivers', 'nvidia-driver-cuda', 'nvidia-driver-cuda-libs', 'libnvidia-ml', 'nvidia-kmod-common',
          'kmod-nvidia-open-dkms', 'kmod-nvidia-latest-dkms']
FABRIC = ['nvidia-fabric-manager', 'libnvidia-nscq-580']
VERSIONS = ('580.95.05', '580.159.04')
AVAILABLE = {name: ['%s:%s-1.el9' % (0 if name in FABRIC else 3, v) for v in VERSIONS] for name in DRIVER + FABRIC}
AVAILABLE['nvidia-container-toolkit'] = ['0:1.17.8-1']
OPEN_SET = ['nvidia-open', 'nvidia-driver-cuda', 'nvidia-driver-cuda-libs', 'libnvidia-ml', 'nvidia-kmod-common', 'kmod-nvidia-open-dkms']


def installed(version, names=None):
    names = OPEN_SET + FABRIC if names is None else names
    return {n: {'evr': '%s:%s-1.el9' % (0 if n in FABRIC else 3, version), 'arch': 'x86_64'} for n in names}


def desired(version='580.95.05', flavor='open', layout='streams', nvswitch=True):
    return {'version': version, 'flavor': flavor, 'layout': layout, 'nvswitch': nvswitch, 'reload': True, 'clients': []}


def current(**extra):
    base = {'installed': {}, 'lock': '', 'module': None, 'available': AVAILABLE, 'loaded': {'loaded': False}, 'active_clients': []}
    base.update(extra)
    return base


def test_package_names_per_flavour_and_nvswitch():
    assert _driver_rpm.package_names('580.95.05', 'open') == ['nvidia-open']
    assert _driver_rpm.package_names('580.95.05', 'proprietary', nvswitch=True) == ['cuda-drivers', 'nvidia-fabric-manager', 'libnvidia-nscq-580']
    assert _driver_rpm.stream('580.95.05', 'open') == '580-open' and _driver_rpm.stream('570.195.03', 'proprietary') == '570-dkms'
    with pytest.raises(_driver.DriverError, match='flavor'):
        _driver_rpm.package_names('580.95.05', 'auto')


def test_lock_names_every_driver_package_offered_at_the_version_exactly():
    lines = _driver_rpm.lock_lines('580.95.05', AVAILABLE)
    assert 'kmod-nvidia-open-dkms-3:580.95.05-1.el9.*' in lines and 'nvidia-fabric-manager-0:580.95.05-1.el9.*' in lines
    assert len(lines) == len(DRIVER + FABRIC) and not any('container' in line or '159' in line for line in lines)


def test_lock_text_replaces_the_driver_entries_and_keeps_the_others():
    old = '# Added lock on Mon\nkernel-0:5.14.0-1.el9.*\n\n# Added lock on Tue\nnvidia-open-3:580.0.1-1.el9.*\n!cuda-drivers-3:575.1-1.*\n'
    text = _driver_rpm.lock_text(old, '580.95.05', ['nvidia-open-3:580.95.05-1.el9.*'])
    assert text.splitlines() == ['# Added lock on Mon', 'kernel-0:5.14.0-1.el9.*', '', '# Added lock on Tue', '',
                                 _driver_rpm.LOCK_MARK + ': the NVIDIA driver stays at 580.95.05; upgrades go through the whitelist.',
                                 'nvidia-open-3:580.95.05-1.el9.*']
    # Applying it again to its own result gives the same text (a rerun changes nothing).
    assert _driver_rpm.lock_text(text, '580.95.05', ['nvidia-open-3:580.95.05-1.el9.*']) == text


def test_fresh_install_streams_layout_enables_the_stream_locks_then_installs_at_exact_versions():
    planned = _driver_rpm.plan(current(), desired())
    assert [s['action'] for s in planned['steps']] == ['module_enable', 'lock', 'install', 'load_modules']
    assert planned['steps'][0] == {'action': 'module_enable', 'module': 'nvidia-driver', 'stream': '580-open', 'reset': False}
    assert planned['install'] == {'nvidia-open': '3:580.95.05-1.el9', 'nvidia-fabric-manager': '0:580.95.05-1.el9',
                                  'libnvidia-nscq-580': '0:580.95.05-1.el9'}
    assert planned['stream'] == '580-open' and planned['changed']


def test_versionlock_layout_has_no_module_step():
    planned = _driver_rpm.plan(current(), desired(layout='versionlock'))
    assert [s['action'] for s in planned['steps']] == ['lock', 'install', 'load_modules'] and planned['stream'] is None


def test_rerun_plans_nothing():
    first = _driver_rpm.plan(current(), desired())
    again = _driver_rpm.plan(current(installed=installed('580.95.05'), lock=first['lock'],
                                     module={'stream': '580-open', 'state': 'enabled'},
                                     loaded={'loaded': True, 'version': '580.95.05', 'flavor': 'open'}), desired())
    assert again['steps'] == [] and not again['changed'] and not again['reboot_required']


def test_downgrade_names_every_installed_driver_package_at_the_older_version():
    planned = _driver_rpm.plan(current(installed=installed('580.159.04'), module={'stream': '580-open', 'state': 'enabled'},
                                       loaded={'loaded': True, 'version': '580.159.04', 'flavor': 'open'}), desired('580.95.05'))
    assert planned['install'] == {n: i['evr'].replace('580.159.04', '580.95.05') for n, i in installed('580.159.04').items()}
    assert [s['action'] for s in planned['steps']] == ['unload_modules', 'lock', 'install', 'load_modules']


def test_flavour_switch_resets_the_stream_and_removes_the_other_meta_package():
    have = installed('580.95.05', ['cuda-drivers', 'nvidia-driver-cuda', 'kmod-nvidia-latest-dkms'])
    planned = _driver_rpm.plan(current(installed=have, module={'stream': '580-dkms', 'state': 'enabled'}), desired(nvswitch=False))
    assert planned['steps'][0] == {'action': 'module_enable', 'module': 'nvidia-driver', 'stream': '580-open', 'reset': True}
    assert planned['remove'] == ['cuda-drivers', 'kmod-nvidia-latest-dkms'] and 'nvidia-open' in planned['install']


def test_a_version_the_repository_does_not_offer_is_refused():
    with pytest.raises(_driver.DriverError, match='nvidia-open at driver version 580.105.08 is not offered'):
        _driver_rpm.plan(current(), desired('580.105.08'))


def test_rollback_restores_stream_lock_and_previous_packages():
    before = {'installed': installed('580.95.05', OPEN_SET), 'lock': 'old\n', 'module': {'stream': '580-open', 'state': 'enabled'}}
    after = installed('580.159.04', OPEN_SET + FABRIC)
    steps = _driver_rpm.rollback_plan(before, after)
    assert steps[0] == {'action': 'module_restore', 'module': 'nvidia-driver', 'stream': '580-open', 'state': 'enabled'}
    assert steps[1] == {'action': 'lock', 'content': 'old\n'}
    assert steps[2]['packages'] == {n: i['evr'] for n, i in before['installed'].items()} and steps[2]['remove'] == sorted(FABRIC)


def test_verify_names_what_differs():
    planned = _driver_rpm.plan(current(), desired())
    observed = {'installed': dict(installed('580.95.05'), **{'nvidia-fabric-manager': {'evr': '0:580.159.04-1.el9'}}),
                'lock': planned['lock'], 'module': None}
    assert _driver_rpm.verify(observed, desired(), planned) == [
        'nvidia-fabric-manager is at 0:580.159.04-1.el9, not 580.95.05', 'module stream nvidia-driver:580-open is not enabled']


def test_failed_scriptlets_are_read_from_dnf_output():
    out = ('warning: %post(kmod-nvidia-open-dkms-3:580.105.08-1.el9.x86_64) scriptlet failed, exit status 1\n'
           'Error in POSTIN scriptlet in rpm package kmod-nvidia-open-dkms\nError in POSTUN scriptlet in rpm package nvidia-open\n'
           'Error in POSTIN scriptlet in rpm package bash\nComplete!\n')
    assert _driver_rpm.failed_scriptlets(out) == ['kmod-nvidia-open-dkms']


def test_installed_driver_version_ignores_separately_released_packages():
    have = dict(installed('580.95.05'), **{'nvidia-container-toolkit': {'evr': '0:1.17.8-1'}})
    assert _driver_rpm.installed_driver_version(have) == '580.95.05'
    assert _driver_rpm.installed_driver_version(dict(have, **installed('580.159.04', ['libnvidia-ml']))) == 'mixed:580.95.05,580.159.04'


def test_dnf_seam_parsers():
    assert _dnf.parse_module_file('[nvidia-driver]\nname=nvidia-driver\nstream=580-open\nprofiles=\nstate=enabled\n') == {
        'stream': '580-open', 'state': 'enabled'}
    assert _dnf.parse_module_file(None) is None
    assert _dnf.locklist_path('[main]\nenabled = 1\nlocklist = /etc/dnf/plugins/my.list\n') == '/etc/dnf/plugins/my.list'
    assert _dnf.locklist_path(None) == _dnf.DEFAULT_LOCKLIST


@pytest.mark.parametrize('text, family', [('ID="rocky"\nID_LIKE="rhel centos fedora"\n', 'redhat'), ('ID=almalinux\n', 'redhat'),
                                          ('ID=debian\n', 'debian'), ('ID=ubuntu\nID_LIKE=debian\n', 'debian'), ('ID=arch\n', None)])
def test_os_family_and_package_manager(tmp_path, text, family):
    (tmp_path / 'etc').mkdir()
    (tmp_path / 'etc' / 'os-release').write_text(text)
    assert _packages.os_family(str(tmp_path)) == family
    both = {'apt-get': '/usr/bin/apt-get', 'dnf': '/usr/bin/dnf'}.get
    assert _packages.manager(both, family) == ('dnf' if family == 'redhat' else 'apt')
