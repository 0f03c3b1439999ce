# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pinned requirements installed into a virtualenv straight from a directory of wheels, without starting pip.

pip run from its own wheel costs about a CPU-second before it installs anything (it compiles its modules out of the
zip on every start). For the common offline case, every requirement pinned with ``==`` and a wheel in the directory
for each, this installs exactly what ``pip install --no-index --find-links DIR`` installs, following the binary
distribution format (https://packaging.python.org/en/latest/specifications/binary-distribution-format/): the wheel's
tags are matched against the virtualenv's interpreter, RECORD hashes are verified, ``.data`` directories go to their
scheme paths, script shebangs and console-script entry points point at the virtualenv's python, a RECORD pip can read
(and uninstall from) is written, and an installed different version is removed first by its RECORD.

Where it cannot decide exactly what pip would do (a requirement that is not pinned, a dependency that is not in the
set or installed, a marker or version it cannot evaluate, a wheel whose format it does not know), ``plan`` says why
and installs nothing, so that the caller runs pip. Standard library only: the module runs it on the host.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import py_compile
import re
import shutil
import stat
import zipfile
from email.parser import HeaderParser
from typing import Any, Callable, Mapping, Optional, Sequence

from ansible_collections.gpuvirt.fleet.plugins.module_utils._host_state import PINNED, metadata_name_version, normalize

Runner = Callable[[list], tuple]

WHEEL_NAME = re.compile(r'^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(?:-(?P<build>\d[^-]*))?'
                        r'-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$')
# The interpreter's facts a wheel's tags, markers and scheme paths depend on, read by the virtualenv's own python.
PROBE = (
    'import importlib.util,json,os,platform,sys,sysconfig\n'
    'libc = None\n'
    'try:\n'
    '    libc = os.confstr("CS_GNU_LIBC_VERSION")\n'
    'except (AttributeError, ValueError, OSError):\n'
    '    pass\n'
    'print(json.dumps({"implementation": sys.implementation.name, "version": list(sys.version_info[:3]),'
    ' "python_full_version": platform.python_version(), "machine": platform.machine(),'
    ' "bits": 64 if sys.maxsize > 2 ** 32 else 32, "libc": libc or "", "os_name": os.name, "sys_platform": sys.platform,'
    ' "platform_system": platform.system(), "platform_release": platform.release(), "platform_version": platform.version(),'
    ' "platform_python_implementation": platform.python_implementation(), "paths": sysconfig.get_paths(),'
    ' "executable": sys.executable, "magic": importlib.util.MAGIC_NUMBER.hex()}))\n'
)
# manylinux's legacy aliases and the glibc they stand for (PEP 600).
LEGACY_MANYLINUX = {'manylinux1': (2, 5), 'manylinux2010': (2, 12), 'manylinux2014': (2, 17)}


class WheelError(Exception):
    """A wheel that must not be installed (a hostile path, a hash that does not match its RECORD): names it."""


# ---------------------------------------------------------------------------------------------------------- versions
def release(version: str) -> Optional[tuple]:
    """The release tuple of a plain release version (1.2.3, v1.2, 1.0.0+local is not plain): None for anything with
    a pre, post or dev part, an epoch or a local label, which this module does not order."""
    match = re.fullmatch(r'v?(\d+(?:\.\d+)*)', version.strip())
    return tuple(int(p) for p in match.group(1).split('.')) if match else None


def _padded(a: tuple, b: tuple) -> tuple[tuple, tuple]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def version_matches(version: str, specifier: str) -> Optional[bool]:
    """Whether `version` meets a PEP 440 specifier set such as ``>=3.9,!=3.10.*`` (None: not decidable here)."""
    have = release(version)
    if have is None:
        return None
    for clause in [c.strip() for c in specifier.split(',') if c.strip()]:
        match = re.fullmatch(r'(~=|===|==|!=|<=|>=|<|>)\s*(\S+)', clause)
        if not match:
            return None
        op, text = match.groups()
        if op == '===':
            ok = version.strip() == text
        elif op in ('==', '!=') and text.endswith('.*'):
            prefix = release(text[:-2])
            if prefix is None:
                return None
            ok = (have + (0,) * (len(prefix) - len(have)))[:len(prefix)] == prefix
            ok = ok if op == '==' else not ok
        else:
            want = release(text)
            if want is None:
                return None
            a, b = _padded(have, want)
            if op == '==':
                ok = a == b
            elif op == '!=':
                ok = a != b
            elif op == '<=':
                ok = a <= b
            elif op == '>=':
                ok = a >= b
            elif op == '<':
                ok = a < b
            elif op == '>':
                ok = a > b
            else:  # ~= X.Y(.Z): >= X.Y(.Z) and the same release except its last part
                if len(want) < 2:
                    return None
                ok = a >= b and have[:len(want) - 1] == want[:-1]
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------- markers
_MARKER_TOKEN = re.compile(r'\s*(?:(?P<str>\'[^\']*\'|"[^"]*")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\))|(?P<word>[A-Za-z_.]+))')
_VERSION_VARIABLES = {'python_version', 'python_full_version', 'implementation_version'}


def marker_environment(info: Mapping[str, Any]) -> dict[str, str]:
    """PEP 508's marker variables for the probed interpreter, with no extra requested."""
    major, minor = info['version'][0], info['version'][1]
    return {
        'python_version': '%d.%d' % (major, minor),
        'python_full_version': info.get('python_full_version') or '.'.join(str(p) for p in info['version']),
        'implementation_version': '.'.join(str(p) for p in info['version']),
        'implementation_name': info.get('implementation', ''),
        'platform_python_implementation': info.get('platform_python_implementation', ''),
        'os_name': info.get('os_name', ''),
        'sys_platform': info.get('sys_platform', ''),
        'platform_system': info.get('platform_system', ''),
        'platform_release': info.get('platform_release', ''),
        'platform_machine': info.get('machine', ''),
        'platform_version': info.get('platform_version', ''),
        'extra': '',
    }


def marker_true(marker: str, environment: Mapping[str, str]) -> Optional[bool]:
    """Evaluate a PEP 508 environment marker (None: it has something this evaluator does not decide)."""
    tokens, pos = [], 0
    while pos < len(marker):
        if marker[pos:].strip() == '':
            break
        match = _MARKER_TOKEN.match(marker, pos)
        if not match:
            return None
        pos = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    state = {'i': 0}

    def peek():
        return tokens[state['i']] if state['i'] < len(tokens) else (None, None)

    def take():
        token = peek()
        state['i'] += 1
        return token

    def value():
        kind, text = take()
        if kind == 'str':
            return ('literal', text[1:-1])
        if kind == 'word' and text in environment:
            return ('variable:' + text, environment[text])
        raise ValueError(text)

    def comparison():
        kind, text = peek()
        if kind == 'op' and text == '(':
            take()
            result = disjunction()
            if take() != ('op', ')'):
                raise ValueError('(')
            return result
        left_kind, left = value()
        kind, op = take()
        if kind == 'word' and op == 'not':
            if take() != ('word', 'in'):
                raise ValueError('not')
            op = 'not in'
        elif not ((kind == 'op' and op not in ('(', ')')) or (kind == 'word' and op == 'in')):
            raise ValueError(op)
        right_kind, right = value()
        if op in ('in', 'not in'):
            return (left in right) == (op == 'in')
        names = {left_kind.split(':', 1)[-1], right_kind.split(':', 1)[-1]}
        if left_kind.startswith('variable:extra') or right_kind.startswith('variable:extra'):
            return (normalize(left) == normalize(right)) == (op == '==') if op in ('==', '!=') else False
        if names & _VERSION_VARIABLES and op not in ('===',):
            decided = version_matches(left, op + right)
            if decided is None:
                raise ValueError(op)
            return decided
        if op == '==':
            return left == right
        if op == '!=':
            return left != right
        if op == '===':
            return left == right
        raise ValueError(op)

    def conjunction():
        result = comparison()
        while peek() == ('word', 'and'):
            take()
            right = comparison()
            result = result and right
        return result

    def disjunction():
        result = conjunction()
        while peek() == ('word', 'or'):
            take()
            right = conjunction()
            result = result or right
        return result

    try:
        result = disjunction()
    except (ValueError, IndexError, TypeError):
        return None
    return result if state['i'] == len(tokens) else None


# -------------------------------------------------------------------------------------------------------------- tags
def _arch(info: Mapping[str, Any]) -> str:
    machine = info.get('machine', '')
    if info.get('bits') == 32 and machine in ('x86_64', 'amd64', 'i386', 'i586', 'i686'):
        return 'i686'
    if info.get('bits') == 32 and machine == 'aarch64':
        return 'armv8l'
    return machine


def _libc(info: Mapping[str, Any]) -> tuple[str, tuple]:
    match = re.fullmatch(r'(glibc|musl)\s+(\d+)\.(\d+).*', info.get('libc', '') or '')
    return (match.group(1), (int(match.group(2)), int(match.group(3)))) if match else ('', ())


def platform_supported(plat: str, info: Mapping[str, Any]) -> bool:
    if plat == 'any':
        return True
    if info.get('sys_platform') != 'linux':
        return False
    arch = _arch(info)
    if plat == 'linux_' + arch:
        return True
    libc, have = _libc(info)
    for legacy, needed in LEGACY_MANYLINUX.items():
        if plat == '%s_%s' % (legacy, arch):
            return libc == 'glibc' and have >= needed
    match = re.fullmatch(r'(manylinux|musllinux)_(\d+)_(\d+)_(.+)', plat)
    if match and match.group(4) == arch:
        family = 'glibc' if match.group(1) == 'manylinux' else 'musl'
        return libc == family and have >= (int(match.group(2)), int(match.group(3)))
    return False


def tag_supported(py: str, abi: str, plat: str, info: Mapping[str, Any]) -> bool:
    """Whether one (python, abi, platform) tag triple installs on the interpreter (what pip's tag list accepts)."""
    if not platform_supported(plat, info):
        return False
    major, minor = info['version'][0], info['version'][1]
    cpython = info.get('implementation') == 'cpython'
    generic = re.fullmatch(r'py(\d)(\d*)', py)
    if generic:
        if int(generic.group(1)) != major or (generic.group(2) and int(generic.group(2)) > minor):
            return False
        return abi == 'none'
    specific = re.fullmatch(r'cp(\d)(\d+)', py)
    if not (specific and cpython and int(specific.group(1)) == major):
        return False
    wanted = int(specific.group(2))
    if abi != 'none' and plat == 'any':
        return False
    if abi == 'abi3':
        return wanted <= minor
    if abi in ('cp%d%d' % (major, minor), 'none'):
        return wanted == minor
    return False


def wheel_supported(filename: str, info: Mapping[str, Any]) -> bool:
    match = WHEEL_NAME.match(os.path.basename(filename))
    if not match:
        return False
    return any(tag_supported(py, abi, plat, info)
               for py in match.group('py').split('.')
               for abi in match.group('abi').split('.')
               for plat in match.group('plat').split('.'))


# -------------------------------------------------------------------------------------------------------------- plan
def _dist_info_dir(archive: zipfile.ZipFile, filename: str) -> str:
    tops = {n.split('/', 1)[0] for n in archive.namelist() if n.count('/') >= 1 and n.split('/', 1)[0].endswith('.dist-info')}
    if len(tops) != 1:
        raise WheelError('%s: %d .dist-info directories, not one' % (filename, len(tops)))
    return tops.pop()


def read_wheel(path: str) -> dict:
    """The wheel's WHEEL and METADATA headers, read from the archive."""
    name = os.path.basename(path)
    try:
        with zipfile.ZipFile(path) as archive:
            info_dir = _dist_info_dir(archive, name)
            wheel = HeaderParser().parsestr(archive.read(info_dir + '/WHEEL').decode('utf-8'))
            metadata = HeaderParser().parsestr(archive.read(info_dir + '/METADATA').decode('utf-8'))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, OSError) as exc:
        raise WheelError('%s: not a readable wheel (%s)' % (name, exc)) from exc
    return {
        'path': path, 'dist_info': info_dir, 'wheel_version': wheel.get('Wheel-Version', ''),
        'purelib': (wheel.get('Root-Is-Purelib', 'false').strip().lower() == 'true'),
        'name': metadata.get('Name', ''), 'version': metadata.get('Version', ''),
        'requires_python': metadata.get('Requires-Python', ''),
        'requires': metadata.get_all('Requires-Dist') or [],
    }


def _requirement(text: str) -> Optional[tuple[str, str, str]]:
    """A Requires-Dist line as (name, specifier, marker); None where it has extras or a URL."""
    body, _sep, marker = text.partition(';')
    match = re.fullmatch(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\(([^)]*)\)|([^\[@]*))\s*', body)
    if not match:
        return None
    return match.group(1), (match.group(2) or match.group(3) or '').strip(), marker.strip()


def plan(wheel_dir: str, requirements: Sequence[str], info: Mapping[str, Any], installed: Mapping[str, str]) -> dict:
    """What to install: {'wheels': [wheel info of each requirement that is not installed at its version], 'reason': ''}
    or, where pip must decide, {'wheels': [], 'reason': why}. `installed` maps normalized names to versions."""
    def pip(reason):
        return {'wheels': [], 'reason': reason}

    try:
        names = sorted(f for f in os.listdir(wheel_dir) if f.endswith('.whl'))
    except OSError as exc:
        return pip('wheel directory %s: %s' % (wheel_dir, exc.strerror))
    environment = marker_environment(info)
    chosen, pins = [], {}
    for requirement in requirements:
        body, _sep, marker = requirement.partition(';')
        if marker.strip():
            decided = marker_true(marker, environment)
            if decided is None:
                return pip('requirement %r: marker not decided here' % requirement)
            if not decided:
                continue
        match = PINNED.fullmatch(body)
        if not match:
            return pip('requirement %r is not pinned with ==' % requirement)
        pins[normalize(match.group(1))] = match.group(2)
    for name, version in sorted(pins.items()):
        candidates = []
        for filename in names:
            parts = WHEEL_NAME.match(filename)
            if parts and normalize(parts.group('name')) == name and parts.group('version') == version \
                    and wheel_supported(filename, info):
                candidates.append(filename)
        if not candidates:
            return pip('%s==%s: no wheel in %s for this interpreter (%s %s, %s)' % (
                name, version, wheel_dir, info.get('implementation'), '.'.join(str(p) for p in info['version'][:2]),
                _arch(info)))
        # a binary wheel for this platform is what pip prefers to a pure one of the same version
        candidates.sort(key=lambda f: (f.endswith('-any.whl'), f))
        wheel = read_wheel(os.path.join(wheel_dir, candidates[0]))
        if not wheel['wheel_version'].startswith('1.'):
            return pip('%s: Wheel-Version %r is not 1.x' % (candidates[0], wheel['wheel_version']))
        if normalize(wheel['name']) != name or wheel['version'] != version:
            return pip('%s: its METADATA says %s %s' % (candidates[0], wheel['name'], wheel['version']))
        if wheel['requires_python']:
            fits = version_matches(environment['python_full_version'], wheel['requires_python'])
            if fits is None:
                return pip('%s: Requires-Python %r not decided here' % (candidates[0], wheel['requires_python']))
            if not fits:
                return pip('%s: needs Python %s' % (candidates[0], wheel['requires_python']))
        chosen.append(wheel)
    available = dict(installed)
    available.update(pins)
    for wheel in chosen:
        for line in wheel['requires']:
            parsed = _requirement(line)
            if parsed is None:
                return pip('%s: dependency %r not decided here' % (wheel['name'], line))
            dep, specifier, marker = parsed
            if marker:
                decided = marker_true(marker, environment)
                if decided is None:
                    return pip('%s: dependency %r: marker not decided here' % (wheel['name'], line))
                if not decided:
                    continue
            have = available.get(normalize(dep))
            if have is None:
                return pip('%s needs %s, which is neither in the requirements nor installed' % (wheel['name'], dep))
            if specifier and not version_matches(have, specifier):
                return pip('%s needs %s %s; %s is %s' % (wheel['name'], dep, specifier, dep, have))
    return {'wheels': [w for w in chosen if installed.get(normalize(w['name'])) != w['version']], 'reason': ''}


# ----------------------------------------------------------------------------------------------------------- install
def probe(run: Runner, python: str) -> dict:
    rc, out, err = run([python, '-c', PROBE])
    if rc != 0:
        raise WheelError('%s cannot describe itself (rc=%d): %s' % (python, rc, (err or out).strip()[:200]))
    return json.loads(out)


def _record_hash(data: bytes, algorithm: str = 'sha256') -> str:
    digest = hashlib.new(algorithm, data).digest()
    return '%s=%s' % (algorithm, base64.urlsafe_b64encode(digest).rstrip(b'=').decode('ascii'))


def _inside(base: str, relative: str) -> str:
    """base/relative, refused where the archive path would leave base (absolute, .., a drive, a backslash)."""
    if relative.startswith('/') or '\\' in relative or any(p in ('..', '') for p in relative.split('/')):
        raise WheelError('path %r leaves its directory' % relative)
    target = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([os.path.realpath(base), os.path.realpath(os.path.dirname(target))]) != os.path.realpath(base):
        raise WheelError('path %r leaves its directory' % relative)
    return target


def _write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.gpuvirt-tmp'
    with open(tmp, 'wb') as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def installed_records(site: str) -> dict[str, str]:
    """normalized name -> its .dist-info directory in `site`."""
    found = {}
    try:
        entries = os.listdir(site)
    except OSError:
        return found
    for entry in entries:
        if entry.endswith('.dist-info'):
            found[normalize(entry[:-len('.dist-info')].rsplit('-', 1)[0])] = os.path.join(site, entry)
    return found


def uninstall(dist_info: str, venv: str) -> list[str]:
    """Remove an installed distribution by its RECORD (only files inside the virtualenv), the compiled modules of its
    sources and the directories it leaves empty; its removed paths."""
    site = os.path.realpath(os.path.dirname(dist_info))
    root = os.path.realpath(venv)
    keep = {root, site, os.path.join(root, 'bin')}
    removed = []
    try:
        with open(os.path.join(dist_info, 'RECORD'), encoding='utf-8', newline='') as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError:
        rows = []
    for row in rows:
        path = os.path.realpath(os.path.join(site, row[0]))
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            continue
        os.unlink(path)
        removed.append(path)
        cache = os.path.join(os.path.dirname(path), '__pycache__')
        if path.endswith('.py') and os.path.isdir(cache):
            stem = os.path.splitext(os.path.basename(path))[0] + '.'
            for compiled in os.listdir(cache):
                if compiled.startswith(stem) and compiled.endswith('.pyc'):
                    os.unlink(os.path.join(cache, compiled))
    shutil.rmtree(dist_info, ignore_errors=True)
    # the directories left empty, deepest first, never the virtualenv, its site-packages or its bin
    for directory in sorted({os.path.dirname(p) for p in removed}, key=len, reverse=True):
        while directory not in keep and os.path.commonpath([root, directory]) == root:
            cache = os.path.join(directory, '__pycache__')
            try:
                if os.path.isdir(cache) and not os.listdir(cache):
                    os.rmdir(cache)
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)
    return removed


def _console_script(python: str, target: str) -> Optional[bytes]:
    match = re.fullmatch(r'\s*([\w.]+)\s*:\s*([\w.]+)\s*(\[.*\])?\s*', target)
    if not match:
        return None
    module, attribute = match.group(1), match.group(2)
    return ('#!%s\n# -*- coding: utf-8 -*-\n# written by gpuvirt.fleet from the wheel\'s entry points\nimport re\nimport sys\n'
            'from %s import %s\nif __name__ == "__main__":\n'
            '    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])\n'
            '    sys.exit(%s())\n' % (python, module, attribute.split('.')[0], attribute)).encode('utf-8')


def _verified_members(archive: zipfile.ZipFile, wheel: Mapping[str, Any], scheme: Mapping[str, str], root: str) -> list:
    """(member, target path, scheme key, bytes) of every file in the wheel, each checked against its RECORD hash and
    placed inside its scheme directory, before anything is written; the .dist-info last."""
    filename = os.path.basename(wheel['path'])
    info_dir = wheel['dist_info']
    record_name = info_dir + '/RECORD'
    try:
        record = {row[0]: row for row in csv.reader(io.StringIO(archive.read(record_name).decode('utf-8'))) if row}
    except KeyError as exc:
        raise WheelError('%s: no RECORD' % filename) from exc
    unsigned = {record_name, info_dir + '/RECORD.jws', info_dir + '/RECORD.p7s'}
    data_dir = info_dir[:-len('.dist-info')] + '.data'
    out = []
    for member in archive.infolist():
        name = member.filename
        if member.is_dir() or name in unsigned:
            continue
        if name not in record:
            raise WheelError('%s: %s is not in its RECORD' % (filename, name))
        try:
            if name.startswith(data_dir + '/'):
                key, _sep, rest = name[len(data_dir) + 1:].partition('/')
                if key not in scheme or not rest:
                    raise WheelError('%s is in no scheme directory' % name)
                target = _inside(scheme[key], rest)
            else:
                key, target = 'root', _inside(root, name)
        except WheelError as exc:
            raise WheelError('%s: %s' % (filename, exc)) from exc
        data = archive.read(member)
        digest = record[name][1] if len(record[name]) > 1 else ''
        if digest:
            algorithm = digest.split('=', 1)[0]
            if algorithm not in ('sha256', 'sha384', 'sha512') or _record_hash(data, algorithm) != digest:
                raise WheelError('%s: %s does not match its RECORD hash' % (filename, name))
        elif not name.startswith(info_dir + '/'):
            raise WheelError('%s: %s has no hash in its RECORD' % (filename, name))
        out.append((member, target, key, data))
    out.sort(key=lambda item: item[0].filename.startswith(info_dir + '/'))
    return out


def install(wheel: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """Install one wheel (read by read_wheel) into the interpreter's scheme paths; the paths written. Every member is
    verified before the first is written, and the .dist-info is written last, so that a refused wheel writes nothing
    and an interrupted install does not look installed."""
    paths = info['paths']
    root = paths['purelib'] if wheel['purelib'] else paths['platlib']
    scheme = {'purelib': paths['purelib'], 'platlib': paths['platlib'], 'scripts': paths['scripts'], 'data': paths['data'],
              'headers': os.path.join(paths['data'], 'include', 'site', 'python%d.%d' % tuple(info['version'][:2]), wheel['name'])}
    python = info['executable']
    filename = os.path.basename(wheel['path'])
    with zipfile.ZipFile(wheel['path']) as archive:
        members = _verified_members(archive, wheel, scheme, root)
    scripts = []
    for member, _target, _key, data in members:
        if member.filename == wheel['dist_info'] + '/entry_points.txt':
            for script, entry in _entry_points(data.decode('utf-8')):
                body = _console_script(python, entry)
                if body is None:
                    raise WheelError('%s: entry point %s = %s not understood' % (filename, script, entry))
                try:
                    scripts.append((_inside(scheme['scripts'], script), body))
                except WheelError as exc:
                    raise WheelError('%s: entry point %s' % (filename, exc)) from exc
    site = root
    written, rows, sources = [], [], []

    def put(path, data, mode):
        _write(path, data, mode)
        written.append(path)
        rows.append([os.path.relpath(path, site), _record_hash(data), str(len(data))])

    for path, body in scripts:
        put(path, body, 0o755)
    for member, target, key, data in members:
        executable = bool((member.external_attr >> 16) & stat.S_IXUSR)
        if key == 'scripts':
            if data.startswith(b'#!python'):
                data = b'#!' + python.encode('utf-8') + data[len(b'#!python'):]
            executable = True
        put(target, data, 0o755 if executable else 0o644)
        if target.endswith('.py') and key in ('root', 'purelib', 'platlib'):
            sources.append(target)
    # compiled as pip compiles them, where this interpreter's bytecode is the virtualenv's
    if info.get('magic') == importlib.util.MAGIC_NUMBER.hex():
        for source in sources:
            try:
                cached = py_compile.compile(source, doraise=True)
            except py_compile.PyCompileError:
                continue  # pip also installs a module it cannot compile; Python reports it when imported
            written.append(cached)
            rows.append([os.path.relpath(cached, site), '', ''])  # as pip records them: no hash
    info_dir = os.path.join(site, wheel['dist_info'])
    put(os.path.join(info_dir, 'INSTALLER'), b'gpuvirt.fleet\n', 0o644)
    put(os.path.join(info_dir, 'REQUESTED'), b'', 0o644)  # every wheel installed here is a requirement asked for
    rows.append([os.path.relpath(os.path.join(info_dir, 'RECORD'), site), '', ''])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerows(rows)
    _write(os.path.join(info_dir, 'RECORD'), buffer.getvalue().encode('utf-8'), 0o644)
    return written + [os.path.join(info_dir, 'RECORD')]


def _entry_points(text: str) -> list[tuple[str, str]]:
    out, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(('#', ';')):
            continue
        if line.startswith('[') and line.endswith(']'):
            section = line[1:-1].strip()
            continue
        if section in ('console_scripts', 'gui_scripts') and '=' in line:
            name, _sep, target = line.partition('=')
            out.append((name.strip(), target.strip()))
    return out


def converge(run: Runner, venv: str, python: str, system_site_packages: bool, wheel_dir: str,
             requirements: Sequence[str], write: bool) -> dict:
    """Create the virtualenv (without pip) where it has no bin/python, and install the pinned requirements from the
    wheel directory where they are not installed at their version. Returns {'venv_created', 'installed' (name==version
    of each wheel installed, or in check mode to install), 'removed' (name==version replaced), 'pip_needed' (why pip
    must do it; nothing was installed)}."""
    result = {'venv_created': False, 'installed': [], 'removed': [], 'pip_needed': ''}
    venv_python = os.path.join(venv, 'bin', 'python')
    if not os.path.exists(venv_python):
        result['venv_created'] = True
        if not write:
            result['installed'] = [r.strip() for r in requirements]
            return result
        argv = [python, '-m', 'venv', '--without-pip'] + (['--system-site-packages'] if system_site_packages else []) + [venv]
        rc, out, err = run(argv)
        if rc != 0:
            raise WheelError('%s failed (rc=%d): %s' % (' '.join(argv), rc, (err or out).strip()[:300]))
    info = probe(run, venv_python)
    site = info['paths']['purelib']
    records = installed_records(site)
    if info['paths']['platlib'] != site:
        records.update(installed_records(info['paths']['platlib']))
    installed = {name: metadata_name_version(os.path.join(dist_info, 'METADATA'))[1] or '' for name, dist_info in records.items()}
    decided = plan(wheel_dir, requirements, info, installed)
    if decided['reason']:
        result['pip_needed'] = decided['reason']
        return result
    for wheel in decided['wheels']:
        result['installed'].append('%s==%s' % (wheel['name'], wheel['version']))
        old = records.get(normalize(wheel['name']))
        if old:
            result['removed'].append('%s==%s' % (wheel['name'], installed[normalize(wheel['name'])]))
        if not write:
            continue
        if old:
            uninstall(old, venv)
        install(wheel, info)
    return result
