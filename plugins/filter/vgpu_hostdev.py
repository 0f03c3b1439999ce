# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: vgpu_hostdev
short_description: libvirt hostdev XML for vGPU devices (mdev, or SR-IOV VFs)
version_added: 0.3.0
description:
  - Emits one libvirt C(<hostdev mode='subsystem' type='mdev' model='vfio-pci'>) element per vGPU device, to put in a
    domain's C(<devices>) section.
  - A device of the SR-IOV vGPU interface (one with C(vf)) becomes a PCI C(<hostdev mode='subsystem' type='pci'>) naming
    its VF.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description:
      - A device UUID, a device as M(gpuvirt.fleet.vgpu_devices) returns it in RV(gpuvirt.fleet.vgpu_devices#module:devices)
        (a mapping with C(uuid), or with C(vf) for an SR-IOV vGPU), or a list of these.
    type: raw
    required: true
  indent:
    description: Spaces before each line.
    type: int
    default: 0
'''

EXAMPLES = r'''
---
- name: Write the hostdev elements of the first two vGPUs
  ansible.builtin.copy:
    content: "{{ __vgpu_result.devices[:2] | gpuvirt.fleet.vgpu_hostdev(indent=4) }}\n"
    dest: /etc/libvirt/qemu/vm1-vgpu.xml
    mode: "0644"
'''

RETURN = r'''
_value:
  description: The XML elements, one per device, separated by newlines.
  type: str
  sample: |-
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'>
      <source>
        <address uuid='0b6c1d1a-6f2e-4a8b-9c59-2d1c7a8e9f00'/>
      </source>
    </hostdev>
'''

from ansible.errors import AnsibleFilterError

# Imported when the filter runs, not when this file loads: ansible-core looks a collection filter up by loading the
# collection's filter files in turn, in every task's worker process, so a heavy import here would be paid by every
# task that uses any gpuvirt.fleet filter (docs/scaling.md).


def vgpu_hostdev(devices, indent=0):
    """libvirt <hostdev> XML for vGPU devices."""
    if not isinstance(indent, int) or isinstance(indent, bool) or indent < 0:
        raise AnsibleFilterError('vgpu_hostdev: indent must be a non-negative integer, got %r' % (indent,))
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._vgpu import libvirt_hostdev  # pylint: disable=import-outside-toplevel
    try:
        return libvirt_hostdev(devices, indent)
    except ValueError as exc:
        raise AnsibleFilterError('vgpu_hostdev: %s' % exc) from exc


class FilterModule:
    def filters(self):
        return {'vgpu_hostdev': vgpu_hostdev}
