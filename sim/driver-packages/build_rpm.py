#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build stand-in NVIDIA driver RPMs and two dnf repositories from them (test time, no network).

    python3 sim/driver-packages/build_rpm.py OUTDIR [--version 580.95.05 ...] [--failing 580.105.08 ...]

Writes OUTDIR/streams (createrepo_c metadata plus module metadata: the layout of NVIDIA's RHEL 8/9 repositories, dnf
module `nvidia-driver` with the streams `<branch>-open` and `<branch>-dkms`) and OUTDIR/plain (the same RPMs without
module metadata: the layout NVIDIA uses where there is no modularity, RHEL 10 and Fedora, pinned with versionlock).
The RPMs are built once with rpmbuild and kept in a cache folder (default .build/driver-rpms) keyed by this script's
recipe. Names, epochs and dependency shape follow NVIDIA's packaging (see sim/driver-packages/README.md).
Needs rpmbuild (Debian package rpm), createrepo_c and modifyrepo_c (createrepo-c).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".build" / "driver-rpms"
DEFAULT_VERSIONS = ("580.95.05", "580.159.04", "570.195.03")
DEFAULT_FAILING = ("580.105.08",)
RELEASE = "1.el9"
ARCH = "x86_64"
# NVIDIA's driver spec (yum-packaging-nvidia-driver) sets Epoch 3; fabric manager and NSCQ have none.
DRIVER_EPOCH = 3

# The kernel-module packages tell the simulator which driver is installed (userspace side; the loaded module stays,
# as DKMS leaves the running module alone). $1 of %postun is 0 on an erase, 1 or more on an upgrade or downgrade.
_POST = """%(fail)s
if command -v gpusimctl >/dev/null 2>&1; then
    gpusimctl driver --installed-version %(version)s --installed-flavor %(flavor)s
fi
exit 0
"""
_FAIL = 'echo "%s: stand-in failure: the kernel module does not build" >&2; exit 1'
_POSTUN = """if [ "$1" = 0 ] && command -v gpusimctl >/dev/null 2>&1; then
    gpusimctl driver --installed no || true
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


def driver_packages(version: str, failing: bool) -> list[dict]:
    """The epoch-3 packages of one driver version (nvidia-driver.spec, cuda-drivers and nvidia-open meta packages)."""
    evr = "%d:%s-%s" % (DRIVER_EPOCH, version, RELEASE)
    ge = ">= %s" % evr  # the meta packages ask for at least their version: the lock is what keeps one
    pkgs = [
        {"name": "nvidia-open", "requires": ["nvidia-driver-cuda %s" % ge, "kmod-nvidia-open-dkms %s" % ge]},
        {"name": "cuda-drivers", "requires": ["nvidia-driver-cuda %s" % ge, "kmod-nvidia-latest-dkms %s" % ge]},
        {"name": "nvidia-driver-cuda", "requires": ["nvidia-driver-cuda-libs = %s" % evr, "libnvidia-ml = %s" % evr,
                                                    "nvidia-kmod-common = %s" % evr]},
        {"name": "nvidia-driver-cuda-libs"},
        {"name": "libnvidia-ml"},
        {"name": "nvidia-kmod-common", "requires": ["nvidia-kmod = %d:%s" % (DRIVER_EPOCH, version)]},
    ]
    for name, flavor, other in (("kmod-nvidia-open-dkms", "open", "kmod-nvidia-latest-dkms"),
                                ("kmod-nvidia-latest-dkms", "proprietary", "kmod-nvidia-open-dkms")):
        pkgs.append({"name": name, "provides": ["nvidia-kmod = %d:%s" % (DRIVER_EPOCH, version)], "conflicts": [other],
                     "post": _POST % {"version": version, "flavor": flavor, "fail": _FAIL % name if failing else ":"},
                     "postun": _POSTUN})
    return pkgs


def fabric_packages(version: str) -> list[dict]:
    """Fabric manager and NSCQ (their own specs, no epoch), at exactly the driver version."""
    branch = version.split(".")[0]
    return [
        {"name": "nvidia-fabric-manager", "provides": ["nvidia-fabricmanager-%s = %s" % (branch, version)],
         "files": {"/usr/lib/systemd/system/nvidia-fabricmanager.service": _FM_UNIT % version}},
        {"name": "libnvidia-nscq-%s" % branch, "provides": ["libnvidia-nscq = %s" % version]},
    ]


def spec_text(version: str, epoch: int | None, pkgs: list[dict]) -> str:
    lines = ["Name: gpuvirt-standin-%s" % ("driver" if epoch else "fabric"), "Version: %s" % version, "Release: %s" % RELEASE]
    if epoch:
        lines.append("Epoch: %d" % epoch)
    lines += ["Summary: stand-in NVIDIA packages", "License: MIT", "BuildArch: %s" % ARCH, "",
              "%description", "Stand-ins with the names and dependency shape of NVIDIA's packages; no driver inside.", "",
              "%install", "mkdir -p %{buildroot}/usr/share/doc/gpuvirt-standin"]
    for pkg in pkgs:
        lines.append("echo 'Stand-in for NVIDIA %s %s (gpuvirt.fleet tests).' > %%{buildroot}/usr/share/doc/gpuvirt-standin/%s"
                     % (pkg["name"], version, pkg["name"]))
        for path, text in pkg.get("files", {}).items():
            lines.append("mkdir -p %%{buildroot}%s" % str(Path(path).parent))
            lines.append("cat > %%{buildroot}%s <<'EOF'\n%sEOF" % (path, text))
    for pkg in pkgs:
        lines += ["", "%%package -n %s" % pkg["name"], "Summary: stand-in for NVIDIA %s" % pkg["name"]]
        lines += ["Requires: %s" % r for r in pkg.get("requires", [])]
        lines += ["Provides: %s" % p for p in pkg.get("provides", [])]
        lines += ["Conflicts: %s" % c for c in pkg.get("conflicts", [])]
        lines += ["%%description -n %s" % pkg["name"], "Stand-in for NVIDIA's %s." % pkg["name"]]
        for script in ("post", "postun"):
            if pkg.get(script):
                lines += ["%%%s -n %s" % (script, pkg["name"]), pkg[script].rstrip("\n")]
        lines += ["%%files -n %s" % pkg["name"], "/usr/share/doc/gpuvirt-standin/%s" % pkg["name"]]
        lines += list(pkg.get("files", {}))
    return "\n".join(lines) + "\n"


def rpmbuild(spec: str, workdir: Path, outdir: Path) -> None:
    workdir.mkdir(parents=True)
    (workdir / "standin.spec").write_text(spec)
    subprocess.run(["rpmbuild", "-bb", "--nodeps", "--quiet", "--define", "_topdir %s" % workdir, "--define", "_rpmdir %s" % outdir,
                    "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm", "--define", "__os_install_post %{nil}",
                    "--define", "debug_package %{nil}", "--target", ARCH, str(workdir / "standin.spec")],
                   check=True, capture_output=True, text=True)


def module_documents(versions, branches) -> str:
    """modulemd v2 documents: per branch and flavour one `nvidia-driver:<branch>-open|-dkms` stream, one module version
    per driver version (as NVIDIA's genmodules.py), its artifacts the packages of that version; profiles default and fm."""
    docs = []
    for version in versions:
        branch = version.split(".")[0]
        if branch not in branches:
            continue
        major, minor, patch = (version.split(".") + ["0"])[:3]
        module_version = int(major) * 10 ** 8 + int(minor) * 10 ** 4 + int(patch)
        fm = ["nvidia-fabric-manager-0:%s-%s.%s" % (version, RELEASE, ARCH), "libnvidia-nscq-%s-0:%s-%s.%s" % (branch, version, RELEASE, ARCH)]
        for stream, meta, kmod in (("open", "nvidia-open", "kmod-nvidia-open-dkms"), ("dkms", "cuda-drivers", "kmod-nvidia-latest-dkms")):
            names = [meta, "nvidia-driver-cuda", "nvidia-driver-cuda-libs", "libnvidia-ml", "nvidia-kmod-common", kmod]
            artifacts = ["%s-%d:%s-%s.%s" % (n, DRIVER_EPOCH, version, RELEASE, ARCH) for n in names] + fm
            docs.append("\n".join([
                "---", "document: modulemd", "version: 2", "data:", "  name: nvidia-driver", "  stream: \"%s-%s\"" % (branch, stream),
                "  version: %d" % module_version, "  context: \"00000000\"", "  arch: %s" % ARCH,
                "  summary: Nvidia driver for %s-%s branch (stand-in)" % (branch, stream),
                "  description: >-", "    Stand-in module metadata with the names of NVIDIA's nvidia-driver module.",
                "  license:", "    module:", "      - MIT", "  profiles:",
                "    default:", "      rpms:"] + ["        - %s" % meta] + [
                "    fm:", "      rpms:"] + ["        - %s" % n for n in (meta, "nvidia-fabric-manager", "libnvidia-nscq-%s" % branch)] + [
                "  artifacts:", "    rpms:"] + ["      - %s" % a for a in sorted(artifacts)]))
    return "\n".join(docs) + "\n...\n"


def recipe_key(versions, failing) -> str:
    text = Path(__file__).read_text() + repr(sorted(versions)) + repr(sorted(failing))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_rpms(versions, failing, cache: Path = CACHE) -> Path:
    """The RPMs of every version, built once per recipe into cache/<key>/."""
    target = cache / recipe_key(versions, failing)
    if (target / "done").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for version in list(versions) + list(failing):
            rpmbuild(spec_text(version, DRIVER_EPOCH, driver_packages(version, version in failing)), Path(tmp) / version / "driver", target)
            rpmbuild(spec_text(version, None, fabric_packages(version)), Path(tmp) / version / "fabric", target)
    for stale in cache.iterdir():
        if stale != target and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    (target / "done").write_text("")
    return target


def build(outdir: Path, versions, failing, cache: Path = CACHE) -> dict:
    rpms = build_rpms(versions, failing, cache)
    repos = {}
    for layout in ("streams", "plain"):
        repo = outdir / layout
        if repo.exists():
            shutil.rmtree(repo)
        repo.mkdir(parents=True)
        for rpm in sorted(rpms.rglob("*.rpm")):
            shutil.copy2(rpm, repo / rpm.name)
        subprocess.run(["createrepo_c", "--quiet", "--no-database", str(repo)], check=True, capture_output=True, text=True)
        if layout == "streams":
            modules = outdir / "modules.yaml"
            every = list(versions) + list(failing)
            modules.write_text(module_documents(every, {v.split(".")[0] for v in every}))
            subprocess.run(["modifyrepo_c", "--mdtype=modules", str(modules), str(repo / "repodata")], check=True, capture_output=True, text=True)
        repos[layout] = repo
    return repos


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--version", action="append", dest="versions", help="a driver version (default: %s)" % ", ".join(DEFAULT_VERSIONS))
    parser.add_argument("--failing", action="append", help="a version whose kmod %%post fails (default: %s)" % ", ".join(DEFAULT_FAILING))
    parser.add_argument("--cache", type=Path, default=CACHE, help="where built RPMs are kept (default .build/driver-rpms)")
    args = parser.parse_args(argv)
    for tool in ("rpmbuild", "createrepo_c", "modifyrepo_c"):
        if shutil.which(tool) is None:
            print("build_rpm.py: %s not found (apt-get install rpm createrepo-c)" % tool, file=sys.stderr)
            return 1
    started = time.monotonic()
    repos = build(args.outdir.resolve(), args.versions or DEFAULT_VERSIONS,
                  args.failing if args.failing is not None else DEFAULT_FAILING, args.cache)
    print("repositories %s (%.1f s)" % (", ".join(str(r) for r in repos.values()), time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
