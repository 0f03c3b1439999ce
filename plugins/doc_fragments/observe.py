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
        description: Files and directories, as O(gpuvirt.fleet.host_state#module:files) takes them.
        type: list
        elements: dict
        default: []
        suboptions:
          path:
            description: Absolute path.
            type: path
            required: true
          state:
            description:
              - V(file) a regular file (its content compared where O(observe.files[].content),
                O(observe.files[].content_base64) or O(observe.files[].checksum) is given), V(directory) a directory,
                V(absent) nothing at the path, V(present) anything at the path (following links).
            type: str
            choices: [file, directory, absent, present]
            default: file
          content:
            description: The content the file must have (text, as UTF-8). Only compared, never written here.
            type: str
          content_base64:
            description: The content the file must have, as base64 (a binary file).
            type: str
          checksum:
            description:
              - The SHA-1 of the content the file must have, where the content is not given.
              - One of O(observe.files[].content), O(observe.files[].content_base64) and O(observe.files[].checksum).
            type: str
          owner:
            description: The owner's user name (not compared where unset).
            type: str
          group:
            description: The group's name (not compared where unset).
            type: str
          mode:
            description: Octal permission digits, such as V(0644) (not compared where unset).
            type: str
          prune:
            description:
              - For a V(directory), a file name pattern such as V(*.py). Each regular file directly in the directory
                that matches it and that no other entry names is a difference (as
                O(gpuvirt.fleet.host_state#module:files[].prune)).
            type: str
            version_added: 0.9.0
      running:
        description:
          - Candidate systemd units to report as running or not, read in the same C(systemctl show) call as
            O(observe.units) (C(.service) is added where a name has no suffix). Returned in RV(observed) as C(running),
            the names as given of those whose sub-state is C(running), or null where systemd did not answer. Not a
            difference either way.
        type: list
        elements: str
        default: []
        version_added: 0.9.0
      units:
        description:
          - systemd units and the state they must be in, as O(gpuvirt.fleet.host_state#module:units) takes them. A unit
            whose file changed on disk since systemd loaded it (it needs a daemon-reload) counts as a difference.
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: The unit name (C(.service) is added where the name has no suffix).
            type: str
            required: true
          enabled:
            description: Whether the unit must be enabled (not compared where unset).
            type: bool
          active:
            description: Whether the unit must be active (not compared where unset).
            type: bool
'''
