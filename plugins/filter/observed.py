# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: observed
short_description: M(gpuvirt.fleet.host_state) file entries with their content replaced by its checksum
version_added: 0.7.0
description:
  - Turns the C(files) entries a role writes with M(gpuvirt.fleet.host_state) into the entries that observe them.
    Each C(content) (or C(content_base64)) becomes the SHA-1 C(checksum) of that content, every other key is kept, so the
    observation sends no file content to the host.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description: M(gpuvirt.fleet.host_state) C(files) entries.
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
---
- name: Observe what a later task would write
  gpuvirt.fleet.host_state:
    write_files: false
    files: "{{ my_files | gpuvirt.fleet.observed }}"
'''

RETURN = r'''
_value:
  description: The entries, each C(content) replaced by C(checksum).
  type: list
  elements: dict
'''

import base64
import binascii
import hashlib

from ansible.errors import AnsibleFilterError


def observed(entries):
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnsibleFilterError('observed: entry %d is not a mapping: %r' % (index, entry))
        new = {k: v for k, v in entry.items() if k not in ('content', 'content_base64')}
        if entry.get('content_base64') is not None:
            try:
                new['checksum'] = hashlib.sha1(base64.b64decode(str(entry['content_base64']), validate=True)).hexdigest()
            except (binascii.Error, ValueError) as exc:
                raise AnsibleFilterError('observed: entry %d (%s): content_base64 is not base64' % (index, entry.get('path'))) from exc
        elif 'content' in entry:
            new['checksum'] = hashlib.sha1(str(entry['content']).encode('utf-8')).hexdigest()
        out.append(new)
    return out


class FilterModule(object):

    def filters(self):
        return {'observed': observed}
