# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Pure code of the CDI spec that `nvidia-ctk cdi generate` writes: parse it (JSON, or the YAML the toolkit writes),
check its shape against the Container Device Interface specification, and compare its devices with the GPUs and MIG
devices NVML reports now.

Nothing here reads a file, runs a command or imports pynvml: gpu_cdi reads the spec and the MIG capability files and
observes the GPUs through _nvml, and hands the text and observations to these functions.

Device names follow the toolkit's strategies: `index` (GPU `0`, MIG device `0:1` = <GPU index>:<MIG device index>),
`uuid` (`GPU-...`, `MIG-...`) and `type-index` (`gpu0`, `mig0:1`), and `all`. A MIG device's container edits carry
its parent's /dev/nvidia<minor> and the /dev/nvidia-caps nodes of its GPU instance and compute instance; those minors
(from /proc/driver/nvidia/capabilities) tell which GPU and compute instance a spec device stands for.
"""

from __future__ import annotations

import json
import re

CDI_KIND = 'nvidia.com/gpu'
# CDI device names: a letter or digit, then letters, digits, '_', '.', ':' and '-' (SPEC.md, "Device" name).
_DEVICE_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.:-]*$')
_KIND = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*(\.[A-Za-z0-9_.-]+)*/[A-Za-z0-9][A-Za-z0-9_.-]*$')
_VERSION = re.compile(r'^\d+\.\d+\.\d+$')
_GPU_NODE = re.compile(r'^/dev/nvidia(\d+)$')
_CAP_NODE = re.compile(r'^/dev/nvidia-caps/nvidia-cap(\d+)$')
_INDEX_MIG = re.compile(r'^(?:mig)?(\d+):(\d+)$')
_INDEX_GPU = re.compile(r'^(?:gpu)?(\d+)$')
_EDIT_KEYS = {'env', 'deviceNodes', 'hooks', 'mounts', 'intelRdt', 'additionalGids', 'netDevices'}


# What a CDI check compares, as module options with their defaults (gpu_cdi's, and gpu_facts' cdi option).
CHECK_OPTIONS = {
    'spec_path': {'type': 'path', 'default': '/etc/cdi/nvidia.yaml'},
    'nvidia_ctk': {'type': 'str', 'default': 'nvidia-ctk'},
    'capabilities_root': {'type': 'path', 'default': '/proc/driver/nvidia/capabilities'},
}


def yaml_loader():
    """PyYAML's safe loader where the host has it, else None (parse then reads the toolkit's YAML itself)."""
    try:
        import yaml  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return yaml.safe_load


class CdiError(Exception):
    """A spec that does not parse or is not a CDI spec; the message names the file."""


# ---------------------------------------------------------------------------------------------------------
# Parsing. JSON, or YAML: PyYAML's safe loader where the host has it (the caller passes it), else the block-style
# subset the toolkit writes (mappings, sequences, plain and quoted scalars, empty flow collections, flow lists of
# scalars).

def parse(text: str, path: str, yaml_load=None) -> dict:
    """The spec in `text` (the content of `path`), checked against the CDI spec; CdiError names `path`."""
    stripped = text.lstrip()
    try:
        if stripped.startswith('{'):
            data = json.loads(stripped)
        elif yaml_load is not None:
            data = yaml_load(text)
        else:
            data = _parse_yaml(text)
    except (ValueError, IndexError) as exc:
        raise CdiError('%s does not parse as a CDI spec: %s' % (path, exc)) from exc
    except Exception as exc:  # pylint: disable=broad-except  # the YAML loader's own error classes
        raise CdiError('%s does not parse as a CDI spec: %s' % (path, exc)) from exc
    problems = validate(data)
    if problems:
        raise CdiError('%s is not a valid CDI spec: %s' % (path, '; '.join(problems)))
    return data


def _strip_comment(text: str) -> str:
    if text.startswith(('"', "'")):
        return text
    match = re.search(r'\s#', text)
    return text[:match.start()] if match else text


def _scalar(text: str):
    text = _strip_comment(text).strip()
    if text == '' or text in ('~', 'null', 'Null', 'NULL'):
        return None
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError('unterminated quoted scalar %s' % text)
        return text[1:-1].replace("''", "'")
    if text == '[]':
        return []
    if text == '{}':
        return {}
    if text.startswith('['):
        if not text.endswith(']'):
            raise ValueError('unterminated flow sequence %s' % text)
        inner = text[1:-1].strip()
        return [_scalar(item) for item in inner.split(',')] if inner else []
    if text.startswith(('{', '&', '*', '!', '|', '>')):
        raise ValueError('unsupported YAML construct %s' % text)
    if text in ('true', 'True', 'TRUE'):
        return True
    if text in ('false', 'False', 'FALSE'):
        return False
    if re.match(r'^[-+]?\d+$', text):
        return int(text)
    if re.match(r'^0o[0-7]+$', text):
        return int(text[2:], 8)
    return text


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for raw in text.splitlines():
        if raw.strip() in ('', '---', '...') or raw.lstrip().startswith('#'):
            continue
        if '\t' in raw[:len(raw) - len(raw.lstrip())]:
            raise ValueError('a tab in the indentation of %r' % raw)
        out.append((len(raw) - len(raw.lstrip(' ')), raw.strip()))
    return out


def _key_value(content: str):
    """('key', 'rest') of a mapping line, or None where the line is not `key:` / `key: value`."""
    if content.startswith(('"', "'")):
        quote = content[0]
        end = content.find(quote, 1)
        if end < 0 or not content[end + 1:].startswith(':'):
            return None
        key, rest = content[1:end], content[end + 2:]
    else:
        match = re.match(r'^([^\s:][^:]*?):(?:\s+|$)(.*)$', content)
        if match is None:
            return None
        key, rest = match.group(1), match.group(2)
    return key, rest.strip()


def _parse_yaml(text: str):
    lines = _lines(text)
    if not lines:
        raise ValueError('the document is empty')
    value, end = _block(lines, 0, lines[0][0])
    if end != len(lines):
        raise ValueError('unexpected indentation at %r' % lines[end][1])
    return value


def _block(lines, i, indent):
    if lines[i][1] == '-' or lines[i][1].startswith('- '):
        return _sequence(lines, i, indent)
    if _key_value(lines[i][1]) is not None:
        return _mapping(lines, i, indent)
    return _scalar(lines[i][1]), i + 1


def _nested(lines, i, indent, allow_same_indent_sequence):
    """The value of a `key:` or `-` with nothing after it: the block below it (None where there is none)."""
    if i < len(lines):
        child_indent, content = lines[i]
        if child_indent > indent or (allow_same_indent_sequence and child_indent == indent and
                                     (content == '-' or content.startswith('- '))):
            return _block(lines, i, child_indent)
    return None, i


def _mapping(lines, i, indent):
    result = {}
    while i < len(lines) and lines[i][0] == indent:
        pair = _key_value(lines[i][1])
        if pair is None:
            raise ValueError('expected "key: value" at %r' % lines[i][1])
        key, rest = pair
        if key in result:
            raise ValueError('duplicate key %r' % key)
        if rest:
            result[key], i = _scalar(rest), i + 1
        else:
            result[key], i = _nested(lines, i + 1, indent, True)
    if i < len(lines) and lines[i][0] > indent:
        raise ValueError('unexpected indentation at %r' % lines[i][1])
    return result, i


def _sequence(lines, i, indent):
    result = []
    while i < len(lines) and lines[i][0] == indent and (lines[i][1] == '-' or lines[i][1].startswith('- ')):
        rest = lines[i][1][1:].strip()
        if not rest:
            value, i = _nested(lines, i + 1, indent, False)
        elif _key_value(rest) is not None:
            # `- key: value` opens a mapping whose keys sit two columns in
            inner = [(indent + 2, rest)] + lines[i + 1:]
            value, used = _mapping(inner, 0, indent + 2)
            i = i + used
        else:
            value, i = _scalar(rest), i + 1
        result.append(value)
    return result, i


# ---------------------------------------------------------------------------------------------------------
# Shape

def validate(data) -> list[str]:
    """What keeps `data` from being a CDI spec (the required fields and their types, device names), or []."""
    if not isinstance(data, dict):
        return ['the document is not a mapping']
    problems = []
    version = data.get('cdiVersion')
    if not isinstance(version, str) or not _VERSION.match(version):
        problems.append('cdiVersion %s is not a version like 0.5.0' % json.dumps(version))
    kind = data.get('kind')
    if not isinstance(kind, str) or not _KIND.match(kind):
        problems.append('kind %s is not vendor.com/class' % json.dumps(kind))
    devices = data.get('devices')
    if not isinstance(devices, list):
        return problems + ['devices is not a list']
    seen = set()
    for n, device in enumerate(devices):
        if not isinstance(device, dict):
            problems.append('devices[%d] is not a mapping' % n)
            continue
        name = device.get('name')
        if not isinstance(name, str) or not _DEVICE_NAME.match(name):
            problems.append('devices[%d] has no valid name (%s)' % (n, json.dumps(name)))
        elif name in seen:
            problems.append('device %s is named twice' % name)
        seen.add(name)
        problems.extend(_edit_problems(device.get('containerEdits'), 'device %s' % name, required=True))
    if data.get('containerEdits') is not None:
        problems.extend(_edit_problems(data['containerEdits'], 'the spec', required=False))
    return problems


def _edit_problems(edits, where: str, required: bool) -> list[str]:
    if edits is None:
        return ['%s has no containerEdits' % where] if required else []
    if not isinstance(edits, dict):
        return ['%s: containerEdits is not a mapping' % where]
    problems = ['%s: unknown containerEdits field %s' % (where, k) for k in sorted(edits) if k not in _EDIT_KEYS]
    for node in edits.get('deviceNodes') or []:
        if not isinstance(node, dict) or not isinstance(node.get('path'), str):
            problems.append('%s: a device node without a path' % where)
    return problems


# ---------------------------------------------------------------------------------------------------------
# Comparison

def _nodes(device: dict) -> list[str]:
    return [n.get('path') for n in (device.get('containerEdits') or {}).get('deviceNodes') or [] if isinstance(n, dict)]


def observed_devices(gpus: list[dict], caps: dict) -> dict:
    """What NVML reports now, keyed for the comparison: per GPU its index, UUID, minor (where known) and MIG devices
    as (GI id, CI id, profile). `caps` maps 'gpu<minor>/gi<g>[/ci<c>]' to its /dev/nvidia-caps minor."""
    out = []
    for gpu in gpus:
        migs = []
        if gpu.get('mig', {}).get('current'):
            for gi in gpu['mig'].get('gpu_instances') or []:
                for ci in gi.get('compute_instances') or []:
                    migs.append((gi['id'], ci['id'], gi.get('profile')))
        out.append({'index': gpu['index'], 'uuid': gpu.get('uuid'), 'minor': gpu.get('minor_number'),
                    'lost': gpu.get('status') == 'lost', 'mig': sorted(migs, key=lambda m: (m[0], m[1]))})
    return {'gpus': out, 'caps': dict(caps)}


def _mig_label(gpu: dict, gi: int, ci: int, profile) -> str:
    return 'MIG device of GPU %d (%s): GPU instance %d, compute instance %d%s' % (
        gpu['index'], gpu['uuid'], gi, ci, ' (%s)' % profile if profile else '')


def compare(spec: dict, observed: dict) -> dict:
    """Which devices the spec lacks (`missing`: NVML reports them, the spec does not name them) and which it names
    that are gone or changed (`stale`), each by the names the spec uses or NVML's identity. A spec for another
    kind than nvidia.com/gpu is not compared."""
    devices = [d for d in spec.get('devices') or [] if isinstance(d, dict)]
    by_name = {d.get('name'): d for d in devices}
    gpus = observed['gpus']
    by_caps = {minor: key for key, minor in observed['caps'].items()}
    missing, stale, matched = [], [], set()

    # whole GPUs: by UUID and by index, one /dev/nvidia<minor> each, the same for both names
    gpu_minor = {}
    for gpu in gpus:
        if gpu['lost']:
            continue
        minor = gpu['minor']
        uuid_minors = _gpu_minors(by_name.get(gpu['uuid']))
        if gpu['uuid'] not in by_name:
            missing.append('GPU %d (%s)' % (gpu['index'], gpu['uuid']))
        else:
            matched.add(gpu['uuid'])
            if minor is None and len(uuid_minors) == 1:
                minor = uuid_minors[0]
            elif minor is not None and uuid_minors != [minor]:
                stale.append('%s (its device node is not /dev/nvidia%d)' % (gpu['uuid'], minor))
        for name in (str(gpu['index']), 'gpu%d' % gpu['index']):
            if name not in by_name:
                continue
            matched.add(name)
            if minor is None or _gpu_minors(by_name[name]) != [minor]:
                stale.append('%s (%s)' % (name, 'its device node is not /dev/nvidia%d' % minor if minor is not None
                                          else 'GPU %d is %s, not in the spec' % (gpu['index'], gpu['uuid'])))
        if minor is not None:
            gpu_minor[gpu['index']] = minor
    gpu_by_minor = {minor: gpu for gpu in gpus for i, minor in gpu_minor.items() if gpu['index'] == i}

    # MIG devices: the parent's node and the GPU- and compute-instance cap nodes say which instance a device is
    wanted = {(g['index'], gi, ci): (g, profile) for g in gpus for gi, ci, profile in g['mig']}
    seen_mig = set()
    for device in devices:
        name = device.get('name')
        if name in matched or name == 'all':
            continue
        nodes = _nodes(device)
        caps = [int(m.group(1)) for m in map(_CAP_NODE.match, nodes) if m]
        parents = [int(m.group(1)) for m in map(_GPU_NODE.match, nodes) if m]
        if not caps and not _INDEX_MIG.match(name) and not name.startswith('MIG-'):
            stale.append('%s (no such GPU now)' % name)
            continue
        gpu = gpu_by_minor.get(parents[0]) if len(parents) == 1 else None
        key = _mig_key(caps, by_caps, parents[0] if len(parents) == 1 else None)
        if gpu is None or key is None or (gpu['index'],) + key not in wanted:
            stale.append('%s (no such MIG device now)' % name)
            continue
        seen_mig.add((gpu['index'],) + key)
    for key, (gpu, profile) in sorted(wanted.items(), key=lambda kv: kv[0]):
        if key not in seen_mig:
            missing.append(_mig_label(gpu, key[1], key[2], profile))
    if 'all' not in by_name and gpus:
        missing.append('all')
    return {'missing': missing, 'stale': stale, 'matches': not missing and not stale}


def _gpu_minors(device) -> list[int]:
    return [int(m.group(1)) for m in map(_GPU_NODE.match, _nodes(device or {})) if m]


def _mig_key(caps: list[int], by_caps: dict, parent_minor):
    """(GI id, CI id) of a MIG device from its two cap minors, or None where they are not this host's now or not
    of its parent GPU."""
    gi = ci = None
    for minor in caps:
        path = by_caps.get(minor)
        match = re.match(r'^gpu(\d+)/gi(\d+)(?:/ci(\d+))?$', path or '')
        if match is None or int(match.group(1)) != parent_minor:
            return None
        match = re.match(r'^gpu\d+/gi(\d+)(?:/ci(\d+))?$', path)
        if match.group(2) is None:
            gi = int(match.group(1))
        else:
            ci = (int(match.group(1)), int(match.group(2)))
    if gi is None or ci is None or ci[0] != gi:
        return None
    return gi, ci[1]


def device_names(spec: dict) -> list[str]:
    return [d.get('name') for d in spec.get('devices') or [] if isinstance(d, dict)]


def mismatch_message(spec_path: str, result: dict) -> str:
    """Why a spec fails the comparison (compare's result), for the task that reports it."""
    return 'the CDI spec %s does not match the devices NVML reports: %s' % (spec_path, '; '.join(
        ['missing: ' + ', '.join(result['missing'])] * bool(result['missing']) +
        ['stale: ' + ', '.join(result['stale'])] * bool(result['stale'])))


def missing_spec_message(spec_path: str) -> str:
    return '%s does not exist: no CDI spec to verify' % spec_path


def verification(text, spec_path: str, observed: dict, yaml_load=None) -> dict:
    """gpu_cdi's verification (generate=false, verify=true) of the spec text read from `spec_path` (None: no such
    file) against `observed` (observed_devices), as a result instead of a failure: `matches` false and `msg` saying
    why where the file is missing, is not a CDI spec, or names other devices than NVML reports."""
    out = {'toolkit_installed': True, 'spec_path': spec_path, 'matches': False, 'missing': [], 'stale': [], 'msg': ''}
    if text is None:
        out['msg'] = missing_spec_message(spec_path)
        return out
    try:
        spec = parse(text, spec_path, yaml_load)
    except CdiError as exc:
        out['msg'] = str(exc)
        return out
    out.update(devices=device_names(spec), cdi_version=spec.get('cdiVersion'))
    out.update(compare(spec, observed))
    if not out['matches']:
        out['msg'] = mismatch_message(spec_path, out)
    return out
