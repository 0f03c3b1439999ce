#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: declaration_drift
short_description: Record in the declaration drift file whether a host's GPUs hold their declaration
version_added: 0.6.0
description:
  - Merges one kind's entry (V(mig), V(vgpu), ...) into the declaration drift file that the gpuvirt exporter publishes
    as C(gpuvirt_declaration_drift{kind}) and C(gpuvirt_declaration_checked_timestamp_seconds{kind}), in one call.
    The file is a JSON object that maps each kind to its C(drift) (true or false) and C(checked) (epoch seconds).
    Other kinds' entries are kept as they are.
  - The file is rewritten on every call that sets an entry (the time is a heartbeat), but the task reports a change
    only when the entry appears, goes, or its drift flips.
  - A file that exists but is not a JSON object fails the task naming it, and is left as it was.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether the entry would change; writes nothing.
  diff_mode:
    support: none
options:
  path:
    description: The declaration drift file (the exporter's C(exporter_drift_file)).
    type: path
    default: /var/lib/gpuvirt/drift.json
  kind:
    description: The entry's kind, such as V(mig) or V(vgpu).
    type: str
    required: true
  drift:
    description:
      - Whether the GPUs differ from the declaration of this kind. Unset (null) removes the kind's entry (nothing of
        this kind is declared).
    type: bool
  checked:
    description: When the check was made, in epoch seconds (the controller's clock). Required with O(drift).
    type: int
seealso:
  - name: docs/alerts.md
    description: The GpuDeclarationDrift and GpuDeclarationNotChecked alerts that read this file through the exporter.
    link: https://github.com/gpuvirt/gpuvirt.fleet/blob/main/docs/alerts.md
'''

EXAMPLES = r'''
---
- name: Publish that the MIG layout matches its declaration
  gpuvirt.fleet.declaration_drift:
    kind: mig
    drift: false
    checked: "{{ now().timestamp() | int }}"

- name: Nothing of the vGPU kind is declared any more
  gpuvirt.fleet.declaration_drift:
    kind: vgpu
'''

RETURN = r'''
previous:
  description: The kind's drift before this call (null where it had no entry).
  returned: always
  type: bool
  sample: false
written:
  description: Whether the file was (in check mode, would be) written.
  returned: always
  type: bool
  sample: true
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _drift_file, _results


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec={
            'path': {'type': 'path', 'default': '/var/lib/gpuvirt/drift.json'},
            'kind': {'type': 'str', 'required': True},
            'drift': {'type': 'bool'},
            'checked': {'type': 'int'},
        },
        required_by={'drift': 'checked'},
        supports_check_mode=True,
    )
    p = module.params
    try:
        old = _drift_file.read(p['path'])
    except _drift_file.DriftFileError as exc:
        module.fail_json(msg=str(exc))
    new, was = _drift_file.merge(old, p['kind'], p['drift'], p['checked'])
    if new is not None and not module.check_mode:
        try:
            _drift_file.write(p['path'], new)
        except OSError as exc:
            module.fail_json(msg='cannot write %s: %s' % (p['path'], exc.strerror))
    module.exit_json(changed=was != p['drift'], previous=was, written=new is not None)


if __name__ == '__main__':
    main()
