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
    description:
      - The entry's kind, such as V(mig) or V(vgpu). One of O(kind) and O(entries) is required.
    type: str
  entries:
    description:
      - Several kinds at once, in one read and one write of the file, as a mapping of kind to C({drift, checked}), or
        to null to remove that kind's entry (nothing of it is declared). Each entry is checked as O(drift) and
        O(checked) are; a bad entry fails the task naming its kind, before the file is touched.
      - Mutually exclusive with O(kind), O(drift) and O(checked).
    type: dict
    version_added: 0.7.0
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

- name: Publish the MIG layout's drift and remove the vGPU and settings entries, in one call
  gpuvirt.fleet.declaration_drift:
    entries:
      mig: {drift: false, checked: "{{ now().timestamp() | int }}"}
      vgpu:
      settings:

- name: Nothing of the vGPU kind is declared any more
  gpuvirt.fleet.declaration_drift:
    kind: vgpu
'''

RETURN = r'''
previous:
  description:
    - The kind's drift before this call (null where it had no entry).
    - With O(entries), a mapping of each kind given to its drift before this call.
  returned: always
  type: raw
  sample: false
written:
  description: Whether the file was (in check mode, would be) written.
  returned: always
  type: bool
  sample: true
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _drift_file, _results


def _entries(module):
    """[(kind, drift, checked)] from the module's parameters, checked before the file is read."""
    p = module.params
    if p['entries'] is None:
        return [(p['kind'], p['drift'], p['checked'])]
    out = []
    for kind, entry in sorted(p['entries'].items()):
        if entry is None:
            out.append((kind, None, None))
            continue
        if not isinstance(entry, dict) or set(entry) - {'drift', 'checked'} or not isinstance(entry.get('drift'), bool):
            module.fail_json(msg='entries.%s: expected null or {drift: true|false, checked: epoch seconds}, got %r' % (kind, entry))
        try:
            checked = int(entry.get('checked'))
        except (TypeError, ValueError):
            module.fail_json(msg='entries.%s.checked: expected epoch seconds, got %r' % (kind, entry.get('checked')))
        out.append((kind, entry['drift'], checked))
    return out


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec={
            'path': {'type': 'path', 'default': '/var/lib/gpuvirt/drift.json'},
            'kind': {'type': 'str'},
            'entries': {'type': 'dict'},
            'drift': {'type': 'bool'},
            'checked': {'type': 'int'},
        },
        required_by={'drift': 'checked'},
        required_one_of=[('kind', 'entries')],
        mutually_exclusive=[('kind', 'entries'), ('entries', 'drift'), ('entries', 'checked')],
        supports_check_mode=True,
    )
    p = module.params
    entries = _entries(module)
    try:
        content = _drift_file.read(p['path'])
    except _drift_file.DriftFileError as exc:
        module.fail_json(msg=str(exc))
    previous, changed, write = {}, False, False
    for kind, drift, checked in entries:
        new, was = _drift_file.merge(content, kind, drift, checked)
        previous[kind] = was
        changed = changed or was != drift
        if new is not None:
            content, write = new, True
    if write and not module.check_mode:
        try:
            _drift_file.write(p['path'], content)
        except OSError as exc:
            module.fail_json(msg='cannot write %s: %s' % (p['path'], exc.strerror))
    module.exit_json(changed=changed, previous=previous if p['entries'] is not None else previous[p['kind']], written=write)


if __name__ == '__main__':
    main()
