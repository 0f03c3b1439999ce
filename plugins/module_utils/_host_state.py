# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One observation of what a role installed on a host, and the files of it written in the same call (host_state).

A role declares what it leaves on a host (files with their content or checksum, directories, absent files, systemd
units enabled or running, a system account, the pinned packages of a virtualenv) and learns in one call whether all
of it is as declared. Each difference is one line naming the item, so a rerun on an unchanged host can skip the
role's install and configure steps, and any drift sends it back through them. Files given with their content are
written where they differ (the only change this makes); everything else is observed only.
Standard library only: the module runs it on the host.
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import glob
import grp
import hashlib
import os
import pwd
import re
import shlex
import shutil
import stat
import tempfile
from typing import Any, Callable, Mapping, Optional, Sequence

FILE_STATES = ('file', 'directory', 'absent', 'present')


class HostStateError(Exception):
    """A declaration that cannot be observed (bad entry): names the entry."""


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # nosec - the checksum Ansible's copy and stat use, not a security control


def _sha1_file(path: str) -> str:
    digest = hashlib.sha1()  # nosec - as above
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(65536), b''):
            digest.update(block)
    return digest.hexdigest()


def _owner_ids(entry: Mapping[str, Any]) -> tuple[Optional[int], Optional[int], list[str]]:
    """The uid and gid the entry asks for (None: not asked), and what cannot be resolved."""
    missing, uid, gid = [], None, None
    if entry.get('owner'):
        try:
            uid = pwd.getpwnam(entry['owner']).pw_uid
        except KeyError:
            missing.append('%s: owner %s does not exist' % (entry['path'], entry['owner']))
    if entry.get('group'):
        try:
            gid = grp.getgrnam(entry['group']).gr_gid
        except KeyError:
            missing.append('%s: group %s does not exist' % (entry['path'], entry['group']))
    return uid, gid, missing


def check_entries(files: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a bad file entry before anything is read or written, naming it."""
    for index, entry in enumerate(files):
        where = 'files[%d] (%s)' % (index, entry.get('path'))
        if not entry.get('path') or not os.path.isabs(entry['path']):
            raise HostStateError('%s: path must be absolute' % where)
        if entry.get('state', 'file') not in FILE_STATES:
            raise HostStateError('%s: state must be one of %s' % (where, ', '.join(FILE_STATES)))
        given = [k for k in ('content', 'content_base64', 'checksum') if entry.get(k) is not None and (k != 'checksum' or entry[k])]
        if len(given) > 1:
            raise HostStateError('%s: give one of content, content_base64 and checksum, not %s' % (where, ' and '.join(given)))
        if entry.get('state', 'file') != 'file' and given:
            raise HostStateError('%s: content, content_base64 and checksum are for state=file only' % where)
        if entry.get('validate') and '%s' not in entry['validate']:
            raise HostStateError('%s: validate must contain %%s (the file to check), not %r' % (where, entry['validate']))
        if entry.get('validate') and entry.get('state', 'file') != 'file':
            raise HostStateError('%s: validate is for state=file only' % where)
        if entry.get('prune') and entry.get('state', 'file') != 'directory':
            raise HostStateError('%s: prune is for state=directory only' % where)
        if entry.get('prune') and ('/' in entry['prune'] or entry['prune'] in ('.', '..')):
            raise HostStateError('%s: prune is a file name pattern such as *.py, not %r' % (where, entry['prune']))
        if entry.get('content_base64') is not None:
            try:
                base64.b64decode(entry['content_base64'], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise HostStateError('%s: content_base64 is not base64 (%s)' % (where, exc)) from exc
        mode = entry.get('mode')
        if mode is not None and not re.fullmatch(r'0?[0-7]{3,4}', str(mode)):
            raise HostStateError('%s: mode must be octal digits such as 0644, not %r' % (where, mode))


def _attribute_differences(entry: Mapping[str, Any], info: os.stat_result, uid, gid) -> list[str]:
    out = []
    if uid is not None and info.st_uid != uid:
        out.append('%s: owner is uid %d, not %s' % (entry['path'], info.st_uid, entry['owner']))
    if gid is not None and info.st_gid != gid:
        out.append('%s: group is gid %d, not %s' % (entry['path'], info.st_gid, entry['group']))
    if entry.get('mode') is not None and stat.S_IMODE(info.st_mode) != int(str(entry['mode']), 8):
        out.append('%s: mode is %04o, not %s' % (entry['path'], stat.S_IMODE(info.st_mode), entry['mode']))
    return out


def validator(entry: Mapping[str, Any]) -> Optional[list[str]]:
    """The entry's validate command as argv with %s still in it; None where there is none, or where it is optional
    and its program is not installed."""
    command = entry.get('validate')
    if not command:
        return None
    argv = shlex.split(command)
    program = argv[0] if argv else ''
    installed = os.access(program, os.X_OK) if os.path.isabs(program) else shutil.which(program) is not None
    if not installed:
        if entry.get('validate_optional'):
            return None
        raise HostStateError('%s: validate program %s is not installed' % (entry['path'], program))
    return argv


def _write_file(entry: Mapping[str, Any], data: bytes, uid, gid, run=None) -> None:
    """Replace the file atomically (a temporary file beside it), with its owner and mode set before it appears; with
    a validate command, only where that command accepts the temporary file (as Ansible's validate)."""
    directory = os.path.dirname(entry['path'])
    argv = validator(entry)
    fd, tmp = tempfile.mkstemp(prefix='.host_state-', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
        os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(tmp, int(str(entry.get('mode') or '0644'), 8))
        if argv is not None:
            if run is None:
                raise HostStateError('%s: cannot validate without a command runner' % entry['path'])
            rc, out, err = run([a.replace('%s', tmp) for a in argv])
            if rc != 0:
                raise HostStateError('%s: not written, %s refused it (rc=%d): %s' % (
                    entry['path'], entry['validate'].replace('%s', entry['path']), rc, (err or out).strip()[-1500:]))
        os.replace(tmp, entry['path'])
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fix_attributes(entry: Mapping[str, Any], uid, gid) -> None:
    os.chown(entry['path'], -1 if uid is None else uid, -1 if gid is None else gid)
    if entry.get('mode') is not None:
        os.chmod(entry['path'], int(str(entry['mode']), 8))


def converge_file(entry: Mapping[str, Any], write: bool, run=None) -> tuple[list[str], bool]:
    """The differences of one file entry (before any write) and whether it was (or, with write false, would be)
    fixed here. Only entries with content, directories and absent files can be fixed; the rest are observed."""
    path, state = entry['path'], entry.get('state', 'file')
    uid, gid, missing = _owner_ids(entry)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    if state == 'absent':
        if info is None:
            return [], False
        if stat.S_ISDIR(info.st_mode):
            return ['%s: is a directory, should be absent (not removed)' % path], False
        if write:
            os.unlink(path)
        return ['%s: exists, should be absent' % path], True
    if state == 'present':
        return (['%s: does not exist' % path] if info is None else []), False
    if missing:
        return missing, False
    if state == 'directory':
        if info is not None and not stat.S_ISDIR(info.st_mode):
            return ['%s: is not a directory' % path], False
        diffs = ['%s: directory does not exist' % path] if info is None else _attribute_differences(entry, info, uid, gid)
        if diffs and write:
            if info is None:
                os.makedirs(path, mode=int(str(entry.get('mode') or '0755'), 8), exist_ok=True)
            _fix_attributes(entry, uid, gid)
        return diffs, bool(diffs)
    content = entry.get('content')
    data = None if content is None else content.encode('utf-8')
    if entry.get('content_base64') is not None:
        data = base64.b64decode(entry['content_base64'])
    wanted = sha1_bytes(data) if data is not None else entry.get('checksum')
    if info is not None and not stat.S_ISREG(info.st_mode):
        return ['%s: is not a regular file' % path], False
    if info is None:
        diffs = ['%s: does not exist' % path]
    else:
        diffs = ['%s: content differs' % path] if wanted and _sha1_file(path) != wanted else []
        diffs += _attribute_differences(entry, info, uid, gid)
    if not diffs:
        return [], False
    if data is None:
        return diffs, False
    if write:
        if info is None or wanted != _sha1_file(path):
            _write_file(entry, data, uid, gid, run)
        else:
            _fix_attributes(entry, uid, gid)
    return diffs, True


def prune_differences(files: Sequence[Mapping[str, Any]], write: bool) -> tuple[list[str], list[str]]:
    """The files directly in each directory entry with a prune pattern that match it and that no entry declares:
    their differences and the paths removed (with write; without, to remove). Only regular files are removed."""
    declared = {os.path.normpath(e['path']) for e in files}
    differences, removed = [], []
    for entry in files:
        pattern = entry.get('prune')
        if not pattern or entry.get('state') != 'directory':
            continue
        try:
            names = sorted(os.listdir(entry['path']))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(entry['path'], name)
            if not fnmatch.fnmatchcase(name, pattern) or os.path.normpath(path) in declared:
                continue
            if not stat.S_ISREG(os.lstat(path).st_mode):
                differences.append('%s: not declared (matches %s), not a regular file (not removed)' % (path, pattern))
                continue
            differences.append('%s: not declared (matches %s)' % (path, pattern))
            if write:
                os.unlink(path)
            removed.append(path)
    return differences, removed


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show --property=Id,...` of several units: unit id -> its properties (blocks apart by blank lines)."""
    units, block = {}, {}
    for line in text.splitlines() + ['']:
        if not line.strip():
            if block.get('Id'):
                units[block['Id']] = block
            block = {}
            continue
        key, value = line.split('=', 1) if '=' in line else (line, '')
        block[key] = value
    return units


def unit_differences(wanted: Sequence[Mapping[str, Any]], shown: Mapping[str, Mapping[str, str]]) -> list[str]:
    out = []
    for unit in wanted:
        name = unit['name'] if '.' in unit['name'] else unit['name'] + '.service'
        props = shown.get(name)
        if props is None or props.get('LoadState') != 'loaded':
            out.append('unit %s: not loaded (%s)' % (name, (props or {}).get('LoadState', 'unknown')))
            continue
        if props.get('NeedDaemonReload') == 'yes':
            out.append('unit %s: its file changed on disk since systemd loaded it' % name)
        if unit.get('enabled') is not None and (props.get('UnitFileState') == 'enabled') != unit['enabled']:
            out.append('unit %s: %s, not %s' % (name, props.get('UnitFileState'), 'enabled' if unit['enabled'] else 'disabled'))
        if unit.get('active') is not None and (props.get('ActiveState') == 'active') != unit['active']:
            out.append('unit %s: %s, not %s' % (name, props.get('ActiveState'), 'active' if unit['active'] else 'inactive'))
    return out


def unit_name(name: str) -> str:
    return name if '.' in name else name + '.service'


def converge_units(units: Sequence[Mapping[str, Any]], shown: Mapping[str, Mapping[str, str]], written: Sequence[str],
                   changed: bool, write: bool, systemctl: Callable[[list[str]], tuple[int, str, str]]) -> list[str]:
    """Bring the units to their declared state after the call's files are written: systemd reloaded once where a
    unit's file was written here or changed on disk since it was loaded (by the enable where one is enabled), units
    enabled or disabled, started, stopped, or restarted where active and their `restart` asks for it (`always`, or
    `on_change` where this call changed anything). `shown` is `systemctl show` of the units, read after the files were
    written. The actions, one line each (without write: those it would take)."""
    names = [unit_name(u['name']) for u in units]
    written_names = {os.path.basename(p) for p in written}
    reload = any(n in written_names or shown.get(n, {}).get('NeedDaemonReload') == 'yes' or shown.get(n, {}).get('LoadState') != 'loaded'
                 for n in names)
    steps = []
    for unit, name in zip(units, names):
        props = shown.get(name, {})
        if unit.get('enabled') is not None and (props.get('UnitFileState') == 'enabled') != unit['enabled']:
            steps.append(['enable' if unit['enabled'] else 'disable', name])
    if reload and not any(step[0] in ('enable', 'disable') for step in steps):
        steps.insert(0, ['daemon-reload'])  # an enable or disable reloads systemd itself
    for unit, name in zip(units, names):
        active = shown.get(name, {}).get('ActiveState') == 'active'
        if unit.get('active') is True and not active:
            steps.append(['start', name])
        elif unit.get('active') is True and (unit.get('restart') == 'always' or (unit.get('restart') == 'on_change' and changed)):
            steps.append(['restart', name])
        elif unit.get('active') is False and active:
            steps.append(['stop', name])
    done = []
    for step in steps:
        if write:
            rc, out, err = systemctl(step)
            if rc != 0:
                raise HostStateError('systemctl %s failed (rc=%d): %s' % (' '.join(step), rc, (err or out).strip()[:500]))
        done.append(' '.join(step))
    return done


def group_differences(names: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            out.append('group %s: does not exist' % name)
    return out


def user_differences(users: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for user in users:
        try:
            entry = pwd.getpwnam(user['name'])
        except KeyError:
            out.append('user %s: does not exist' % user['name'])
            continue
        try:
            primary = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            primary = str(entry.pw_gid)
        if user.get('group') and primary != user['group']:
            out.append('user %s: primary group %s, not %s' % (user['name'], primary, user['group']))
        for name in user.get('groups') or []:
            try:
                members = grp.getgrnam(name).gr_mem
            except KeyError:
                out.append('user %s: group %s does not exist' % (user['name'], name))
                continue
            if user['name'] not in members and primary != name:
                out.append('user %s: not in group %s' % (user['name'], name))
        if user.get('shell') and entry.pw_shell != user['shell']:
            out.append('user %s: shell %s, not %s' % (user['name'], entry.pw_shell, user['shell']))
        if user.get('home') and entry.pw_dir != user['home']:
            out.append('user %s: home %s, not %s' % (user['name'], entry.pw_dir, user['home']))
    return out


ACCOUNT_PATH = os.pathsep.join(['/usr/sbin', '/sbin', '/usr/bin', '/bin'])


def _account_tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get('PATH', '') + os.pathsep + ACCOUNT_PATH)
    if not found:
        raise HostStateError('%s not found: accounts cannot be created here' % name)
    return found


def converge_accounts(groups: Sequence[str], users: Sequence[Mapping[str, Any]], run: Callable[[list[str]], tuple[int, str, str]]) -> list[str]:
    """Create the missing groups (system groups) and users (system accounts; no home directory is created), and
    bring an existing user's primary group, shell and home to the declaration and add the supplementary groups it
    lacks (none is removed), with groupadd, useradd and usermod. The accounts changed, one line each."""
    done = []

    def call(argv, what):
        rc, out, err = run(argv)
        if rc != 0:
            raise HostStateError('%s failed (rc=%d): %s' % (what, rc, (err or out).strip()[:300]))
        done.append(what)

    for name in groups:
        if group_differences([name]):
            call([_account_tool('groupadd'), '--system', name], 'group %s created' % name)
    for user in users:
        wanted = list(user.get('groups') or [])
        for name in wanted + ([user['group']] if user.get('group') else []):
            if group_differences([name]):
                raise HostStateError('user %s: group %s does not exist (list it in groups to create it)' % (user['name'], name))
        try:
            entry = pwd.getpwnam(user['name'])
        except KeyError:
            argv = [_account_tool('useradd'), '--system', '--no-create-home']
            argv += ['--gid', user['group']] if user.get('group') else []
            argv += ['--groups', ','.join(wanted)] if wanted else []
            argv += ['--shell', user['shell']] if user.get('shell') else []
            argv += ['--home-dir', user['home']] if user.get('home') else []
            call(argv + [user['name']], 'user %s created' % user['name'])
            continue
        argv = []
        if user.get('group') and grp.getgrgid(entry.pw_gid).gr_name != user['group']:
            argv += ['--gid', user['group']]
        if user.get('shell') and entry.pw_shell != user['shell']:
            argv += ['--shell', user['shell']]
        if user.get('home') and entry.pw_dir != user['home']:
            argv += ['--home', user['home']]
        missing = [g for g in wanted if user['name'] not in grp.getgrnam(g).gr_mem and grp.getgrnam(g).gr_gid != entry.pw_gid]
        if missing:
            argv += ['--append', '--groups', ','.join(missing)]
        if argv:
            call([_account_tool('usermod')] + argv + [user['name']], 'user %s changed' % user['name'])
    return done


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r'[-_.]+', '-', name).lower()


# A requirement pinned with == (name, version): the only kind that can be proven met by looking.
PINNED = re.compile(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*')


def metadata_name_version(path: str) -> tuple[Optional[str], Optional[str]]:
    """The Name and Version of a .dist-info METADATA file (its headers only); None where missing or unreadable."""
    name = version = None
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            for line in handle:
                if not line.strip():
                    break
                if line.startswith('Name:'):
                    name = line.split(':', 1)[1].strip()
                elif line.startswith('Version:'):
                    version = line.split(':', 1)[1].strip()
    except OSError:
        pass
    return name, version


def installed_distributions(venv: str) -> dict[str, str]:
    """normalized name -> version of every distribution in the virtualenv's site-packages (its .dist-info METADATA)."""
    found = {}
    for meta in glob.glob(os.path.join(venv, 'lib', 'python3*', 'site-packages', '*.dist-info', 'METADATA')):
        name, version = metadata_name_version(meta)
        if name and version:
            found[normalize(name)] = version
    return found


def package_differences(venv: str, requirements: Sequence[str]) -> list[str]:
    """What keeps the pinned requirements (name==version) from being what the virtualenv holds. A requirement that is
    not pinned with == cannot be proven met by looking, so it counts as a difference (the role then runs pip)."""
    if not os.path.exists(os.path.join(venv, 'bin', 'python')):
        return ['virtualenv %s: no bin/python' % venv]
    installed = installed_distributions(venv)
    out = []
    for requirement in requirements:
        match = PINNED.fullmatch(requirement)
        if not match:
            out.append('virtualenv %s: requirement %r is not pinned with ==, so it is not proven met' % (venv, requirement))
            continue
        have = installed.get(normalize(match.group(1)))
        if have != match.group(2):
            out.append('virtualenv %s: %s is %s, not %s' % (venv, match.group(1), have or 'not installed', match.group(2)))
    return out


# The argument spec of the file and unit entries (host_state's files and units, mig_layout's observe).
FILE_OPTIONS = {
    'path': {'type': 'path', 'required': True},
    'state': {'type': 'str', 'default': 'file', 'choices': list(FILE_STATES)},
    'content': {'type': 'str', 'no_log': True},
    'content_base64': {'type': 'str', 'no_log': True},
    'checksum': {'type': 'str'},
    'owner': {'type': 'str'},
    'group': {'type': 'str'},
    'mode': {'type': 'str'},
    'prune': {'type': 'str'},
}
# host_state's files, which it writes: a file may be checked by a command before it replaces the old one.
WRITE_FILE_OPTIONS = dict(FILE_OPTIONS, validate={'type': 'str'}, validate_optional={'type': 'bool', 'default': False})
UNIT_OPTIONS = {
    'name': {'type': 'str', 'required': True},
    'enabled': {'type': 'bool'},
    'active': {'type': 'bool'},
}
# host_state's units, which it brings to their state with write_units.
WRITE_UNIT_OPTIONS = dict(UNIT_OPTIONS, restart={'type': 'str', 'default': 'never', 'choices': ['never', 'on_change', 'always']})


# The observe option of mig_layout, vgpu_devices and gpu_settings (doc fragment gpuvirt.fleet.observe).
OBSERVE_OPTION = {'type': 'dict', 'options': {
    'files': {'type': 'list', 'elements': 'dict', 'default': [], 'options': FILE_OPTIONS},
    'units': {'type': 'list', 'elements': 'dict', 'default': [], 'options': UNIT_OPTIONS},
    'running': {'type': 'list', 'elements': 'str', 'default': []},
}}


def observe_option(module) -> Optional[dict]:
    """The module's `observe` option read: {in_place, differences} of those files and units, written never (None
    without the option); an entry it cannot observe fails the task naming it."""
    request = module.params.get('observe')
    if request is None:
        return None
    try:
        found = observe(request, False, systemctl_runner(module))
    except HostStateError as exc:
        module.fail_json(msg='observe: %s' % exc)
    observed = {'in_place': found['in_place'], 'differences': found['differences']}
    if request.get('running'):
        observed['running'] = found['running']
    return observed


def systemctl_runner(module) -> Callable[[list[str]], tuple[int, str, str]]:
    """observe's `systemctl` for an AnsibleModule: systemctl from PATH, in the C locale (rc 127 where there is none)."""
    systemctl = module.get_bin_path('systemctl')

    def run(argv):
        if systemctl is None:
            return 127, '', 'systemctl not found'
        return module.run_command([systemctl] + argv, environ_update={'LC_ALL': 'C'})
    return run


def observe(params: Mapping[str, Any], write: bool, systemctl: Callable[[list[str]], tuple[int, str, str]],
            run: Optional[Callable[[list[str]], tuple[int, str, str]]] = None) -> dict:
    """The whole observation: differences (before any write), the files written (or, without write, to write),
    and in_place (nothing differed). `systemctl(argv)` runs systemctl (rc, stdout, stderr). With write_accounts,
    `run(argv)` runs groupadd, useradd and usermod first (the result's `accounts` says what they changed, or without
    write, what differs)."""
    files = params.get('files') or []
    check_entries(files)
    differences, written = [], []
    result = {}
    # the accounts first: the files may be owned by them
    account_differences = group_differences(params.get('groups') or []) + user_differences(params.get('users') or [])
    if params.get('write_accounts') and account_differences:
        if write:
            if run is None:
                raise HostStateError('accounts cannot be created without a command runner')
            result['accounts'] = converge_accounts(params.get('groups') or [], params.get('users') or [], run)
        else:
            result['accounts'] = account_differences
    for entry in files:
        diffs, fixed = converge_file(entry, write, run)
        differences += diffs
        if fixed:
            written.append(entry['path'])
    pruned, removed = prune_differences(files, write)
    differences += pruned
    written += removed
    differences += account_differences
    units = params.get('units') or []
    running = params.get('running') or []
    if units or running:
        names = [u['name'] if '.' in u['name'] else u['name'] + '.service' for u in units]
        candidates = [n if '.' in n else n + '.service' for n in running]
        rc, out, err = systemctl(['show', '--property=Id,LoadState,UnitFileState,ActiveState,SubState,NeedDaemonReload', '--']
                                 + list(dict.fromkeys(names + candidates)))
        if rc != 0:
            differences.append('systemctl show failed (rc=%d): %s' % (rc, (err or out).strip()[:200]))
            shown = None
        else:
            shown = parse_systemctl_show(out)
            differences += unit_differences(units, shown)
        result['shown'] = shown
        if running:
            # None: not known (no systemd answer), for the caller to find out otherwise
            result['running'] = None if shown is None else [
                given for given, name in zip(running, candidates) if shown.get(name, {}).get('SubState') == 'running']
    venv = params.get('python_packages')
    if venv:
        differences += package_differences(venv['venv'], venv.get('requirements') or [])
    result.update({'differences': differences, 'written': written, 'in_place': not differences})
    return result
