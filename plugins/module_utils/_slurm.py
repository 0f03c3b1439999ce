# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Pure Slurm helpers: the GRES a node's GPUs give, gres.conf and slurm.conf text, and `scontrol show node` parsing.

Nothing here runs a command or reads a file; the seam (_slurm_host) observes and the modules write. The facts come
from gpu_facts' shape (_facts.new_gpu) plus what only the driver's /proc tree tells: each GPU's minor number and the
minor of each MIG capability (DeviceFileMinor of .../gpu<minor>/mig/gi<gi>/access and .../gi<gi>/ci<ci>/access).

gres.conf is written for Slurm without NVML AutoDetect (Debian's 22.05 has no gpu_nvml plugin): one line per GRES,
`File=` for a whole GPU, `MultipleFiles=` (parent GPU node, GI cap, CI cap) for a MIG device; Slurm numbers the GRES
in line order (the index CUDA_VISIBLE_DEVICES carries without device cgroups).
"""

from __future__ import annotations

import re

GRES_NAME = 'gpu'
MARK_BEGIN = '# BEGIN gpuvirt.fleet slurm_gres %s: written by Ansible, edits between these marks are replaced'
MARK_END = '# END gpuvirt.fleet slurm_gres %s'
# A Slurm GRES type: no blank, ':' (type separator), ',' (list separator), '=', '#' or parenthesis.
TYPE_RE = re.compile(r'^[A-Za-z0-9_.+-]{1,64}$')
NODE_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
_KEY_RE = re.compile(r'^([A-Za-z]+)=(.*)$')
_DEVICE_MINOR_RE = re.compile(r'^\s*Device Minor:\s*(\d+)\s*$', re.M)
# Node flags that make a node unusable for new jobs (scontrol shows them after the base state, joined with '+').
BAD_FLAGS = ('DRAIN', 'INVALID_REG', 'INVAL', 'NOT_RESPONDING', 'FAIL', 'POWERED_DOWN', 'POWER_DOWN', 'REBOOT_ISSUED')
BAD_STATES = ('DOWN', 'UNKNOWN', 'FUTURE', 'FAIL', 'ERROR')


class SlurmError(Exception):
    """Bad input or a configuration this module will not edit; the message names the entry."""


# ---- the GPUs' GRES ---------------------------------------------------------------------------------------------

def whole_gpu_type(name: str, gpu_types: dict) -> str:
    """The Type of a whole GPU: `gpu_types[name]` where the user mapped the NVML name, else the name as Slurm 22.05's
    own NVML AutoDetect writes it: lower case, each run of characters other than [a-z0-9.-] one '_'
    ('NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3')."""
    if name in gpu_types:
        return gpu_types[name]
    return re.sub(r'[^a-z0-9.-]+', '_', (name or 'gpu').strip().lower()).strip('_') or 'gpu'


def validate_types(gpu_types) -> list[str]:
    """Errors of a user mapping GPU name -> Slurm type (each type a valid, identical-bytes Slurm type string)."""
    if not isinstance(gpu_types, dict):
        return ['gpu_types: expected a mapping of GPU name to Slurm type, got %s' % type(gpu_types).__name__]
    return ['gpu_types[%r] = %r: expected a Slurm type (letters, digits, ".", "_", "+", "-"; at most 64)' % (k, v)
            for k, v in gpu_types.items() if not isinstance(v, str) or not TYPE_RE.match(v)]


def parse_device_minor(text: str | None) -> int | None:
    """'Device Minor:' of /proc/driver/nvidia/gpus/<pci>/information (None where absent)."""
    match = _DEVICE_MINOR_RE.search(text or '')
    return int(match.group(1)) if match else None


def cap_path(gpu_minor: int, gi: int, ci: int | None = None) -> str:
    """The capability file (relative to /proc/driver/nvidia/capabilities) of a GPU instance or compute instance."""
    return 'gpu%d/mig/gi%d/access' % (gpu_minor, gi) if ci is None else 'gpu%d/mig/gi%d/ci%d/access' % (gpu_minor, gi, ci)


def devices(gpus: list[dict], gpu_minors: dict, cap_minors: dict, gpu_types: dict) -> tuple[list[dict], list[str]]:
    """The node's GPU GRES, in the order gres.conf lists them: per GPU (index order) the whole GPU, or where MIG is
    on, one device per compute instance (GI id, then CI id order). Returns (devices, warnings).

    `gpu_minors` maps GPU index -> minor number; `cap_minors` maps cap_path(...) -> DeviceFileMinor. A MIG device
    whose caps have no minor is an error (slurmd would not start); a GPU instance without a compute instance gives
    no device (a warning)."""
    result, warnings = [], []
    for gpu in gpus:
        index = gpu['index']
        if gpu.get('status') != 'ok':
            raise SlurmError('GPU %d is %s (%s): its GRES cannot be written' % (index, gpu.get('status'), gpu.get('error')))
        minor = gpu_minors[index]
        parent = '/dev/nvidia%d' % minor
        if not gpu['mig'].get('current'):
            result.append({'gpu': index, 'minor': minor, 'type': whole_gpu_type(gpu.get('name') or '', gpu_types),
                           'files': [parent], 'gpu_instance': None, 'compute_instance': None})
            continue
        slices = {p['id']: p['slices'] for p in gpu['mig'].get('profiles', [])}
        for gi in sorted(gpu['mig']['gpu_instances'], key=lambda g: g['id']):
            if not gi['compute_instances']:
                warnings.append('GPU %d GPU instance %d (%s) has no compute instance: no GRES for it' % (index, gi['id'], gi['profile']))
            gi_minor = cap_minors.get(cap_path(minor, gi['id']))
            for ci in sorted(gi['compute_instances'], key=lambda c: c['id']):
                ci_minor = cap_minors.get(cap_path(minor, gi['id'], ci['id']))
                missing = [p for p, m in ((cap_path(minor, gi['id']), gi_minor), (cap_path(minor, gi['id'], ci['id']), ci_minor)) if m is None]
                if missing:
                    raise SlurmError('GPU %d MIG device GI %d CI %d: no DeviceFileMinor in /proc/driver/nvidia/capabilities/%s'
                                     % (index, gi['id'], ci['id'], ', '.join(missing)))
                mig_type = gi['profile']
                if ci.get('slices') and slices.get(gi['profile_id']) and ci['slices'] < slices[gi['profile_id']]:
                    mig_type = '%dc.%s' % (ci['slices'], gi['profile'])  # NVIDIA's name of a CI smaller than its GI
                result.append({'gpu': index, 'minor': minor, 'type': mig_type, 'gpu_instance': gi['id'],
                               'compute_instance': ci['id'],
                               'files': [parent, '/dev/nvidia-caps/nvidia-cap%d' % gi_minor, '/dev/nvidia-caps/nvidia-cap%d' % ci_minor]})
    for dev in result:
        if not TYPE_RE.match(dev['type']):
            raise SlurmError('GPU %d: type %r is not a valid Slurm type; map the GPU name in gpu_types' % (dev['gpu'], dev['type']))
    return result, warnings


def gres_string(devs: list[dict]) -> str:
    """slurm.conf's Gres= for these devices: gpu:<type>:<count> per type, in first-seen order ('' for none)."""
    counts: dict[str, int] = {}
    for dev in devs:
        counts[dev['type']] = counts.get(dev['type'], 0) + 1
    return ','.join('%s:%s:%d' % (GRES_NAME, t, n) for t, n in counts.items())


def gres_lines(node: str, devs: list[dict]) -> list[str]:
    """The managed gres.conf block of `node` (marks included)."""
    lines = [MARK_BEGIN % node]
    for dev in devs:
        key = 'File' if len(dev['files']) == 1 else 'MultipleFiles'
        lines.append('NodeName=%s AutoDetect=off Name=%s Type=%s %s=%s' % (node, GRES_NAME, dev['type'], key, ','.join(dev['files'])))
    lines.append(MARK_END % node)
    return lines


# ---- config files -----------------------------------------------------------------------------------------------

def expand_hostlist(expr: str) -> list[str]:
    """Slurm's hostlist syntax, as far as node names go: 'a,b', 'gpu[01-03,07]', 'n[1-2]x[1-2]'."""
    names, depth, part = [], 0, ''
    for char in expr + ',':
        if char == ',' and depth == 0:
            if part:
                names.extend(_expand_one(part))
            part = ''
            continue
        depth += char == '['
        depth -= char == ']'
        part += char
    return names


def _expand_one(part: str) -> list[str]:
    match = re.match(r'^([^\[]*)\[([^\]]*)\](.*)$', part)
    if not match:
        return [part]
    prefix, ranges, rest = match.groups()
    out = []
    for item in ranges.split(','):
        lo, _sep, hi = item.partition('-')
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise SlurmError('host list %r: %r is not a number range' % (part, item))
        for number in range(int(lo), int(hi or lo) + 1):
            out.extend(prefix + str(number).zfill(len(lo)) + tail for tail in _expand_one(rest))
    return out


def _fields(line: str) -> dict:
    """The key=value words of a config line (keys lower case); a comment ends the line."""
    fields = {}
    for word in line.split('#', 1)[0].split():
        match = _KEY_RE.match(word)
        if match:
            fields[match.group(1).lower()] = match.group(2)
    return fields


def merge_gres_conf(text: str, node: str, block: list[str]) -> str:
    """gres.conf with `node`'s GPU lines replaced by `block`: every line of another node, another GRES name, or a
    global option is kept byte for byte. The block goes where the node's first GPU line (or old block) was, else at
    the end. A line for a host range or global GPU line that would also apply to `node` is an error naming it."""
    kept, at = [], None
    lines = text.splitlines(keepends=True)
    inside = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == MARK_BEGIN % node:
            inside, at = True, len(kept) if at is None else at
            continue
        if inside:
            inside = stripped != MARK_END % node
            continue
        fields = _fields(line)
        if fields.get('name') == GRES_NAME:
            nodes = fields.get('nodename')
            if nodes == node:
                at = len(kept) if at is None else at
                continue
            if nodes is None:
                raise SlurmError('gres.conf line %d %r: a Name=gpu line without NodeName= applies to %s too; '
                                 'give it a NodeName= or remove it' % (number, stripped, node))
            if nodes != node and node in expand_hostlist(nodes):
                raise SlurmError('gres.conf line %d %r: NodeName=%s includes %s in a host range; '
                                 'split %s out of it' % (number, stripped, nodes, node, node))
        kept.append(line)
    if kept and not kept[-1].endswith('\n'):
        kept[-1] += '\n'
    new = [line + '\n' for line in block]
    at = len(kept) if at is None else at
    return ''.join(kept[:at] + new + kept[at:])


def set_node_gres(text: str, node: str, gres: str) -> str:
    """slurm.conf with the Gres= of the `NodeName=<node>` line set to `gres` (removed where empty), every other byte
    kept. No such line, a host range naming the node, or a missing GresTypes=gpu is an error naming it."""
    lines = text.splitlines(keepends=True)
    found, ranged, gres_types = [], [], None
    for number, line in enumerate(lines):
        fields = _fields(line)
        if 'grestypes' in fields:
            gres_types = fields['grestypes']
        nodes = fields.get('nodename')
        if nodes is None or not line.lstrip().lower().startswith('nodename='):
            continue
        if nodes == node:
            found.append(number)
        elif nodes.upper() != 'DEFAULT' and node in expand_hostlist(nodes):
            ranged.append('line %d NodeName=%s' % (number + 1, nodes))
    if not found:
        if ranged:
            raise SlurmError('slurm.conf: %s is in a host range (%s); give it a NodeName=%s line of its own'
                             % (node, '; '.join(ranged), node))
        raise SlurmError('slurm.conf: no NodeName=%s line' % node)
    if len(found) > 1:
        raise SlurmError('slurm.conf: %d NodeName=%s lines (lines %s)' % (len(found), node, ', '.join(str(n + 1) for n in found)))
    if gres and GRES_NAME not in (gres_types or '').split(','):
        raise SlurmError('slurm.conf: GresTypes=%s does not include gpu; add GresTypes=gpu' % (gres_types or '(unset)'))
    number = found[0]
    line = lines[number]
    body, nl = (line[:-1], '\n') if line.endswith('\n') else (line, '')
    if body.rstrip().endswith('\\'):
        raise SlurmError('slurm.conf line %d: NodeName=%s continues on the next line; put it on one line' % (number + 1, node))
    code, hash_, comment = body.partition('#')
    match = re.search(r'(?i)(^|\s)Gres=\S*', code)
    if match:
        start = match.start() + len(match.group(1))
        if gres:
            code = code[:start] + 'Gres=' + gres + code[match.end():]
        else:
            code = (code[:match.start()] + code[match.end():])
    elif gres:
        stripped = code.rstrip()
        code = stripped + ' Gres=' + gres + code[len(stripped):]
    lines[number] = code + hash_ + comment + nl
    return ''.join(lines)


# ---- scontrol -----------------------------------------------------------------------------------------------------

def parse_show_node(text: str) -> dict | None:
    """`scontrol show node -o <node>` (one line) -> {name, state, flags, reason, gres}; None for no such node."""
    line = text.strip()
    if not line.startswith('NodeName='):
        return None
    values, key = {}, None
    for word in line.split(' '):
        match = _KEY_RE.match(word)
        if match and (key != 'Reason' or re.match(r'^[A-Z][A-Za-z]*=', word)):
            key = match.group(1)
            values[key] = match.group(2)
        elif key is not None and word:
            values[key] += ' ' + word
    state = values.get('State', '')
    parts = state.split('+')
    reason = values.get('Reason')
    return {'name': values.get('NodeName'), 'state': state, 'base_state': parts[0].rstrip('*'), 'flags': parts[1:],
            'reason': None if reason in (None, '(null)', 'none') else reason, 'gres': normal_gres(values.get('Gres', ''))}


def normal_gres(gres: str) -> str:
    """A Gres string without socket bindings ('(S:0-1)') or '(null)'."""
    gres = re.sub(r'\([^)]*\)', '', gres or '')
    return '' if gres in ('', 'null') else gres


def gres_counts(gres: str) -> dict:
    """'gpu:a:1,gpu:b:2' -> {'gpu:a': 1, 'gpu:b': 2} (an entry without a count counts 1)."""
    counts: dict[str, int] = {}
    for item in filter(None, normal_gres(gres).split(',')):
        head, _sep, count = item.rpartition(':')
        if not count.isdigit():
            head, count = item, '1'
        counts[head] = counts.get(head, 0) + int(count)
    return counts


def usable(node: dict, allow_drain: bool = False) -> bool:
    """A node that takes jobs: base state IDLE, MIXED, ALLOCATED or COMPLETING and no bad flag (DRAIN allowed with
    `allow_drain`, for a node somebody else drained)."""
    flags = [f for f in node['flags'] if not (allow_drain and f == 'DRAIN')]
    return (node['base_state'] not in BAD_STATES and not any(f in BAD_FLAGS for f in flags)
            and not node['state'].split('+')[0].endswith('*'))


def registered(node: dict) -> bool:
    """slurmd has registered (not UNKNOWN, not NOT_RESPONDING, no '*' on the state)."""
    return node['base_state'] != 'UNKNOWN' and 'NOT_RESPONDING' not in node['flags'] and not node['state'].split('+')[0].endswith('*')


def parse_jobs(text: str) -> list[str]:
    """`squeue -h -o %i` -> job ids."""
    return [line.strip() for line in text.splitlines() if line.strip()]
