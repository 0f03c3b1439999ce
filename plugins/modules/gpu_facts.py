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
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _results
from ansible_collections.gpuvirt.fleet.plugins.module_utils._discovery import BACKENDS, DiscoveryError, discover


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec={'backend': {'type': 'str', 'default': 'auto', 'choices': list(BACKENDS)}},
        supports_check_mode=True,
    )
    try:
        host, gpus = discover(module, module.params['backend'])
    except DiscoveryError as exc:
        module.fail_json(msg=str(exc), exception=exc.exception)
    module.exit_json(changed=False, ansible_facts={'gpu_host': host, 'gpus': gpus})


if __name__ == '__main__':
    main()
