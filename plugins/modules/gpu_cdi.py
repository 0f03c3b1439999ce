#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: gpu_cdi
short_description: Regenerate and verify the NVIDIA CDI spec after MIG or vGPU changes
version_added: 0.4.0
description:
  - Keeps the Container Device Interface (CDI) spec of the NVIDIA Container Toolkit in step with the GPUs and MIG
    devices NVML reports, so that container runtimes (containerd, CRI-O, Docker, Podman) and the Kubernetes device
    plugin hand out devices that exist.
  - Where C(nvidia-ctk) is installed, O(generate=true) runs C(nvidia-ctk cdi generate) into a temporary file beside
    O(spec_path) and replaces O(spec_path) with it atomically, only where its content differs. If generation fails,
    the old file stays as it was.
  - O(verify=true) parses the spec (JSON or YAML), checks it against the CDI specification, and compares its devices
    with what NVML reports now. Whole GPUs are matched by index and UUID name and their C(/dev/nvidia<minor>) node;
    MIG devices by their parent's node and the C(/dev/nvidia-caps) nodes of their GPU and compute instance, whose
    minors the driver lists under C(/proc/driver/nvidia/capabilities). A device NVML reports that the spec lacks is
    listed in RV(missing), a device the spec names that is gone or changed in RV(stale), and the task fails.
  - Where C(nvidia-ctk) is not installed there is nothing to do; the result says so (RV(toolkit_installed=false))
    and does not fail.
  - A spec that does not parse, or is not a CDI spec, fails the task naming the file.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Generates into a temporary directory, reports whether O(spec_path) would change and verifies what would be
        written; O(spec_path) is not touched.
  diff_mode:
    support: full
    details:
      - The old and the new spec text.
options:
  spec_path:
    description:
      - The CDI spec file the toolkit's spec lives in. C(.json) writes JSON, any other name YAML.
    type: path
    default: /etc/cdi/nvidia.yaml
  generate:
    description:
      - Regenerate O(spec_path) with C(nvidia-ctk cdi generate).
    type: bool
    default: true
  verify:
    description:
      - Compare the spec's devices with the GPUs and MIG devices NVML reports, and fail on a difference.
    type: bool
    default: true
  nvidia_ctk:
    description:
      - The C(nvidia-ctk) command, a name looked up on C(PATH) or an absolute path.
    type: str
    default: nvidia-ctk
  device_name_strategy:
    description:
      - The names each device gets (C(--device-name-strategy) of C(nvidia-ctk cdi generate)); V(index) is C(0) for a
        GPU and C(0:1) for a MIG device (GPU index, MIG device index), V(uuid) its UUID, V(type-index) C(gpu0),
        C(mig0:1).
    type: list
    elements: str
    choices: [index, uuid, type-index]
    default: [index, uuid]
  capabilities_root:
    description:
      - Where the driver lists the MIG capabilities and their C(/dev/nvidia-caps) minors.
    type: path
    default: /proc/driver/nvidia/capabilities
requirements:
  - nvidia-ml-py (imported as C(pynvml)) on the managed host, for O(verify=true)
  - the NVIDIA Container Toolkit (C(nvidia-ctk)) on the managed host, for anything to be done
notes:
  - The names of MIG devices by UUID are not compared with NVML's MIG UUIDs; a MIG device's index and UUID names
    carry the same device nodes and are judged together by them.
seealso:
  - name: CDI specification
    description: The Container Device Interface specification.
    link: https://github.com/cncf-tags/container-device-interface/blob/main/SPEC.md
  - name: NVIDIA Container Toolkit, CDI support
    description: How the toolkit generates CDI specs.
    link: https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/cdi-support.html
'''

EXAMPLES = r'''
---
- name: Regenerate the CDI spec after a MIG change and check it
  gpuvirt.fleet.gpu_cdi:

- name: Only check a spec generated elsewhere
  gpuvirt.fleet.gpu_cdi:
    spec_path: /var/run/cdi/nvidia.json
    generate: false
'''

RETURN = r'''
toolkit_installed:
  description: Whether C(nvidia-ctk) was found; where it was not, nothing else was done.
  returned: always
  type: bool
  sample: true
spec_path:
  description: The spec file.
  returned: always
  type: str
  sample: /etc/cdi/nvidia.yaml
devices:
  description: The names of the devices in the spec (after generation).
  returned: when the toolkit is installed
  type: list
  elements: str
  sample: ["0", "GPU-4f1c7d2a-6b0e-5d3f-9a8e-1c2b3d4e5f60", "0:0", "all"]
cdi_version:
  description: The spec's cdiVersion.
  returned: when the toolkit is installed
  type: str
  sample: 0.5.0
matches:
  description: Whether the spec names exactly the devices NVML reports (null where O(verify=false)).
  returned: when the toolkit is installed
  type: bool
  sample: true
missing:
  description: Devices NVML reports that the spec lacks.
  returned: when the toolkit is installed
  type: list
  elements: str
  sample: ["MIG device of GPU 0 (GPU-4f1c7d2a-6b0e-5d3f-9a8e-1c2b3d4e5f60): GPU instance 1, compute instance 0 (3g.40gb)"]
stale:
  description: Devices the spec names that NVML no longer reports as they are named.
  returned: when the toolkit is installed
  type: list
  elements: str
  sample: ["0:2 (no such MIG device now)"]
'''

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _cdi, _commands, _nvml, _results, _sysfs

YAML_LOAD = _cdi.yaml_loader()


def _read(path: str):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        return None


def observe(module: AnsibleModule, capabilities_root: str) -> dict:
    result = {}
    session = _nvml.open_or_report(result, _nvml.NvmlSession().open)
    if session is None:
        module.fail_json(**result)
    with session:
        gpus = [_nvml.read_gpu(i) for i in range(_nvml.read_system()['count'])]
    return _cdi.observed_devices(gpus, _sysfs.read_mig_capability_minors(capabilities_root))


def generate(module: AnsibleModule, ctk: str, spec_path: str, workdir: str) -> str:
    """Run nvidia-ctk into `workdir`; the new spec's text (the task fails, naming the tool's error, otherwise)."""
    fmt = 'json' if spec_path.endswith('.json') else 'yaml'
    out = os.path.join(workdir, 'nvidia.' + fmt)
    argv = [ctk, 'cdi', 'generate', '--output=%s' % out, '--format=%s' % fmt]
    argv += ['--device-name-strategy=%s' % s for s in module.params['device_name_strategy']]
    rc, stdout, stderr = module.run_command(argv, environ_update={'LC_ALL': 'C'})
    text = _read(out)
    if rc != 0 or text is None:
        module.fail_json(msg='nvidia-ctk cdi generate failed (rc=%d); %s is left as it was: %s'
                         % (rc, spec_path, (stderr or stdout).strip()), toolkit_installed=True, spec_path=spec_path)
    return text


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec=dict(
            _cdi.CHECK_OPTIONS,
            generate={'type': 'bool', 'default': True},
            verify={'type': 'bool', 'default': True},
            device_name_strategy={'type': 'list', 'elements': 'str', 'default': ['index', 'uuid'],
                                  'choices': ['index', 'uuid', 'type-index']},
        ),
        supports_check_mode=True,
    )
    p = module.params
    spec_path = p['spec_path']
    ctk = _commands.executable(module.get_bin_path, p['nvidia_ctk'])
    if ctk is None:
        module.exit_json(changed=False, toolkit_installed=False, spec_path=spec_path,
                         msg='nvidia-ctk is not installed: no CDI spec to refresh or verify')
    result = {'changed': False, 'toolkit_installed': True, 'spec_path': spec_path, 'matches': None,
              'missing': [], 'stale': []}
    old = _read(spec_path)
    text = old
    if p['generate']:
        directory = os.path.dirname(spec_path) or '.'
        if not module.check_mode:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix='.gpu_cdi-', dir=None if module.check_mode else directory)
        try:
            text = generate(module, ctk, spec_path, workdir)
            spec = _parse(module, text, spec_path + ' (as nvidia-ctk generated it)')
            if text != old:
                result['changed'] = True
                if module._diff:  # AnsibleModule has no public name for --diff
                    result['diff'] = {'before': old or '', 'after': text, 'before_header': spec_path,
                                      'after_header': spec_path}
                if not module.check_mode:
                    new = os.path.join(workdir, os.path.basename(spec_path))
                    os.replace(os.path.join(workdir, os.listdir(workdir)[0]), new)
                    os.chmod(new, 0o644)
                    os.replace(new, spec_path)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    elif text is None:
        module.fail_json(msg=_cdi.missing_spec_message(spec_path), **result)
    else:
        spec = _parse(module, text, spec_path)
    result.update(devices=_cdi.device_names(spec), cdi_version=spec.get('cdiVersion'))
    if p['verify']:
        result.update(_cdi.compare(spec, observe(module, p['capabilities_root'])))
        if not result['matches']:
            module.fail_json(msg=_cdi.mismatch_message(spec_path, result), **result)
    module.exit_json(**result)


def _parse(module: AnsibleModule, text: str, where: str) -> dict:
    try:
        return _cdi.parse(text, where, YAML_LOAD)
    except _cdi.CdiError as exc:
        module.fail_json(msg=str(exc), toolkit_installed=True, spec_path=module.params['spec_path'])
    return {}


if __name__ == '__main__':
    main()
