# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure driver planner: whitelist, policy, package names and the ordered install plan.

Nothing here runs a command or reads a file. ``_driver_apply`` observes the host through the seams ``_packages``
(apt, dpkg, the pin file), ``_services`` (systemctl, modprobe, /proc/modules) and ``_sysfs``
(/proc/driver/nvidia/version), calls these functions, and applies the steps they return.

Whitelist (inventory ``driver_whitelist``), a list whose entries are a version or a branch with its versions::

    - 580.95.05
    - branch: '570'
      versions: [570.195.03]

Desired: an exact ``version`` (must be whitelisted) or a ``branch`` (the newest whitelisted version of the
branch that the repository offers). Anything else is refused before any change, naming the entry.
"""

from __future__ import annotations

import copy
import re

FLAVORS = ('open', 'proprietary')
SOURCES = ('cuda', 'canonical')
KERNEL_MODULES = ('dkms', 'precompiled')
# Kernel modules of the driver in unload order (users first); nvidia is the one every other needs.
MODULES_UNLOAD_ORDER = ('nvidia_uvm', 'nvidia_drm', 'nvidia_modeset', 'nvidia_peermem', 'nvidia')
MODULES_LOAD = ('nvidia', 'nvidia_uvm', 'nvidia_modeset')
# The CUDA repository dropped the branch suffix from its meta packages with this branch.
SUFFIXLESS_FROM_BRANCH = 590
PREFERENCES_FILE = '/etc/apt/preferences.d/gpuvirt-nvidia-driver.pref'
# Packages that belong to the driver: pinned, held, and taken into account when rolling back.
_DRIVER_PACKAGE_RE = re.compile(
    r'^(?:cuda-drivers(?:-\d+)?|nvidia-.*|libnvidia-.*|libcuda1|libcuda-.*|linux-modules-nvidia-.*|xserver-xorg-video-nvidia.*|nvlsm)$')
# Packages whose version is not the driver's (kernel-versioned, or tools released on their own).
_NOT_DRIVER_VERSIONED_RE = re.compile(r'^(?:linux-modules-nvidia-.*|nvidia-driver-pinning-.*|nvidia-modprobe|nvidia-settings|nvlsm)$')
_VERSION_RE = re.compile(r'^([0-9]{3})(?:\.([0-9]+)){1,2}$')  # ASCII digits only: int() reads other digits too


class DriverError(ValueError):
    """A declaration or a host that cannot be served; the message names the offending entry."""


# ---- versions ----------------------------------------------------------------------------
def check_version(version, where: str = 'version') -> str:
    text = str(version).strip()
    if not _VERSION_RE.match(text):
        raise DriverError('%s %r: expected a driver version such as 580.95.05' % (where, version))
    return text


def version_key(version: str) -> tuple:
    return tuple(int(part) for part in str(version).split('.'))


def branch_of(version: str) -> str:
    return str(version).split('.', 1)[0]


def upstream(deb_version: str) -> str:
    """The driver version inside a package version: '580.95.05-0ubuntu1' -> '580.95.05', '1:580.95.05-1' likewise."""
    text = deb_version.split(':', 1)[-1]
    return text.rsplit('-', 1)[0] if '-' in text else text


def at_least(version: str, floor: str | None) -> bool:
    """'525' as a floor means any 525.x; '570.133.20' means that version or newer."""
    if not floor:
        return True
    have, need = version_key(version), version_key(floor)
    return have[:len(need)] >= need


# ---- whitelist and desired version ---------------------------------------------------------
def normalize_whitelist(entries) -> dict:
    """Whitelist entries -> {branch: sorted versions}. A malformed entry is an error naming it (counting from 1)."""
    if not isinstance(entries, (list, tuple)):
        raise DriverError('whitelist: expected a list of versions or {branch, versions} entries')
    result: dict[str, set] = {}
    for number, entry in enumerate(entries, 1):
        where = 'whitelist entry %d' % number
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {'branch', 'versions'})
            if unknown:
                raise DriverError('%s: unknown key(s) %s (expected branch and versions)' % (where, ', '.join(unknown)))
            branch = str(entry.get('branch', '')).strip()
            if not re.match(r'^[0-9]{3}$', branch):
                raise DriverError('%s: branch %r: expected a branch number such as 580' % (where, entry.get('branch')))
            versions = entry.get('versions')
            if not isinstance(versions, (list, tuple)) or not versions:
                raise DriverError('%s (branch %s): versions must be a non-empty list of allowed versions' % (where, branch))
            for version in versions:
                version = check_version(version, '%s (branch %s): version' % (where, branch))
                if branch_of(version) != branch:
                    raise DriverError('%s: version %s is not of branch %s' % (where, version, branch))
                result.setdefault(branch, set()).add(version)
        else:
            version = check_version(entry, where)
            result.setdefault(branch_of(version), set()).add(version)
    return {branch: sorted(versions, key=version_key) for branch, versions in result.items()}


def whitelisted(whitelist: dict) -> list[str]:
    return sorted((v for versions in whitelist.values() for v in versions), key=version_key)


def resolve_version(whitelist_entries, version=None, branch=None, available=None) -> str:
    """The version to install, or DriverError. ``available``: driver versions the repository offers (None = unknown)."""
    whitelist = normalize_whitelist(whitelist_entries)
    if (version is None) == (branch is None):
        raise DriverError('give exactly one of version (exact) or branch')
    allowed = whitelisted(whitelist)
    if version is not None:
        version = check_version(version)
        if version not in allowed:
            raise DriverError('driver version %s is not whitelisted (whitelisted: %s)' % (version, ', '.join(allowed) or 'none'))
        if available is not None and version not in available:
            raise DriverError('driver version %s is whitelisted but the package repository does not offer it (offered: %s)'
                              % (version, ', '.join(sorted(available, key=version_key)) or 'none'))
        return version
    branch = str(branch).strip()
    if branch not in whitelist:
        raise DriverError('driver branch %s is not whitelisted (whitelisted branches: %s)' % (branch, ', '.join(sorted(whitelist)) or 'none'))
    candidates = [v for v in whitelist[branch] if available is None or v in available]
    if not candidates:
        raise DriverError('no whitelisted version of branch %s (%s) is offered by the package repository'
                          % (branch, ', '.join(whitelist[branch])))
    return candidates[-1]


# ---- policy: architectures, flavours, floors and ceilings ------------------------------------
def merge_policy(base: dict, overrides: dict | None) -> dict:
    """Overrides replace keys of an entry (architecture or model), leaving the entry's other keys."""
    merged = copy.deepcopy(base)
    if overrides is not None and not isinstance(overrides, dict):
        raise DriverError('policy: expected a mapping, got %s' % type(overrides).__name__)
    for section in ('architectures', 'models'):
        entries = (overrides or {}).get(section) or {}
        if not isinstance(entries, dict):
            raise DriverError('policy %s: expected a mapping, got %s' % (section, type(entries).__name__))
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise DriverError('policy %s.%s: expected a mapping' % (section, name))
            merged.setdefault(section, {}).setdefault(name, {}).update(entry)
    return merged


def normalize_gpus(gpus) -> list[dict]:
    """GPU facts (gpuvirt.fleet.gpu_facts) or architecture names -> [{index, name, architecture}]."""
    result = []
    if gpus is not None and not isinstance(gpus, (list, tuple)):
        raise DriverError('gpus: expected a list of architecture names or GPU facts, got %s' % type(gpus).__name__)
    for number, gpu in enumerate(gpus or []):
        if isinstance(gpu, str):
            gpu = {'architecture': gpu}
        if not isinstance(gpu, dict) or not gpu.get('architecture'):
            raise DriverError('gpus entry %d: expected an architecture name or a GPU fact with an architecture' % (number + 1))
        if gpu.get('status') == 'lost':
            continue
        result.append({'index': gpu.get('index', number), 'name': gpu.get('name') or '', 'architecture': str(gpu['architecture']).lower()})
    return result


def _describe(gpu: dict) -> str:
    if gpu['name']:
        return 'GPU %s (%s, %s)' % (gpu['index'], gpu['name'], gpu['architecture'])
    return 'GPU %s (%s)' % (gpu['index'], gpu['architecture'])


def gpu_rules(gpu: dict, policy: dict) -> dict:
    arch = (policy.get('architectures') or {}).get(gpu['architecture'])
    if arch is None:
        raise DriverError('%s: the driver policy has no entry for architecture %r; add one (driver_policy)' % (_describe(gpu), gpu['architecture']))
    rules = dict(arch)
    matches = [key for key in (policy.get('models') or {}) if key.lower() in gpu['name'].lower()]
    if matches:
        rules.update(policy['models'][max(matches, key=len)])
    return rules


def choose_flavor(gpus: list[dict], requested: str, policy: dict) -> str:
    """open or proprietary for these GPUs; ``requested`` auto, open or proprietary. A conflict names the GPU."""
    if requested not in ('auto',) + FLAVORS:
        raise DriverError('flavor %r: expected auto, open or proprietary' % requested)
    if not gpus:
        if requested == 'auto':
            raise DriverError('flavor auto needs the GPUs of the host (none found: is the driver loaded?); '
                              'set flavor, or give the GPU architectures (driver_gpus)')
        return requested
    rules = [(gpu, gpu_rules(gpu, policy)) for gpu in gpus]
    allowed = set(FLAVORS)
    for gpu, rule in rules:
        allowed &= set(rule.get('flavors') or FLAVORS)
    if requested != 'auto':
        for gpu, rule in rules:
            if requested not in (rule.get('flavors') or FLAVORS):
                raise DriverError('flavor %s cannot drive %s: it needs %s kernel modules'
                                  % (requested, _describe(gpu), ' or '.join(rule.get('flavors'))))
        return requested
    if not allowed:
        needs = sorted({'%s: %s' % (_describe(g), '/'.join(r['flavors'])) for g, r in rules})
        raise DriverError('no kernel-module flavour drives every GPU of this host (%s)' % '; '.join(needs))
    if 'open' in allowed and all(r.get('recommended', 'open') == 'open' for _g, r in rules):
        return 'open'
    return 'proprietary' if 'proprietary' in allowed else 'open'


def check_supports(version: str, gpus: list[dict], policy: dict) -> None:
    """A whitelisted version that cannot drive a GPU present is an error naming the GPU and the limit."""
    for gpu in gpus:
        rule = gpu_rules(gpu, policy)
        if not at_least(version, rule.get('min_version')):
            raise DriverError('driver %s cannot drive %s: it needs %s or newer' % (version, _describe(gpu), rule['min_version']))
        ceiling = rule.get('max_branch')
        if ceiling is not None and int(branch_of(version)) > int(ceiling):
            raise DriverError('driver %s cannot drive %s: the last branch that supports it is %s' % (version, _describe(gpu), ceiling))


# ---- package names ---------------------------------------------------------------------------
def is_driver_package(name: str) -> bool:
    return bool(_DRIVER_PACKAGE_RE.match(name))


def package_names(version: str, flavor: str, source: str = 'cuda', nvswitch: bool = False, server: bool = True,
                  kernel_modules: str = 'dkms', kernel_flavour: str = 'generic', nvlink5: bool = False) -> list[dict]:
    """The packages to ask for, each {'name', 'version'}: 'driver' pins the driver version, None takes what comes.

    CUDA repository: ``nvidia-open-<branch>`` / ``cuda-drivers-<branch>`` up to 580; from 590 ``nvidia-open`` /
    ``cuda-drivers`` locked to a branch by ``nvidia-driver-pinning-<branch>`` (installed first).
    Canonical archive: ``nvidia-driver-<branch>[-server][-open]`` (DKMS), or precompiled modules
    ``linux-modules-nvidia-<branch>[-server][-open]-<kernel flavour>`` with ``nvidia-headless-no-dkms-...`` and utils.
    NVSwitch hosts add ``nvidia-fabricmanager-<branch>`` and ``libnvidia-nscq-<branch>`` at the driver version.
    """
    if flavor not in FLAVORS:
        raise DriverError('flavor %r: expected open or proprietary' % flavor)
    if source not in SOURCES:
        raise DriverError('source %r: expected one of %s' % (source, ', '.join(SOURCES)))
    if kernel_modules not in KERNEL_MODULES:
        raise DriverError('kernel_modules %r: expected dkms or precompiled' % kernel_modules)
    branch = branch_of(version)
    packages = []
    if source == 'cuda':
        if kernel_modules != 'dkms':
            raise DriverError('kernel_modules precompiled: the CUDA repository builds the modules with DKMS; use source canonical')
        meta = 'nvidia-open' if flavor == 'open' else 'cuda-drivers'
        if int(branch) >= SUFFIXLESS_FROM_BRANCH:
            packages.append({'name': 'nvidia-driver-pinning-%s' % branch, 'version': None})
            packages.append({'name': meta, 'version': 'driver'})
        else:
            packages.append({'name': '%s-%s' % (meta, branch), 'version': 'driver'})
    else:
        suffix = ('-server' if server else '') + ('-open' if flavor == 'open' else '')
        if kernel_modules == 'dkms':
            packages.append({'name': 'nvidia-driver-%s%s' % (branch, suffix), 'version': 'driver'})
        else:
            packages.append({'name': 'nvidia-headless-no-dkms-%s%s' % (branch, suffix), 'version': 'driver'})
            packages.append({'name': 'nvidia-utils-%s%s' % (branch, '-server' if server else ''), 'version': 'driver'})
            packages.append({'name': 'linux-modules-nvidia-%s%s-%s' % (branch, suffix, kernel_flavour), 'version': None})
    if nvswitch:
        fm_suffix = '' if source == 'cuda' and int(branch) >= SUFFIXLESS_FROM_BRANCH else '-' + branch
        packages.append({'name': 'nvidia-fabricmanager%s' % fm_suffix, 'version': 'driver'})
        packages.append({'name': 'libnvidia-nscq%s' % fm_suffix, 'version': 'driver'})
        if nvlink5:
            packages.append({'name': 'nvlsm', 'version': None})
    return packages


def fabric_manager_names(packages: list[dict]) -> list[str]:
    return [p['name'] for p in packages if p['name'].startswith(('nvidia-fabricmanager', 'libnvidia-nscq'))]


def apt_preferences(version: str) -> str:
    """apt preferences that make the driver version the only candidate (1001 also allows going down to it)."""
    return ('# Managed by gpuvirt.fleet (nvidia_driver): the NVIDIA driver stays at %(v)s; upgrades go through the whitelist.\n'
            'Package: cuda-drivers* nvidia-* libnvidia-* libcuda1 libcuda-* xserver-xorg-video-nvidia*\n'
            'Pin: version %(v)s-*\n'
            'Pin-Priority: 1001\n') % {'v': version}


def choose_deb_version(name: str, version: str, available: dict) -> str | None:
    """The package version (e.g. 580.95.05-1) of ``name`` that carries driver ``version``; None if not offered."""
    matches = [v for v in available.get(name, []) if upstream(v) == version]
    return sorted(matches)[-1] if matches else None


def _is_broken(info: dict) -> bool:
    """dpkg's state letter (second of db:Status-Abbrev): F half-configured, U unpacked, H half-installed, W/t triggers."""
    return (info.get('status') or 'ii')[1:2] in ('F', 'U', 'H', 'W', 't')


def carries_driver_version(name: str) -> bool:
    """A driver package whose version is the driver's (not kernel-versioned, not a separately released tool)."""
    return is_driver_package(name) and not _NOT_DRIVER_VERSIONED_RE.match(name)


def installed_driver_version(installed: dict) -> str | None:
    """The driver version the installed packages carry: one version, or None; several are 'mixed:a,b'."""
    versions = {upstream(info['version']) for name, info in installed.items() if info.get('installed') and carries_driver_version(name)}
    if not versions:
        return None
    if len(versions) == 1:
        return versions.pop()
    return 'mixed:' + ','.join(sorted(versions, key=version_key))


# ---- the plan ------------------------------------------------------------------------------
def plan(current: dict, desired: dict) -> dict:
    """Ordered steps that bring the host from ``current`` to ``desired``.

    current: ``installed`` {name: {version, installed (bool, fully configured), status}}, ``held`` [names],
    ``preferences`` (text of the pin file or None), ``loaded`` {loaded, version, flavor} (/proc),
    ``available`` {name: [package versions]}, ``active_clients`` [units running now].
    desired: ``version``, ``flavor``, ``packages`` (from package_names), ``reload`` (try to reload modules),
    ``clients`` [units to stop around the change].

    Returns {'steps', 'changed', 'install', 'remove', 'before', 'after', 'reboot_required', 'reason'}.
    """
    version = desired['version']
    installed = current.get('installed') or {}
    available = current.get('available') or {}
    install = {}
    for package in desired['packages']:
        name = package['name']
        have = installed.get(name) or {}
        if package['version'] == 'driver':
            wanted = choose_deb_version(name, version, available)
            if wanted is None:
                if have.get('installed') and upstream(have['version']) == version:
                    wanted = have['version']
                else:
                    raise DriverError('package %s at driver version %s is not offered by the package repository (offered: %s)'
                                      % (name, version, ', '.join(available.get(name, [])) or 'none'))
            if not (have.get('installed') and have['version'] == wanted):
                install[name] = wanted
        elif not have.get('installed'):
            install[name] = None
    wanted_names = {p['name'] for p in desired['packages']}
    # The meta packages depend with ">= version" and no upper bound: apt leaves an installed dependency that is newer
    # alone, so a downgrade (or a rollback) names every installed package that carries the driver version.
    for name, info in sorted(installed.items()):
        if name in install or name in wanted_names or not info.get('installed') or not carries_driver_version(name):
            continue
        if upstream(info['version']) != version:
            wanted = choose_deb_version(name, version, available)
            if wanted is not None:
                install[name] = wanted
    # Other meta packages of the driver (other branch or flavour) go in the same transaction; their dependencies
    # follow through apt's conflicts. Dependencies of the wanted meta packages are left to apt.
    remove = sorted(name for name, info in installed.items()
                    if info.get('installed') and name not in wanted_names and _other_meta(name, branch_of(version), desired['flavor']))
    # Half-installed driver packages (a failed maintainer script) are repaired by the same install.
    broken = sorted(name for name, info in installed.items() if is_driver_package(name) and _is_broken(info))
    preferences = apt_preferences(version)
    pin_needed = current.get('preferences') != preferences
    must_install = bool(install or remove or broken)
    to_hold = sorted(set(n for n, i in installed.items() if i.get('installed') and is_driver_package(n) and n not in remove)
                     | (wanted_names if install or remove or broken else set()))
    hold_needed = sorted(set(to_hold) - set(current.get('held') or []))
    steps = []
    clients = [u for u in desired.get('clients') or [] if u in (current.get('active_clients') or [])]
    loaded = current.get('loaded') or {}
    if must_install:
        if clients:
            steps.append({'action': 'stop_clients', 'units': clients})
        if desired.get('reload') and loaded.get('loaded'):
            steps.append({'action': 'unload_modules', 'modules': list(MODULES_UNLOAD_ORDER)})
        held_driver = sorted(n for n in current.get('held') or [] if is_driver_package(n))
        if held_driver:
            steps.append({'action': 'unhold', 'packages': held_driver})
    if pin_needed or must_install:
        # The pin comes before the install: it is what makes apt resolve the meta package's dependencies
        # (">= version", no upper bound) to the same driver version, downgrades included.
        steps.append({'action': 'pin', 'path': PREFERENCES_FILE, 'content': preferences})
    if must_install:
        steps.append({'action': 'install', 'packages': install, 'remove': remove, 'repair': broken})
    if must_install or hold_needed:
        steps.append({'action': 'hold', 'packages': to_hold if must_install else hold_needed})
    flavor = desired['flavor']
    reboot_required, reason = finish_steps(steps, must_install, desired, loaded, clients)
    before = {n: i['version'] for n, i in sorted(installed.items()) if i.get('installed') and is_driver_package(n)}
    after = {n: v for n, v in before.items() if n not in remove}
    for name, wanted in install.items():
        after[name] = wanted or 'latest'
    return {
        'version': version, 'flavor': flavor, 'steps': steps, 'changed': bool(steps), 'install': install, 'remove': remove,
        'before': before, 'after': dict(sorted(after.items())), 'reboot_required': reboot_required, 'reason': reason,
    }


_META_RE = re.compile(r'^(?P<kind>nvidia-open|cuda-drivers|nvidia-driver|nvidia-headless-no-dkms|nvidia-driver-pinning'
                      r'|nvidia-fabricmanager|libnvidia-nscq)(?:-(?P<branch>\d{3}))?(?P<server>-server)?(?P<open>-open)?$')


def _other_meta(name: str, branch: str, flavor: str) -> bool:
    """An installed meta package of another branch or flavour (removed in the same transaction)."""
    match = _META_RE.match(name)
    if not match or (match.group('kind') == 'nvidia-driver' and not match.group('branch')):
        return False
    if match.group('branch') and match.group('branch') != branch:
        return True
    kind = match.group('kind')
    if kind in ('nvidia-driver-pinning', 'nvidia-fabricmanager', 'libnvidia-nscq'):
        return False
    meta_flavor = 'open' if kind == 'nvidia-open' or match.group('open') else 'proprietary'
    return meta_flavor != flavor


def rollback_plan(before_installed: dict, before_held: list, before_preferences: str | None, after_installed: dict) -> list[dict]:
    """Steps that put the driver packages back as they were before a failed install."""
    restore = {n: i['version'] for n, i in before_installed.items() if i.get('installed') and is_driver_package(n)}
    extra = sorted(n for n, i in after_installed.items()
                   if is_driver_package(n) and i.get('status') not in (None, 'rc') and n not in restore)
    steps = [{'action': 'unhold', 'packages': sorted(n for n in after_installed if is_driver_package(n))}]
    if before_preferences is None:
        steps.append({'action': 'unpin', 'path': PREFERENCES_FILE})
    else:
        steps.append({'action': 'pin', 'path': PREFERENCES_FILE, 'content': before_preferences})
    steps.append({'action': 'install', 'packages': restore, 'remove': extra, 'repair': []})
    held = sorted(n for n in before_held if is_driver_package(n))
    if held:
        steps.append({'action': 'hold', 'packages': held})
    return steps


def verify(observed: dict, desired: dict, planned: dict) -> list[str]:
    """What is still wrong after apply: each package at its version, fabric manager at the driver version, holds."""
    problems = []
    installed = observed.get('installed') or {}
    version = desired['version']
    for package in desired['packages']:
        have = installed.get(package['name']) or {}
        if not have.get('installed'):
            problems.append('%s is not installed' % package['name'])
        elif package['version'] == 'driver' and upstream(have['version']) != version:
            problems.append('%s is at %s, not %s' % (package['name'], have['version'], version))
    for name in planned.get('remove') or []:
        if (installed.get(name) or {}).get('installed'):
            problems.append('%s is still installed' % name)
    for name, have in sorted(installed.items()):
        if have.get('installed') and carries_driver_version(name) and upstream(have['version']) != version \
                and name not in (planned.get('remove') or []) and not any(p['name'] == name for p in desired['packages']):
            problems.append('%s is at %s, not %s' % (name, have['version'], version))
    held = set(observed.get('held') or [])
    for package in desired['packages']:
        if package['name'] not in held and (installed.get(package['name']) or {}).get('installed'):
            problems.append('%s is not held' % package['name'])
    if observed.get('preferences') != apt_preferences(version):
        problems.append('the apt pin %s is missing or differs' % PREFERENCES_FILE)
    return problems


def loaded_mismatch(loaded: dict, version: str, flavor: str) -> str | None:
    """Why the loaded kernel module is not the installed driver (version, flavor), or None when it is."""
    if not loaded.get('loaded'):
        return 'no NVIDIA kernel module is loaded'
    if loaded.get('version') != version or loaded.get('flavor') not in (flavor, 'unknown'):
        return 'loaded kernel module %s (%s) differs from the installed driver %s (%s)' % (
            loaded.get('version'), loaded.get('flavor'), version, flavor)
    return None


def finish_steps(steps: list, must_install: bool, desired: dict, loaded: dict, clients: list) -> tuple[bool, str | None]:
    """The steps after an install (load the modules, start the clients), on apt and dnf hosts alike, and whether a
    reboot is needed, with its reason."""
    if not must_install:
        reason = loaded_mismatch(loaded, desired['version'], desired['flavor'])
        return reason is not None, reason
    if desired.get('reload'):
        steps.append({'action': 'load_modules', 'modules': list(MODULES_LOAD)})
    if clients:
        steps.append({'action': 'start_clients', 'units': clients})
    return (False, None) if desired.get('reload') else (True, 'the new driver is installed; module reload is off')
