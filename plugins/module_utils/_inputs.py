# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The grammar of every string option, and the one way a user value enters a message.

Each declarative module runs one validation pass over its options before anything is observed or planned; the
checks here return problems (lines of text), so a module reports every problem of its input together:

- `quote(value)`: a user value as a message shows it. Control characters, terminal escapes and other unprintable
  characters are escaped (no value can start a new line or forge an error line), and long values are cut;
- versions are ASCII `N.N[.N]` (a floor or branch may be `N`); package names follow Debian's rules; unit names
  systemd's; a kernel flavour is a Debian package-name part; host names have no blanks or control characters;
- every path option is absolute and normalised (no `..`, no `.`, no doubled or trailing `/`);
- counts are bounded by what any known GPU allows (`MAX_MIG_INSTANCES`, `MAX_VGPUS_PER_GPU`).

Pure: nothing here imports pynvml, reads a file or runs a command.
"""

from __future__ import annotations

import posixpath
import re
import reprlib
from collections.abc import Mapping
from typing import Any

# Every MIG-capable GPU (A30, A100, H100, H200, B200) has at most 7 GPU-instance slices, and 7 compute slices.
MAX_MIG_INSTANCES = 7
# The most vGPU devices of one type on one GPU NVIDIA documents is 32 (A40-1Q, A16-1B, L40S-1Q); 64 leaves room.
MAX_VGPUS_PER_GPU = 64
MAX_SHOWN = 80

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3

VERSION_RE = re.compile(r'^[0-9]{1,4}(?:\.[0-9]{1,6}){1,2}$')
FLOOR_RE = re.compile(r'^[0-9]{1,4}(?:\.[0-9]{1,6}){0,2}$')
BRANCH_RE = re.compile(r'^[0-9]{3}$')
# Debian policy 5.6.1: lower case letters, digits, + - . ; at least two characters, starting with a letter or digit.
PACKAGE_RE = re.compile(r'^[a-z0-9][a-z0-9+.-]{1,127}$')
# A kernel flavour ends a package name (linux-modules-nvidia-580-server-open-<flavour>): generic, lowlatency, aws,
# generic-hwe-24.04, nvidia-64k, ...
FLAVOUR_RE = re.compile(r'^[a-z0-9][a-z0-9.+-]{0,63}$')
# systemd.unit(5): ASCII letters, digits, ':', '-', '_', '.', '\\' and one '@' for a template instance; at most 255
# characters. A name must not start with '-' (systemctl would read an option).
UNIT_RE = re.compile(r'^[A-Za-z0-9:_\\][A-Za-z0-9:_.\\-]*(?:@[A-Za-z0-9:_.\\-]*)?$')
HOSTNAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$')


def quote(value: Any) -> str:
    """`value` for a message: quoted as Python writes it (unprintable characters escaped), cut past MAX_SHOWN
    characters; a mapping or list shows its first items only."""
    text = _REPR.repr(value)
    return ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii') for c in text)


def safe(value: Any) -> str:
    """A name as is where it is printable, short and free of quotes (a host name, a GPU uuid, a vGPU type), else `quote`d."""
    text = str(value)
    return text if text.isprintable() and len(text) <= MAX_SHOWN and "'" not in text else quote(text)


def _text(value: Any, pattern: re.Pattern, what: str, example: str) -> list[str]:
    if not isinstance(value, str) or not pattern.match(value):
        return ['%s %s: expected %s' % (what, quote(value), example)]
    return []


def version(value: Any, what: str = 'version') -> list[str]:
    """An exact driver version: ASCII N.N[.N]."""
    return _text(value, VERSION_RE, what, 'a driver version such as 580.95.05 (ASCII digits)')


def floor(value: Any, what: str) -> list[str]:
    """A version floor: N, N.N or N.N.N (ASCII)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10000:
        return []
    return _text(value, FLOOR_RE, what, "a version such as '525' or '570.133.20' (ASCII digits)")


def branch(value: Any, what: str = 'branch') -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999:
        return []
    return _text(value, BRANCH_RE, what, 'a branch number such as 580 (three ASCII digits)')


def package(value: Any, what: str = 'package') -> list[str]:
    return _text(value, PACKAGE_RE, what, "a Debian package name (lower case letters, digits, '+', '-', '.')")


def kernel_flavour(value: Any) -> list[str]:
    return _text(value, FLAVOUR_RE, 'kernel_flavour', "a kernel flavour such as generic, lowlatency or aws "
                 "(lower case letters, digits, '+', '-', '.')")


def unit(value: Any, what: str = 'unit') -> list[str]:
    if isinstance(value, str) and len(value) > 255:
        return ['%s %s: a systemd unit name has at most 255 characters' % (what, quote(value))]
    return _text(value, UNIT_RE, what, "a systemd unit name such as nvidia-persistenced or dcgm.service "
                 "(letters, digits, ':', '-', '_', '.', '\\\\', one '@')")


def hostname(value: Any) -> list[str]:
    return _text(value, HOSTNAME_RE, 'hostname', 'a host name (letters, digits, ., -, _, :; no blanks)')


def path(value: Any, option: str, empty_ok: bool = False) -> list[str]:
    """An absolute, normalised path: no relative path, no '..' or '.', no doubled or trailing '/'."""
    if empty_ok and value in ('', None):
        return []
    if not isinstance(value, str) or not value or '\x00' in value:
        return ['%s %s: expected an absolute path' % (option, quote(value))]
    if not value.startswith('/'):
        return ['%s %s: expected an absolute path (relative paths are refused)' % (option, quote(value))]
    if '..' in value.split('/') or posixpath.normpath(value) != value or value.startswith('//'):
        return ['%s %s: expected a normalised absolute path (no "..", ".", doubled or trailing "/"): %s' % (
            option, quote(value), posixpath.normpath(value).replace('//', '/'))]
    return []


def bounded(value: Any, what: str, maximum: int, minimum: int = 0) -> list[str]:
    """An integer in [minimum, maximum]; the maximum is what any known GPU allows."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = {0: 'a non-negative integer', 1: 'a positive integer'}.get(minimum, 'an integer of at least %d' % minimum)
        return ['%s must be %s, got %s' % (what, kind, quote(value))]
    if value > maximum:
        return ['%s %s exceeds what any GPU allows (at most %d)' % (what, quote(value), maximum)]
    return []


def declared(value: Any, option: str, alternative: str) -> list[str]:
    """`config: null` is refused like a missing config (a declaration of nothing is `[]`)."""
    if value is None:
        return ['%s is null: give a list of entries ([] declares nothing), or %s' % (option, alternative)]
    return []


def mapping(value: Any, what: str) -> list[str]:
    if not isinstance(value, Mapping):
        return ['%s: expected a mapping, got %s %s' % (what, type(value).__name__, quote(value))]
    return []


# ---- nvidia_driver ------------------------------------------------------------------------------
POLICY_KEYS = ('format', 'architectures', 'models')
POLICY_ENTRY_KEYS = ('flavors', 'recommended', 'min_version', 'max_branch', 'source')
FLAVORS = ('open', 'proprietary')


def _policy_entry(entry: Any, where: str) -> list[str]:
    if not isinstance(entry, Mapping):
        return mapping(entry, where)
    problems = ['%s: unknown key %s (known: %s)' % (where, quote(k), ', '.join(POLICY_ENTRY_KEYS)) for k in entry if k not in POLICY_ENTRY_KEYS]
    flavors = entry.get('flavors', FLAVORS)
    if not isinstance(flavors, list) or not flavors or not all(f in FLAVORS for f in flavors):
        problems.append('%s.flavors %s: expected a non-empty list of open and proprietary ([] would mean any)' % (where, quote(flavors)))
    if entry.get('recommended', 'open') not in FLAVORS:
        problems.append('%s.recommended %s: expected open or proprietary' % (where, quote(entry.get('recommended'))))
    if entry.get('min_version') is not None:
        problems += floor(entry['min_version'], '%s.min_version' % where)
    if entry.get('max_branch') is not None:
        problems += branch(entry['max_branch'], '%s.max_branch' % where)
    if not isinstance(entry.get('source', ''), str):
        problems.append('%s.source %s: expected a text' % (where, quote(entry.get('source'))))
    return problems


def policy(value: Any) -> list[str]:
    """Overrides of the driver policy (`policy`): known keys only, each entry a mapping of known keys and valid values."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return mapping(value, 'policy')
    problems = ['policy: unknown key %s (known: %s)' % (quote(k), ', '.join(POLICY_KEYS)) for k in value if k not in POLICY_KEYS]
    if value.get('format', 1) != 1:
        problems.append('policy.format %s: expected 1' % quote(value.get('format')))
    for section in ('architectures', 'models'):
        entries = value.get(section)
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            problems += mapping(entries, 'policy.%s' % section)
            continue
        for name, entry in entries.items():
            if not isinstance(name, str) or not name.strip() or not name.isprintable():
                problems.append('policy.%s: %s is not a name' % (section, quote(name)))
                continue
            problems += _policy_entry(entry, 'policy.%s.%s' % (section, quote(name)))
    return problems


def driver(params: Mapping[str, Any]) -> list[str]:
    """nvidia_driver's options, before anything is observed: every problem, as lines."""
    problems = []
    if params.get('version') is not None:
        problems += version(params['version'])
    if params.get('branch') is not None:
        problems += branch(params['branch'])
    problems += kernel_flavour(params.get('kernel_flavour', 'generic'))
    clients = params.get('clients') or []
    if not isinstance(clients, list):
        problems.append('clients %s: expected a list of systemd unit names' % quote(clients))
    else:
        problems += [p for number, name in enumerate(clients, 1) for p in unit(name, 'clients entry %d' % number)]
    problems += policy(params.get('policy'))
    return problems


def printable(message: str) -> str:
    """A whole message that may hold raw user values (Ansible's own argument errors): every unprintable character
    (newline included) escaped, so no value can forge a line or drive the terminal."""
    return ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii') for c in message)
