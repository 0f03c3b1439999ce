#!/usr/bin/env python
"""Build stand-in NVIDIA driver packages and a signed flat apt repository from them (test time, no network).

    python3 sim/driver-packages/build.py OUTDIR [--version 580.95.05 ...] [--failing 580.105.08 ...]

Writes OUTDIR/repo (the .debs, Packages, Packages.gz, Release, InRelease, Release.gpg) and OUTDIR/keyring.gpg (the
public key that signs it; the secret key lives only in OUTDIR/gnupg). The package names and the dependency shape
follow NVIDIA's CUDA repository for Ubuntu (branch-suffixed up to 580): see sim/driver-packages/README.md.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from email.utils import formatdate
from pathlib import Path

DEFAULT_VERSIONS = ("580.95.05", "580.159.04", "570.195.03")
DEFAULT_FAILING = ("580.105.08",)
DEB_REVISION = "-1"

# postinst of the kernel-module packages: tell the simulator which driver is now installed (the userspace only). A real
# package builds the modules with DKMS and leaves the running module alone: NVML then reports a driver/library version
# mismatch until the modules are reloaded or the host reboots, when the simulated host loads this version (and renders
# /proc/driver/nvidia/version from it).
_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    %(fail)s
    if command -v gpusimctl >/dev/null 2>&1; then
        gpusimctl driver --installed-version %(version)s --installed-flavor %(flavor)s
    fi
fi
exit 0
"""
_FAIL = 'echo "%s: stand-in failure: the kernel module does not build" >&2; exit 1'
_POSTRM = """#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if command -v gpusimctl >/dev/null 2>&1; then
        gpusimctl driver --installed no || true
    fi
fi
exit 0
"""
_FM_UNIT = """[Unit]
Description=NVIDIA fabric manager (stand-in %s)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def packages_of(version: str, failing: bool) -> list[dict]:
    """The packages of one driver version: name, Depends, Conflicts/Provides, maintainer scripts, files."""
    b = version.split(".")[0]
    v = version + DEB_REVISION
    ge = "(>= %s)" % v  # NVIDIA's meta packages depend with no upper bound: the pin is what keeps a version
    pkgs = [
        {"name": "nvidia-open-%s" % b, "depends": "nvidia-driver-%s-open %s" % (b, ge), "section": "metapackages"},
        {"name": "cuda-drivers-%s" % b, "depends": "nvidia-driver-%s %s" % (b, ge), "section": "metapackages"},
        {"name": "nvidia-driver-%s-open" % b, "section": "metapackages",
         "depends": "nvidia-dkms-%s-open %s, nvidia-utils-%s %s, libnvidia-compute-%s %s" % (b, ge, b, ge, b, ge),
         "conflicts": "nvidia-driver-%s" % b},
        {"name": "nvidia-driver-%s" % b, "section": "metapackages",
         "depends": "nvidia-dkms-%s %s, nvidia-utils-%s %s, libnvidia-compute-%s %s" % (b, ge, b, ge, b, ge),
         "conflicts": "nvidia-driver-%s-open" % b},
        {"name": "nvidia-utils-%s" % b, "depends": "libnvidia-compute-%s (= %s)" % (b, v)},
        {"name": "libnvidia-compute-%s" % b},
        {"name": "nvidia-fabricmanager-%s" % b, "files": {"lib/systemd/system/nvidia-fabricmanager.service": _FM_UNIT % version}},
        {"name": "libnvidia-nscq-%s" % b},
    ]
    for flavor, name in (("open", "nvidia-dkms-%s-open" % b), ("proprietary", "nvidia-dkms-%s" % b)):
        pkgs.append({"name": name, "provides": "nvidia-dkms-kernel", "conflicts": "nvidia-dkms-kernel", "replaces": "nvidia-dkms-kernel",
                     "postinst": _POSTINST % {"version": version, "flavor": flavor, "fail": _FAIL % name if failing else ":"},
                     "postrm": _POSTRM})
    for pkg in pkgs:
        pkg["version"] = v
    return pkgs


def build_deb(pkg: dict, workdir: Path, outdir: Path) -> Path:
    root = workdir / pkg["name"]
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr" / "share" / "doc" / pkg["name"]
    doc.mkdir(parents=True)
    (doc / "README.stand-in").write_text("Stand-in for NVIDIA's %s %s (gpuvirt.fleet tests). No driver inside.\n" % (pkg["name"], pkg["version"]))
    for rel, text in pkg.get("files", {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    control = ["Package: %s" % pkg["name"], "Version: %s" % pkg["version"], "Architecture: all",
               "Maintainer: gpuvirt.fleet tests <tests@invalid>", "Section: %s" % pkg.get("section", "non-free/libs"),
               "Priority: optional"]
    for key in ("depends", "conflicts", "provides", "replaces"):
        if pkg.get(key):
            control.append("%s: %s" % (key.capitalize(), pkg[key]))
    control.append("Description: stand-in for NVIDIA %s\n Test package with the name and dependency shape of NVIDIA's." % pkg["name"])
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    for script in ("postinst", "postrm"):
        if pkg.get(script):
            path = root / "DEBIAN" / script
            path.write_text(pkg[script])
            path.chmod(0o755)
    deb = outdir / ("%s_%s_all.deb" % (pkg["name"], pkg["version"]))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def _hashes(repo: Path, names: list[str]) -> str:
    lines = []
    for title, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append("%s:" % title)
        for name in names:
            data = (repo / name).read_bytes()
            lines.append(" %s %d %s" % (algo(data).hexdigest(), len(data), name))
    return "\n".join(lines) + "\n"


def write_repo(repo: Path, gnupg: Path) -> Path:
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True, capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)
    with gzip.open(repo / "Packages.gz", "wt") as handle:
        handle.write(packages)
    release = ("Origin: gpuvirt.fleet tests\nLabel: stand-in NVIDIA driver packages\nArchitectures: all amd64 arm64\n"
               "Date: %s\n" % formatdate(time.time(), usegmt=True)) + _hashes(repo, ["Packages", "Packages.gz"])
    (repo / "Release").write_text(release)
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
    if not (gnupg / "pubring.kbx").exists():
        gnupg.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(gpg + ["--quick-gen-key", "gpuvirt.fleet stand-in repo <tests@invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
    subprocess.run(gpg + ["--clearsign", "-o", str(repo / "InRelease"), str(repo / "Release")], check=True, capture_output=True)
    subprocess.run(gpg + ["-abs", "-o", str(repo / "Release.gpg"), str(repo / "Release")], check=True, capture_output=True)
    keyring = repo.parent / "keyring.gpg"
    keyring.write_bytes(subprocess.run(gpg + ["--export"], check=True, capture_output=True).stdout)
    return keyring


def build(outdir: Path, versions, failing) -> Path:
    repo = outdir / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for version in list(versions) + list(failing):
            for pkg in packages_of(version, version in failing):
                build_deb(pkg, Path(tmp) / version, repo)
    return write_repo(repo, outdir / "gnupg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--version", action="append", dest="versions", help="a driver version to build (default: %s)" % ", ".join(DEFAULT_VERSIONS))
    parser.add_argument("--failing", action="append", help="a version whose kernel-module postinst fails (default: %s)" % ", ".join(DEFAULT_FAILING))
    args = parser.parse_args(argv)
    for tool in ("dpkg-deb", "dpkg-scanpackages", "gpg"):
        if shutil.which(tool) is None:
            print("build.py: %s not found (apt-get install dpkg-dev gnupg)" % tool, file=sys.stderr)
            return 1
    started = time.monotonic()
    keyring = build(args.outdir.resolve(), args.versions or DEFAULT_VERSIONS, args.failing if args.failing is not None else DEFAULT_FAILING)
    count = len(list((args.outdir / "repo").glob("*.deb")))
    print("built %d packages in %s, keyring %s (%.1f s)" % (count, os.path.relpath(args.outdir / "repo"), keyring, time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
