#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: gpu_facts
short_description: Discover NVIDIA GPUs, MIG and vGPU state through NVML
version_added: 0.1.0
description:
  - Reads what a GPU host really has through NVML (the C(pynvml) binding from C(nvidia-ml-py)) and sets
    C(ansible_facts.gpus) (one entry per GPU) and C(ansible_facts.gpu_host) (driver, CUDA, kernel module).
  - Falls back to C(nvidia-smi -q -x), C(nvidia-smi mig -lgip) and C(nvidia-smi mig -lgipp) when C(pynvml) is not
    installed. The fallback carries fewer fields (no compute capability, no vGPU types, MIG profile memory
    accurate to about 10 MiB, only GPU instances that hold a compute instance, without profile or placement).
  - A host without a loaded NVIDIA driver gives an empty list and C(gpu_host.driver_loaded=false), not a failure.
  - A field NVML does not support on a GPU is C(null) and named in that GPU's C(unsupported) list; a GPU that fell
    off the bus is listed with C(status=lost) and its error.
  - Read-only. Never changes a GPU.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
  - gpuvirt.fleet.attributes.facts
  - gpuvirt.fleet.attributes.info_module
  - gpuvirt.fleet.attributes.facts_module
options:
  backend:
    description:
      - How to read the GPUs.
      - V(auto) uses NVML when C(pynvml) imports, otherwise C(nvidia-smi).
      - V(nvml) fails when C(pynvml) is missing; V(nvidia-smi) never uses NVML.
    type: str
    choices: [auto, nvml, nvidia-smi]
    default: auto
  exporter:
    description:
      - Also read the host's own gpuvirt exporter (its C(/metrics), from the host) and return what the health gates
        compare in RV(exporter), the XID baseline taken before a change, in the same call as the facts. The exporter
        role's C(scrape_request) entry point gives this value for the exporter it deployed.
      - An exporter that does not answer does not fail the task; its RV(exporter) says C(ok=false), with the status and message.
    type: dict
    version_added: 0.8.0
    suboptions:
      url:
        description: The exporter's metrics URL, such as V(http://127.0.0.1:9945/metrics).
        type: str
        required: true
      username:
        description: Basic auth user; empty sends no credentials.
        type: str
        default: ''
      password:
        description: Its password.
        type: str
        default: ''
      validate_certs:
        description: Check the exporter's TLS certificate.
        type: bool
        default: true
      timeout:
        description: Seconds to wait for the answer.
        type: int
        default: 10
  cdi:
    description:
      - Also compare the CDI spec with the GPUs and MIG devices these facts found, as M(gpuvirt.fleet.gpu_cdi) with
        O(gpuvirt.fleet.gpu_cdi#module:generate=false) does, and return the result in RV(cdi) instead of failing. The
        health gates of a host that a run changes nothing on take it as their devices gate.
    type: dict
    version_added: 0.8.0
    suboptions:
      spec_path:
        description: The spec C(nvidia-ctk cdi generate) wrote.
        type: path
        default: /etc/cdi/nvidia.yaml
      nvidia_ctk:
        description: The container toolkit's CLI, a name on C(PATH) or a path. Where it is not installed nothing is compared.
        type: str
        default: nvidia-ctk
      capabilities_root:
        description: Where the driver lists the MIG capabilities (their C(/dev/nvidia-caps) minors).
        type: path
        default: /proc/driver/nvidia/capabilities
requirements:
  - nvidia-ml-py (imported as C(pynvml)) on the managed host, or C(nvidia-smi) on its C(PATH)
notes:
  - SR-IOV counts are read from C(/sys/bus/pci/devices/<address>/sriov_totalvfs) and C(sriov_numvfs), and the
    kernel module flavour from C(/proc/driver/nvidia/version).
seealso:
  - name: NVML API reference
    description: The NVIDIA Management Library calls behind these facts.
    link: https://docs.nvidia.com/deploy/nvml-api/
'''

EXAMPLES = r'''
---
- name: Gather GPU facts
  gpuvirt.fleet.gpu_facts:

- name: Show each GPU
  ansible.builtin.debug:
    msg: "{{ item.index }}: {{ item.name }} MIG={{ item.mig.current }}"
  loop: "{{ ansible_facts.gpus }}"

- name: Use nvidia-smi even where pynvml is installed
  gpuvirt.fleet.gpu_facts:
    backend: nvidia-smi

- name: Gather GPU facts, the exporter's XID count and the CDI spec's state in one call
  gpuvirt.fleet.gpu_facts:
    exporter:
      url: http://127.0.0.1:9945/metrics
    cdi:
      spec_path: /etc/cdi/nvidia.yaml
  register: observed

- name: Fail where the CDI spec names other devices than the GPUs have
  ansible.builtin.assert:
    that: not observed.cdi.toolkit_installed or observed.cdi.matches
    fail_msg: "{{ observed.cdi.msg }}"
'''

RETURN = r'''
ansible_facts:
  description: GPU facts added to the host's facts.
  returned: always
  type: dict
  contains:
    gpu_host:
      description: Host-level GPU facts.
      returned: always
      type: dict
      contains:
        driver_loaded:
          description: Whether the NVIDIA driver answered.
          type: bool
          sample: true
        driver_error:
          description: Why the driver did not answer (NVML or nvidia-smi message), or null.
          type: str
          sample: Driver Not Loaded
        driver_version:
          description: Driver version as NVML reports it.
          type: str
          sample: 580.159.04
        cuda_version:
          description: Highest CUDA version the driver supports.
          type: str
          sample: '13.0'
        nvml_version:
          description: NVML library version (NVML backend only).
          type: str
          sample: 13.580.159.04
        kernel_module:
          description: The loaded kernel module, from C(/proc/driver/nvidia/version).
          type: dict
          contains:
            loaded:
              description: Whether an NVIDIA kernel module is loaded.
              type: bool
            flavor:
              description: V(open) or V(proprietary) kernel modules, V(unknown) if the banner is not recognised.
              type: str
              sample: open
            version:
              description: Version of the loaded kernel module.
              type: str
              sample: 580.159.04
        backend:
          description: Which backend produced the facts.
          type: str
          choices: [nvml, nvidia-smi, none]
          sample: nvml
        gpu_count:
          description: Number of GPUs.
          type: int
          sample: 8
        models:
          description: GPU count per model name.
          type: dict
          sample: {"NVIDIA H100 80GB HBM3": 8}
        mig_enabled_gpus:
          description: Number of GPUs whose current MIG mode is enabled.
          type: int
          sample: 0
        lost_gpus:
          description: Number of GPUs listed with status V(lost).
          type: int
          sample: 0
    gpus:
      description: One entry per GPU, in NVML index order.
      returned: always
      type: list
      elements: dict
      contains:
        index:
          description: NVML index.
          type: int
          sample: 0
        uuid:
          description: GPU UUID.
          type: str
          sample: GPU-2bbc3af3-7a90-4193-7574-41743730389f
        minor_number:
          description:
            - The GPU's device minor number, so its device node is C(/dev/nvidia<minor_number>) (NVML
              C(nvmlDeviceGetMinorNumber); C(Minor Number) in C(nvidia-smi -q)). Not the index; null where unknown.
          type: int
          sample: 0
          version_added: 0.4.0
        name:
          description: Product name.
          type: str
          sample: NVIDIA H100 80GB HBM3
        status:
          description: V(ok), or V(lost) when the GPU no longer answers.
          type: str
          sample: ok
        error:
          description: Why the GPU is lost, else null.
          type: str
        pci:
          description: PCI identity.
          type: dict
          contains:
            bus_id:
              description: PCI bus id as NVML prints it.
              type: str
              sample: 00000000:18:00.0
            vendor_id:
              description: PCI vendor id.
              type: str
              sample: '0x10de'
            device_id:
              description: PCI device id.
              type: str
              sample: '0x2330'
            subsystem_vendor_id:
              description: PCI subsystem vendor id.
              type: str
              sample: '0x10de'
            subsystem_id:
              description: PCI subsystem id.
              type: str
              sample: '0x16c1'
        architecture:
          description: GPU architecture (volta, turing, ampere, ada, hopper, blackwell, ...).
          type: str
          sample: hopper
        compute_capability:
          description: CUDA compute capability (NVML backend only).
          type: str
          sample: '9.0'
        memory:
          description: Framebuffer memory in MiB (C(total_mib), C(used_mib), C(free_mib), C(reserved_mib)).
          type: dict
          sample: {"total_mib": 81559, "used_mib": 0, "free_mib": 81079, "reserved_mib": 480}
        persistence_mode:
          description: Whether persistence mode is on.
          type: bool
        ecc:
          description: ECC mode, C(current) and C(pending).
          type: dict
          sample: {"current": true, "pending": true}
        settings:
          description:
            - The settings M(gpuvirt.fleet.gpu_settings) declares, as NVML reports them (null with the nvidia-smi
              backend; a field NVML does not support is null and listed in C(unsupported)). Persistence and ECC are
              C(persistence_mode) and C(ecc) above.
            - C(compute_mode) (V(default), V(exclusive_process), V(prohibited)); C(power_limit) in milliwatts
              (C(limit_mw) the limit set, C(default_mw), C(min_mw) and C(max_mw) the constraints, C(enforced_mw));
              C(applications_clocks) and C(default_applications_clocks) (C(graphics_mhz), C(memory_mhz));
              C(supported_clocks), per supported memory clock the graphics clocks supported with it. NVML cannot read
              locked clocks back.
          type: dict
          version_added: 0.6.0
          sample:
            compute_mode: default
            power_limit: {limit_mw: 700000, default_mw: 700000, min_mw: 200000, max_mw: 700000, enforced_mw: 700000}
            applications_clocks: {graphics_mhz: 1980, memory_mhz: 3201}
            default_applications_clocks: {graphics_mhz: 1980, memory_mhz: 3201}
            supported_clocks: [{memory_mhz: 3201, graphics_mhz: [1980, 1965, 1950]}, {memory_mhz: 2201, graphics_mhz: [1980, 1965, 1950]}]
        mig:
          description: MIG state.
          type: dict
          contains:
            capable:
              description: Whether the GPU supports MIG.
              type: bool
            current:
              description: Current MIG mode (null when not MIG-capable).
              type: bool
            pending:
              description: MIG mode after the next GPU reset or reboot.
              type: bool
            profiles:
              description:
                - GPU-instance profiles as the GPU reports them, with C(id), C(name) (such as V(1g.10gb)),
                  C(slices) (compute), C(memory_slices), C(instances) (maximum count), C(memory_mib), C(placements)
                  (list of C(start) and C(size) in memory slices) and engine counts.
              type: list
              elements: dict
            gpu_instances:
              description:
                - Existing GPU instances with C(id), C(profile_id), C(profile), C(placement) and
                  C(compute_instances) (each with C(id), C(profile_id), C(slices), C(placement)).
              type: list
              elements: dict
        vgpu:
          description:
            - Virtualization state. C(virtualization_mode) is one of V(none), V(passthrough), V(vgpu), V(host_vgpu),
              V(host_vsga); C(host_mode) V(sriov) or V(non_sriov); C(supported_types) (C(id), C(name),
              C(framebuffer_mib), C(max_instances)), C(creatable_types) (names) and C(active) vGPU instances
              (C(instance), C(type), C(uuid), C(vm_id)) where the driver offers them.
          type: dict
        sriov:
          description: SR-IOV virtual functions, C(total_vfs) and C(num_vfs) (null where the device has none).
          type: dict
        processes:
          description: Running compute processes, with C(pid), C(used_memory_mib), C(gpu_instance_id), C(compute_instance_id).
          type: list
          elements: dict
        unsupported:
          description: Fields this GPU or driver does not support (their values are null or empty).
          type: list
          elements: str
          sample: [vgpu.host_mode, vgpu.supported_types]
        errors:
          description: Fields whose NVML call failed with an error other than "Not Supported", with the message.
          type: dict
exporter:
  description:
    - What the host's exporter reported (with O(exporter)); the values the health gates compare.
    - C(ok) (it answered 200), C(status) (-1 without an answer), C(msg), C(nvml_up), C(xid_supported), C(xid_total)
      (XID events counted since it started, all GPUs) and C(invocation) (its unit's invocation id, from
      C(gpuvirt_exporter_invocation_info), else from systemd; new at every start).
  returned: with O(exporter)
  type: dict
  sample: {ok: true, status: 200, msg: "OK (12345 bytes)", nvml_up: true, xid_supported: true, xid_total: 0, invocation: 5f0c9a1e2b3d4c5e6f708192a3b4c5d6}
cdi:
  description:
    - The CDI spec against these facts' devices (with O(cdi)), as M(gpuvirt.fleet.gpu_cdi) reports it.
    - C(toolkit_installed); where it is, C(spec_path), C(matches), C(missing), C(stale), C(devices), C(cdi_version)
      and C(msg) (why it does not match; the file is missing, is not a CDI spec, or names other devices).
  returned: with O(cdi)
  type: dict
  sample: {toolkit_installed: true, spec_path: /etc/cdi/nvidia.yaml, matches: true, missing: [], stale: [], msg: ""}
'''

import http.client

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _cdi, _commands, _exporter_scrape, _results, _sysfs
from ansible_collections.gpuvirt.fleet.plugins.module_utils._discovery import BACKENDS, DiscoveryError, discover

EXPORTER_OPTIONS = {
    'url': {'type': 'str', 'required': True},
    'username': {'type': 'str', 'default': ''},
    'password': {'type': 'str', 'default': '', 'no_log': True},
    'validate_certs': {'type': 'bool', 'default': True},
    'timeout': {'type': 'int', 'default': 10},
}


def read_exporter(module: AnsibleModule, request: dict) -> dict:
    """One scrape of the host's own exporter, read as the health gates read it (never a failure). A direct HTTP(S)
    connection from the standard library (no proxy from the environment: the exporter is the host's own), not
    ansible.module_utils.urls, which this call on every host in every run would compile anew each time."""
    import base64  # pylint: disable=import-outside-toplevel
    import ssl  # pylint: disable=import-outside-toplevel
    from urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel
    url = urlsplit(request['url'])
    if url.scheme not in ('http', 'https') or not url.hostname:
        return _exporter_scrape.result(-1, '', 'not an http(s) URL: %s' % request['url'])
    headers = {'User-Agent': 'gpuvirt.fleet gpu_facts', 'Accept': 'text/plain'}
    if request['username']:
        token = base64.b64encode(('%s:%s' % (request['username'], request['password'])).encode('utf-8')).decode('ascii')
        headers['Authorization'] = 'Basic ' + token
    status, body, msg = -1, '', ''
    connection = None
    try:
        if url.scheme == 'https':
            context = ssl.create_default_context()
            if not request['validate_certs']:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=request['timeout'], context=context)
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=request['timeout'])
        connection.request('GET', (url.path or '/') + ('?' + url.query if url.query else ''), headers=headers)
        response = connection.getresponse()
        status = response.status
        text = response.read().decode('utf-8', 'replace')
        body, msg = (text, 'OK (%d bytes)' % len(text)) if status == 200 else ('', 'HTTP Error %d: %s' % (status, response.reason))
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timeout, TLS, a malformed answer
        status, msg = -1, 'Request failed: %s' % exc
    finally:
        if connection is not None:
            connection.close()
    out = _exporter_scrape.result(status, body, msg)
    if out['ok'] and not out['invocation']:
        rc, stdout, _err = module.run_command(_exporter_scrape.systemd_invocation_argv(), environ_update={'LC_ALL': 'C'})
        out['invocation'] = stdout.strip() if rc == 0 else ''
    return out


def read_cdi(module: AnsibleModule, request: dict, gpus: list) -> dict:
    """The CDI spec against the devices of these facts (gpu_cdi's verification, as a result)."""
    spec_path = request['spec_path']
    if _commands.executable(module.get_bin_path, request['nvidia_ctk']) is None:
        return {'toolkit_installed': False, 'spec_path': spec_path, 'msg': 'nvidia-ctk is not installed: no CDI spec to verify'}
    try:
        with open(spec_path, encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        return {'toolkit_installed': True, 'spec_path': spec_path, 'matches': False, 'missing': [], 'stale': [],
                'msg': 'cannot read %s: %s' % (spec_path, exc)}
    observed = _cdi.observed_devices(gpus, _sysfs.read_mig_capability_minors(request['capabilities_root']))
    return _cdi.verification(text, spec_path, observed, _cdi.yaml_loader())


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec={
            'backend': {'type': 'str', 'default': 'auto', 'choices': list(BACKENDS)},
            'exporter': {'type': 'dict', 'options': EXPORTER_OPTIONS},
            'cdi': {'type': 'dict', 'options': _cdi.CHECK_OPTIONS},
        },
        supports_check_mode=True,
    )
    try:
        host, gpus = discover(module, module.params['backend'])
    except DiscoveryError as exc:
        module.fail_json(msg=str(exc), exception=exc.exception)
    result = {'changed': False, 'ansible_facts': {'gpu_host': host, 'gpus': gpus}}
    if module.params['exporter'] is not None:
        result['exporter'] = read_exporter(module, module.params['exporter'])
    if module.params['cdi'] is not None:
        result['cdi'] = read_cdi(module, module.params['cdi'], gpus)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
