# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: exporter_scrape
short_description: What the health gates read from a scrape of the gpuvirt exporter
version_added: 0.8.0
description:
  - Turns the result of an M(ansible.builtin.uri) call on the exporter's C(/metrics) (with C(return_content=true)) into
    what the health gates compare, the same reading M(gpuvirt.fleet.gpu_facts) makes with its O(gpuvirt.fleet.gpu_facts#module:exporter)
    option.
  - C(ok) (the exporter answered 200), C(status), C(msg), C(nvml_up), C(xid_supported), C(xid_total) (all XID events
    it counted, every GPU) and C(invocation) (its unit's invocation id, from C(gpuvirt_exporter_invocation_info), else
    O(invocation)).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description: The registered result of the M(ansible.builtin.uri) task.
    type: dict
    required: true
  invocation:
    description: The unit's invocation id where the exporter does not publish it (C(systemctl show --property=InvocationID)).
    type: str
    default: ''
'''

EXAMPLES = r'''
---
- name: Read the gates' values from a scrape
  ansible.builtin.set_fact:
    scrape: "{{ metrics | gpuvirt.fleet.exporter_scrape }}"
'''

RETURN = r'''
_value:
  description: C(ok), C(status), C(msg), C(nvml_up), C(xid_supported), C(xid_total), C(invocation).
  type: dict
'''

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError


def exporter_scrape(response, invocation=''):
    # imported here, not at load time (see gpu_summary)
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._exporter_scrape import result  # pylint: disable=import-outside-toplevel
    if not isinstance(response, Mapping):
        raise AnsibleFilterError('exporter_scrape: expected the result of a uri task, got %s' % type(response).__name__)
    try:
        status = int(response.get('status', -1))
    except (TypeError, ValueError):
        status = -1
    out = result(status, str(response.get('content') or ''), str(response.get('msg') or ''))
    if not out['invocation']:
        out['invocation'] = str(invocation or '').strip()
    return out


class FilterModule(object):

    def filters(self):
        return {'exporter_scrape': exporter_scrape}
