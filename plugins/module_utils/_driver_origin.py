# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Where the loaded NVIDIA driver came from, and what nvidia_driver does with one the package manager did not install.

Pure: ``_driver_apply`` observes the loaded module (/proc/driver/nvidia/version), the driver packages dpkg knows,
the files a runfile install leaves (``RUNFILE_FILES``) and the mounts (/proc/mounts), and asks ``origin`` and
``decide``. A driver that no package carries (a runfile install, a read-only driver mount as cloud VMs and the GPU
Operator provide it, or nothing to tell) is left alone unless the declaration says ``adopt``: when it is the declared,
whitelisted driver the host complies but is not package-managed (not a failure); otherwise the run is refused,
naming what is loaded and where it came from.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver

# What NVIDIA's .run installer leaves behind (its installer, its uninstaller and its log).
RUNFILE_FILES = ('/usr/bin/nvidia-installer', '/usr/bin/nvidia-uninstall', '/var/log/nvidia-installer.log')
# Kernel and device trees: the container toolkit binds /proc/driver/nvidia/gpus/* and /dev/nvidia* there, not a driver.
_SYSTEM_TREES = ('/proc', '/dev', '/sys')
_DRIVER_WORDS = ('nvidia', 'cuda')


def driver_mounts(mounts) -> list[str]:
    """The mounts that carry a driver (a mount point naming nvidia or cuda outside /proc, /dev and /sys), described:
    '/usr/local/nvidia (squashfs, read-only)'."""
    found = []
    for mount in mounts or []:
        target = mount.get('target') or ''
        if target.startswith(tuple(t + '/' for t in _SYSTEM_TREES)) or target in _SYSTEM_TREES:
            continue
        if any(word in target.lower() for word in _DRIVER_WORDS):
            mode = 'read-only' if 'ro' in (mount.get('options') or '').split(',') else 'read-write'
            found.append('%s (%s, %s)' % (target, mount.get('fstype') or 'unknown', mode))
    return found


def _dpkg_driver_packages(installed: dict) -> list[str]:
    """Driver packages dpkg holds (installed or half-installed; not those removed with their config files left)."""
    return sorted(name for name, info in (installed or {}).items()
                  if _driver.carries_driver_version(name) and (info.get('status') or 'ii')[1:2] not in ('c', 'n'))


def origin(loaded: dict, installed: dict, runfile_files, mounts) -> dict:
    """Where the loaded driver came from: {'source', 'package_managed', 'evidence'}.

    source: ``package`` (dpkg holds driver packages: the loaded module is theirs, or theirs after a reboot), ``mount``
    (a driver mount), ``runfile`` (the .run installer's files), ``unknown`` (a driver is loaded and nothing tells where
    it came from), ``none`` (no driver loaded, no driver package).
    """
    packages = _dpkg_driver_packages(installed)
    if packages:
        return {'source': 'package', 'package_managed': True, 'evidence': packages}
    if not (loaded or {}).get('loaded'):
        return {'source': 'none', 'package_managed': False, 'evidence': []}
    mounted = driver_mounts(mounts)
    files = sorted(runfile_files or [])
    if mounted:
        return {'source': 'mount', 'package_managed': False, 'evidence': mounted + files}
    if files:
        return {'source': 'runfile', 'package_managed': False, 'evidence': files}
    return {'source': 'unknown', 'package_managed': False, 'evidence': []}


def describe(found: dict) -> str:
    """'source: mount: /usr/local/nvidia (squashfs, read-only)'."""
    if found['evidence']:
        return 'source: %s: %s' % (found['source'], ', '.join(found['evidence']))
    return 'source: %s: no driver package carries it and no installer file or driver mount was found' % found['source']


def _loaded_text(loaded: dict) -> str:
    return '%s (%s)' % (loaded.get('version') or 'unknown version', loaded.get('flavor') or 'unknown')


def decide(found: dict, loaded: dict, declared: dict, adopt: bool) -> dict | None:
    """What to do with the loaded driver before any package is planned.

    declared: ``version`` or ``branch`` (one is None), ``whitelist`` (normalised: {branch: versions}), ``flavor``.
    Returns None where the packages are planned as usual (a package-managed host, no driver loaded, or ``adopt``);
    {'complies': True, 'msg'} where the loaded driver is the declared, whitelisted one; raises DriverError otherwise.
    """
    if found['package_managed'] or found['source'] == 'none' or adopt:
        return None
    version = loaded.get('version')
    wanted = declared['version'] if declared.get('version') is not None else 'branch %s' % declared['branch']
    allowed = _driver.whitelisted(declared['whitelist'])
    matches = version is not None and version in allowed and (
        version == declared['version'] if declared.get('version') is not None else _driver.branch_of(version) == declared['branch'])
    if matches and loaded.get('flavor') in (declared['flavor'], 'unknown'):
        return {'complies': True,
                'msg': 'the loaded driver %s complies with the whitelist (declared %s) but was not installed by the package manager '
                       '(%s); nothing changed. Set adopt to replace it with the whitelisted packages'
                       % (_loaded_text(loaded), wanted, describe(found))}
    raise _driver.DriverError(
        'the loaded driver %s was not installed by the package manager (%s) and is not the declared driver (%s, %s); '
        'set adopt to replace it with the whitelisted packages' % (_loaded_text(loaded), describe(found), wanted, declared['flavor']))


def adopt_warning(found: dict) -> str | None:
    """What is left of the previous driver after its packages replaced it, for the result's warnings."""
    if found['package_managed'] or found['source'] == 'none':
        return None
    if found['source'] == 'mount':
        return ('adopted a driver from a mount (%s): the packages are installed, but whatever loads the driver from the mount '
                'at boot must be turned off for them to take effect' % ', '.join(found['evidence']))
    if found['source'] == 'runfile':
        return ('adopted a runfile install: the packages are installed over it; the files they do not replace are left (%s). '
                'Do not run nvidia-uninstall now: it would remove files the packages own' % ', '.join(found['evidence']))
    return None
