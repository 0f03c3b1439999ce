# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure driver planner for the RHEL family (dnf, rpm): package names per layout, the lock, the ordered plan.

Nothing here runs a command or reads a file: ``_driver_dnf`` observes the host through ``_dnf`` (rpm, dnf, the
versionlock list, the module state file), calls these functions and applies the steps they return. The whitelist,
the policy and the flavour come from ``_driver`` as on Debian.

NVIDIA packages the driver for these systems in two layouts (sources: NVIDIA Driver Installation Guide, "Red Hat
Enterprise Linux" and "Version locking"; NVIDIA/cuda-repo-management genmodules.py; the yum-packaging-* specs):

- ``streams``: RHEL 8/9 and their rebuilds. The repository carries module metadata: module ``nvidia-driver``,
  streams ``<branch>-open`` (open kernel modules, ``kmod-nvidia-open-dkms``) and ``<branch>-dkms`` (proprietary,
  ``kmod-nvidia-latest-dkms``). ``dnf module enable nvidia-driver:<stream>`` keeps the branch and flavour; the exact
  version is then locked with versionlock, which the guide requires (python3-dnf-plugin-versionlock).
- ``versionlock``: repositories without modularity (RHEL 10, Fedora): the same package names, the version kept by
  versionlock alone.

The lock names every driver package the repository offers at the driver version, at that exact
``name-epoch:version-release.*`` (versionlock then hides every other version of those names from dnf, so
``dnf upgrade`` moves none and a dependency asked for with ``>=`` resolves to the same version, downgrades included).
"""

from __future__ import annotations

import re

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver

LAYOUTS = ('streams', 'versionlock')
MODULE = 'nvidia-driver'
LOCK_MARK = '# gpuvirt.fleet (nvidia_driver)'
# Packages that belong to the driver on an RPM host (NVIDIA's CUDA repository for RHEL).
_DRIVER_RE = re.compile(r'^(?:cuda-drivers(?:-\d+)?|cuda-drivers-fabricmanager.*|kmod-nvidia-.*|nvidia-.*|libnvidia-.*|dnf-plugin-nvidia)$')
# Driver-repository packages released on their own, not at the driver version.
_OWN_VERSION_RE = re.compile(r'^(?:nvidia-container-.*|libnvidia-container.*|nvidia-docker.*|dnf-plugin-nvidia|nvidia-driver-pinning-.*)$')
# Meta packages and kernel modules per flavour: the ones of the other flavour leave in the same transaction.
_FLAVOR_PACKAGES = {'open': ('nvidia-open', 'kmod-nvidia-open-dkms'), 'proprietary': ('cuda-drivers', 'kmod-nvidia-latest-dkms')}
_FAILED_SCRIPTLET_RE = re.compile(r'Error in (PREIN|POSTIN|PRETRANS|POSTTRANS|TRIGGERIN) scriptlet in rpm package (\S+)')


def is_driver_package(name: str) -> bool:
    return bool(_DRIVER_RE.match(name))


def carries_driver_version(name: str) -> bool:
    return is_driver_package(name) and not _OWN_VERSION_RE.match(name)


def split_evr(evr: str) -> tuple[str, str, str]:
    """'3:580.95.05-1.el9' -> ('3', '580.95.05', '1.el9'); no epoch is epoch 0."""
    epoch, _sep, rest = evr.rpartition(':')
    version, _sep, release = rest.partition('-')
    return epoch or '0', version, release


def driver_version_of(evr: str) -> str:
    return split_evr(evr)[1]


def stream(version: str, flavor: str) -> str:
    """The module stream of a branch and flavour: '580-open' or '580-dkms' (genmodules.py)."""
    if flavor not in _driver.FLAVORS:
        raise _driver.DriverError('flavor %r: expected open or proprietary' % flavor)
    return '%s-%s' % (_driver.branch_of(version), 'open' if flavor == 'open' else 'dkms')


def package_names(version: str, flavor: str, nvswitch: bool = False) -> list[str]:
    """The packages to ask dnf for; their dependencies come at the same version through the lock.

    ``nvidia-open`` (open modules) or ``cuda-drivers`` (proprietary): the install guide's meta packages for RHEL.
    NVSwitch hosts add ``nvidia-fabric-manager`` (yum-packaging-fabric-manager; renamed from
    ``nvidia-fabricmanager-<branch>`` in 2021, which it still provides) and ``libnvidia-nscq-<branch>``
    (yum-packaging-libnvidia-nscq), both at exactly the driver version.
    """
    if flavor not in _driver.FLAVORS:
        raise _driver.DriverError('flavor %r: expected open or proprietary' % flavor)
    names = [_FLAVOR_PACKAGES[flavor][0]]
    if nvswitch:
        names += ['nvidia-fabric-manager', 'libnvidia-nscq-%s' % _driver.branch_of(version)]
    return names


def choose_evr(name: str, version: str, available: dict) -> str | None:
    """The newest offered epoch:version-release of ``name`` that carries driver ``version``."""
    matches = [evr for evr in available.get(name, []) if driver_version_of(evr) == version]
    return max(matches, key=lambda evr: (int(split_evr(evr)[0]), split_evr(evr)[2])) if matches else None


def lock_lines(version: str, available: dict) -> list[str]:
    """versionlock entries: every driver package offered at ``version``, exactly."""
    lines = []
    for name in sorted(available):
        if carries_driver_version(name):
            evr = choose_evr(name, version, available)
            if evr is not None:
                lines.append('%s-%s.*' % (name, evr if ':' in evr else '0:' + evr))
    return lines


def _lock_entry_name(line: str) -> str | None:
    """The package name of a versionlock entry ('name-E:V-R.*', '!name-...'); None for comments and blanks."""
    text = line.strip().lstrip('!')
    if not text or text.startswith('#'):
        return None
    parts = text.rsplit('-', 2)
    return parts[0] if len(parts) == 3 else text


def lock_text(current: str | None, version: str, lines: list[str]) -> str:
    """The versionlock list with the driver's entries replaced by ``lines`` (other entries kept as they are)."""
    kept = []
    skip_comment = False
    for line in (current or '').splitlines():
        name = _lock_entry_name(line)
        if line.startswith(LOCK_MARK):
            skip_comment = True
            continue
        if name is not None and (is_driver_package(name) or 'nvidia' in name or name.startswith('cuda-drivers')):
            continue
        if skip_comment and not line.strip():
            continue
        skip_comment = False
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = ['%s: the NVIDIA driver stays at %s; upgrades go through the whitelist.' % (LOCK_MARK, version)] + lines
    return '\n'.join(kept + ([''] if kept else []) + block) + '\n'


def installed_driver_version(installed: dict) -> str | None:
    versions = {driver_version_of(info['evr']) for name, info in installed.items() if carries_driver_version(name)}
    if not versions:
        return None
    if len(versions) == 1:
        return versions.pop()
    return 'mixed:' + ','.join(sorted(versions, key=_driver.version_key))


def plan(current: dict, desired: dict) -> dict:
    """Ordered steps that bring an RPM host from ``current`` to ``desired``.

    current: ``installed`` {name: {evr, arch}} (driver packages rpm knows), ``lock`` (the versionlock list's text or
    None), ``module`` {stream, state} of nvidia-driver or None, ``available`` {name: [evr]} (every stream),
    ``loaded`` {loaded, version, flavor}, ``active_clients`` [units].
    desired: ``version``, ``flavor``, ``layout`` (streams or versionlock), ``nvswitch``, ``reload``, ``clients``.

    Returns {'version', 'flavor', 'steps', 'changed', 'install', 'remove', 'lock', 'stream', 'before', 'after',
    'reboot_required', 'reason'}.
    """
    version, flavor, layout = desired['version'], desired['flavor'], desired['layout']
    if layout not in LAYOUTS:
        raise _driver.DriverError('layout %r: expected streams or versionlock' % layout)
    installed = current.get('installed') or {}
    available = current.get('available') or {}
    install = {}
    for name in package_names(version, flavor, desired.get('nvswitch', False)):
        wanted = choose_evr(name, version, available)
        have = (installed.get(name) or {}).get('evr')
        if wanted is None:
            if have is not None and driver_version_of(have) == version:
                continue
            raise _driver.DriverError('package %s at driver version %s is not offered by the package repository (offered: %s)'
                                      % (name, version, ', '.join(sorted(available.get(name, []))) or 'none'))
        if have != wanted:
            install[name] = wanted
    # Every installed package of the driver moves with it (downgrades and rollbacks included).
    for name, info in sorted(installed.items()):
        if name not in install and carries_driver_version(name) and driver_version_of(info['evr']) != version:
            wanted = choose_evr(name, version, available)
            if wanted is not None:
                install[name] = wanted
    other = _FLAVOR_PACKAGES['proprietary' if flavor == 'open' else 'open']
    remove = sorted(name for name in other if name in installed)
    wanted_stream = stream(version, flavor) if layout == 'streams' else None
    module = current.get('module') or {}
    module_ok = wanted_stream is None or (module.get('stream') == wanted_stream and module.get('state') == 'enabled')
    lock = lock_text(current.get('lock'), version, lock_lines(version, available))
    lock_needed = current.get('lock') != lock
    must_install = bool(install or remove)
    steps = []
    clients = [u for u in desired.get('clients') or [] if u in (current.get('active_clients') or [])]
    loaded = current.get('loaded') or {}
    if must_install:
        if clients:
            steps.append({'action': 'stop_clients', 'units': clients})
        if desired.get('reload') and loaded.get('loaded'):
            steps.append({'action': 'unload_modules', 'modules': list(_driver.MODULES_UNLOAD_ORDER)})
    if not module_ok:
        steps.append({'action': 'module_enable', 'module': MODULE, 'stream': wanted_stream, 'reset': bool(module.get('state'))})
    if lock_needed or must_install:
        # Before the install: the lock is what makes dnf resolve the meta package's ">=" dependencies to this version.
        steps.append({'action': 'lock', 'content': lock})
    if must_install:
        steps.append({'action': 'install', 'packages': install, 'remove': remove})
    reboot_required, reason = _driver.finish_steps(steps, must_install, desired, loaded, clients)
    before = {n: i['evr'] for n, i in sorted(installed.items()) if is_driver_package(n)}
    after = {n: v for n, v in before.items() if n not in remove}
    after.update(install)
    return {'version': version, 'flavor': flavor, 'steps': steps, 'changed': bool(steps), 'install': install, 'remove': remove,
            'lock': lock, 'stream': wanted_stream, 'before': before, 'after': dict(sorted(after.items())),
            'reboot_required': reboot_required, 'reason': reason}


def rollback_plan(before: dict, after_installed: dict) -> list[dict]:
    """Steps that put the driver packages, the lock and the module stream back as they were before a failed install."""
    restore = {n: i['evr'] for n, i in (before.get('installed') or {}).items() if is_driver_package(n)}
    extra = sorted(n for n in after_installed if is_driver_package(n) and n not in restore)
    steps = []
    module = before.get('module') or {}
    steps.append({'action': 'module_restore', 'module': MODULE, 'stream': module.get('stream'), 'state': module.get('state')})
    steps.append({'action': 'lock', 'content': before.get('lock')})
    changed = {n: evr for n, evr in restore.items() if (after_installed.get(n) or {}).get('evr') != evr}
    steps.append({'action': 'install', 'packages': changed, 'remove': extra})
    return steps


def verify(observed: dict, desired: dict, planned: dict) -> list[str]:
    """What is still wrong after apply: packages at the version, fabric manager at the driver version, lock, stream."""
    problems = []
    installed = observed.get('installed') or {}
    version = desired['version']
    wanted = package_names(version, desired['flavor'], desired.get('nvswitch', False))
    for name in wanted:
        have = installed.get(name)
        if have is None:
            problems.append('%s is not installed' % name)
        elif driver_version_of(have['evr']) != version:
            problems.append('%s is at %s, not %s' % (name, have['evr'], version))
    for name, have in sorted(installed.items()):
        if name in planned.get('remove', []):
            problems.append('%s is still installed' % name)
        elif name not in wanted and carries_driver_version(name) and driver_version_of(have['evr']) != version:
            problems.append('%s is at %s, not %s' % (name, have['evr'], version))
    if observed.get('lock') != planned['lock']:
        problems.append('the versionlock entries of the driver are missing or differ')
    module = observed.get('module') or {}
    if planned.get('stream') and (module.get('stream'), module.get('state')) != (planned['stream'], 'enabled'):
        problems.append('module stream %s:%s is not enabled' % (MODULE, planned['stream']))
    return problems


def failed_scriptlets(output: str) -> list[str]:
    """Driver packages whose install scriptlet failed, from dnf's output (dnf itself exits 0 on a failed %post)."""
    return sorted({m.group(2) for m in _FAILED_SCRIPTLET_RE.finditer(output or '') if is_driver_package(m.group(2))})
