# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:

    # The observe option of the declarative modules whose role keeps their state across reboots (mig_layout,
    # vgpu_devices, gpu_settings): the boot-time service observed in the module's own call.
    DOCUMENTATION = r'''
options:
  observe:
    description:
      - Also observe, in the same call and before anything this call changes, the files and systemd units of the
        boot-time service that keeps this state across reboots (the one the collection's role installs), as
        M(gpuvirt.fleet.host_state) with O(gpuvirt.fleet.host_state#module:write_files=false) does, and return
        RV(observed). Never writes them.
      - The role plans or applies and observes its boot-time service in this one call, so a rerun on an unchanged
        host makes one module call for this concern.
    type: dict
    version_added: 0.8.0
    suboptions:
      files:
        description: File entries as M(gpuvirt.fleet.host_state) takes them (O(gpuvirt.fleet.host_state#module:files)).
        type: list
        elements: dict
        default: []
      units:
        description: Unit entries as M(gpuvirt.fleet.host_state) takes them (O(gpuvirt.fleet.host_state#module:units)).
        type: list
        elements: dict
        default: []
'''
