# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.
"""What the health gates read from a host's own gpuvirt exporter: whether it answered, whether NVML is up in it, whether
it can watch XID events, how many it has counted (all GPUs, all XIDs) and its unit's invocation id (new at every start:
the counters restart from zero).

One reading of a /metrics text for both readers: gpu_facts (its `exporter` option, the XID baseline taken before a
change) and the exporter role's scrape entry point (the `exporter_scrape` filter, after a change). Pure code: the
reader fetches the text."""
from __future__ import annotations

import re

UNIT = 'gpuvirt-exporter.service'
# the exposition's sample lines; a value may be written 1 or 1.0 (and a counter as a float)
_NVML_UP = re.compile(r'^gpuvirt_exporter_nvml_up 1(\.0)?$', re.M)
_XID_SUPPORTED = re.compile(r'^gpuvirt_exporter_xid_events_supported 1(\.0)?$', re.M)
_XID_TOTAL = re.compile(r'^gpuvirt_gpu_xid_events_total\{[^}]*\} (\S+)$', re.M)
_INVOCATION = re.compile(r'^gpuvirt_exporter_invocation_info\{invocation_id="([0-9a-f]+)"\} 1(?:\.0)?$', re.M)


def result(status: int, body: str, msg: str = '') -> dict:
    """The gates' reading of one scrape: `status` the HTTP status (-1: no answer), `body` the text it returned, `msg`
    why it failed. `invocation` is '' where the exporter does not publish it (an older exporter, or one that systemd
    did not start): the caller may ask systemd (invocation_from_systemd)."""
    ok = status == 200
    text = body if ok else ''
    total = 0.0
    for value in _XID_TOTAL.findall(text):
        try:
            total += float(value)
        except ValueError:
            continue  # not a number: not a count
    invocation = _INVOCATION.search(text)
    return {'ok': ok, 'status': status, 'msg': msg, 'nvml_up': _NVML_UP.search(text) is not None,
            'xid_supported': _XID_SUPPORTED.search(text) is not None, 'xid_total': int(total),
            'invocation': invocation.group(1) if invocation else ''}


def systemd_invocation_argv() -> list[str]:
    """The command that prints the exporter unit's invocation id (empty where the unit does not run)."""
    return ['systemctl', 'show', '--property=InvocationID', '--value', UNIT]
