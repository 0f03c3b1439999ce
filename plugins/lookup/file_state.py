# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: file_state
short_description: Controller files as M(gpuvirt.fleet.host_state) entries, with their content or its checksum
version_added: 0.7.0
description:
  - Reads files on the controller (paths or glob patterns, matches sorted by name) and returns one
    M(gpuvirt.fleet.host_state) C(files) entry per file, named O(dest)/<the file's base name>, with the file's
    C(owner), C(group) and C(mode), and either its C(content) (to write it) or the SHA-1 C(checksum) of that content
    (to observe it without sending it).
  - One lookup for a whole tree of code, in place of a C(file) lookup, C(hash) filters and a Jinja loop per file, which
    cost a role tens of milliseconds of controller CPU per host and task.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _terms:
    description: Files on the controller, as absolute paths or glob patterns. A pattern that matches nothing fails.
    required: true
    type: list
    elements: str
  dest:
    description: The directory on the host that the entries' paths are in.
    type: str
    required: true
  checksum:
    description: Return C(checksum) (SHA-1 of the content) instead of C(content).
    type: bool
    default: false
  base64:
    description: Return the content as C(content_base64) (for binary files such as wheels) instead of C(content).
    type: bool
    default: false
  owner:
    description: The entries' owner.
    type: str
    default: root
  group:
    description: The entries' group.
    type: str
    default: root
  mode:
    description: The entries' mode.
    type: str
    default: '0644'
'''

EXAMPLES = r'''
---
- name: Observe the collection's module_utils copied under /opt/gpuvirt/lib, by checksum
  gpuvirt.fleet.host_state:
    write_files: false
    files: "{{ query('gpuvirt.fleet.file_state', role_path ~ '/../../plugins/module_utils/*.py', dest='/opt/gpuvirt/lib', checksum=true) }}"
'''

RETURN = r'''
_list:
  description: One entry per file, in name order.
  type: list
  elements: dict
  contains:
    path:
      description: O(dest)/<base name>.
      type: str
    content:
      description: The file's text (without O(checksum) or O(base64)).
      type: str
    content_base64:
      description: The file's content, base64 (with O(base64)).
      type: str
    checksum:
      description: The SHA-1 of the file's content, hex (with O(checksum)).
      type: str
    owner:
      description: O(owner).
      type: str
    group:
      description: O(group).
      type: str
    mode:
      description: O(mode).
      type: str
'''

import base64
import glob
import hashlib
import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        dest = self.get_option('dest').rstrip('/') or '/'
        checksum, binary = self.get_option('checksum'), self.get_option('base64')
        common = {'owner': self.get_option('owner'), 'group': self.get_option('group'), 'mode': self.get_option('mode')}
        found = []
        for term in terms:
            matches = sorted(glob.glob(term)) if glob.has_magic(term) else [term]
            if not matches:
                raise AnsibleLookupError('file_state: %r matches no file' % term)
            found.extend(matches)
        entries = []
        for path in sorted(found, key=os.path.basename):
            try:
                with open(path, 'rb') as handle:
                    data = handle.read()
            except OSError as exc:
                raise AnsibleLookupError('file_state: cannot read %s: %s' % (path, exc.strerror)) from exc
            entry = {'path': os.path.join(dest, os.path.basename(path))}
            if checksum:
                entry['checksum'] = hashlib.sha1(data).hexdigest()
            elif binary:
                entry['content_base64'] = base64.b64encode(data).decode('ascii')
            else:
                try:
                    entry['content'] = data.decode('utf-8')
                except UnicodeDecodeError as exc:
                    raise AnsibleLookupError('file_state: %s is not UTF-8 text' % path) from exc
            entry.update(common)
            entries.append(entry)
        return entries
