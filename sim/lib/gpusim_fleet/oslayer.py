"""OS kinds a fleet host can have (`os:` in a fleet file) and the shared layer each one adds over the Debian base.

`debian12` is the base itself. `rhel9-like` is the Debian base plus Debian's real rpm, dnf, python3-dnf and
dnf-plugins-core (versionlock), an os-release and redhat-release naming Rocky Linux 9.4 (PLATFORM_ID platform:el9,
so Ansible's facts take the RedHat family path and dnf's modularity knows the platform), and a stand-in release RPM in
the rpm database that provides what a RHEL base would (`system-release(releasever) = 9`, `/bin/sh`, `bash`), so that
scriptlet dependencies resolve. Debian's dnf enables the `local` plugin, which RHEL does not ship by default: it is
turned off. apt and dpkg stay in the layer (the simulator's own tools live on the Debian side).

The layer is an overlay upper directory over the base, built once into the cache with its own stamp (a chroot in a
private mount namespace, the .debs downloaded into the cache first), and becomes the upper of two lower layers for
every host of that kind: `lowerdir=<layer>:<base>`.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import base, paths

OS_KINDS = ("debian12", "rhel9-like")
DEFAULT_OS = "debian12"
RHEL9_PACKAGES = ["rpm", "dnf", "python3-dnf", "dnf-plugins-core"]
RHEL9_RECIPE = "gpuvirt-fleet-rhel9-like-1 " + ",".join(RHEL9_PACKAGES)

OS_RELEASE = """NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"
ANSI_COLOR="0;32"
HOME_URL="https://rockylinux.org/"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
# gpuvirt-fleet: a Debian base with Debian's rpm and dnf, named as a RHEL 9 rebuild (os: rhel9-like)
"""
RELEASE_SPEC = """Name: gpuvirt-rhel9-like-release
Version: 9.4
Release: 1
Summary: gpuvirt-fleet stand-in for the release and base packages of a RHEL 9 rebuild
License: MIT
BuildArch: noarch
Provides: system-release
Provides: system-release(releasever) = 9
Provides: redhat-release = 9.4
Provides: /bin/sh
Provides: bash
%description
The rpm database of a fleet host of kind rhel9-like holds this package only: the files come from the Debian base.
%files
"""


def layer_dir(kind: str) -> Path:
    return paths.CACHE_DIR / f"os-{kind}"


def lowerdir(kind: str) -> str:
    """The overlay lowerdir for a host of this kind."""
    if kind == DEFAULT_OS:
        return str(paths.BASE_DIR)
    return f"{layer_dir(kind)}:{paths.BASE_DIR}"


def _stamp(kind: str) -> Path:
    return paths.CACHE_DIR / f"os-{kind}.stamp"


def _download(debs: Path) -> None:
    """The .debs the base lacks for the layer (apt-get --download-only against the base's dpkg status)."""
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    argv = ["apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends",
            "-o", f"Dir::State::status={paths.BASE_DIR}/var/lib/dpkg/status", "-o", f"Dir::Cache::archives={debs}",
            "-o", "Debug::NoLocking=1"] + RHEL9_PACKAGES
    if subprocess.run(argv, capture_output=True, text=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, check=True)
        subprocess.run(argv, capture_output=True, text=True, check=True)


def _build_rhel9(target: Path) -> None:
    work = paths.CACHE_DIR / "os-rhel9-like.work"
    merged = paths.CACHE_DIR / "os-rhel9-like.merged"
    debs = paths.CACHE_DIR / "os-rhel9-like.debs"
    _download(debs)
    for d in (work, merged):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
    target.mkdir()
    spec = target.parent / "os-rhel9-like.release.spec"
    spec.write_text(RELEASE_SPEC)
    m = str(merged)
    steps = [
        f"mount -t overlay overlay -o lowerdir={paths.BASE_DIR},upperdir={target},workdir={work} {m}",
        f"mount -t proc proc {m}/proc",
        f"printf '#!/bin/sh\\nexit 101\\n' > {m}/usr/sbin/policy-rc.d && chmod 755 {m}/usr/sbin/policy-rc.d",
        f"mkdir -p {m}/tmp/gpuvirt-debs && cp {debs}/*.deb {m}/tmp/gpuvirt-debs/",
        f"chroot {m} sh -c 'dpkg -i /tmp/gpuvirt-debs/*.deb' >/dev/null",
        f"rm -rf {m}/tmp/gpuvirt-debs {m}/usr/sbin/policy-rc.d",
        f"cp {spec} {m}/tmp/release.spec",
        f"chroot {m} rpmbuild -bb --quiet --define '_topdir /tmp/rpmbuild' --define '_rpmdir /tmp/rpms' /tmp/release.spec",
        f"chroot {m} sh -c 'rpm --initdb && rpm -i --nodeps /tmp/rpms/noarch/*.rpm' 2>/dev/null",
        f"rm -rf {m}/tmp/rpmbuild {m}/tmp/rpms {m}/tmp/release.spec",
        f"rm -f {m}/etc/os-release {m}/etc/debian_version {m}/etc/lsb-release",
        f"mkdir -p {m}/etc/yum.repos.d {m}/etc/dnf/modules.d",
        f"sed -i 's/^enabled *=.*/enabled = false/' {m}/etc/dnf/plugins/local.conf",
        f"touch {m}/etc/dnf/plugins/versionlock.list",
        f"umount {m}/proc",
        f"umount {m}",
    ]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", "; ".join(steps)], check=True, env=env)
    spec.unlink()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(merged, ignore_errors=True)
    # The rm in the overlay left a whiteout of the base's os-release symlink in the layer: the file replaces it.
    (target / "etc/os-release").unlink(missing_ok=True)
    (target / "etc/os-release").write_text(OS_RELEASE)
    (target / "etc/redhat-release").write_text("Rocky Linux release 9.4 (Blue Onyx)\n")
    os.chmod(target / "etc/os-release", 0o644)


def ensure(kind: str) -> None:
    """Build the layer of `kind` once (concurrent callers wait on a lock and reuse it)."""
    if kind == DEFAULT_OS:
        return
    if kind not in OS_KINDS:
        raise SystemExit(f"fleet: unknown os {kind!r} (known: {', '.join(OS_KINDS)})")
    target = layer_dir(kind)
    with open(paths.CACHE_DIR / f"os-{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _stamp(kind)
        want = RHEL9_RECIPE + " over " + base.recipe()
        if stamp.exists() and stamp.read_text().strip() == want and (target / "etc/os-release").exists():
            return
        users = [p for p in paths.STATE_DIR.glob("*/hosts/*/host.json") if str(target) in p.read_text()]
        if target.exists() and users:
            raise SystemExit(f"fleet: the {kind} layer at {target} is from another recipe and {len(users)} host(s) use it; "
                             f"`sim/fleet down --purge` them first")
        t0 = time.monotonic()
        base.log(f"building the {kind} layer in {target} (once)")
        if target.exists():
            shutil.rmtree(target)
        _build_rhel9(target)
        stamp.write_text(want + "\n")
        base.log(f"{kind} layer ready in {time.monotonic() - t0:.0f} s")
