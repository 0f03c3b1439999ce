"""Fixtures for the simulator tests: the NVML stand-in, the real nvidia-ml-py, a fresh host state."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SIM_LIB = REPO / "sim" / "lib"
GPUSIMCTL = REPO / "sim" / "bin" / "gpusimctl"

if str(SIM_LIB) not in sys.path:
    # appended, not prepended: other test packages in the same session must still import the real pynvml
    sys.path.append(str(SIM_LIB))

from gpusim import cli  # noqa: E402  pylint: disable=wrong-import-position


def _load_by_path(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The stand-in under a private module name, so that it never shadows nvidia-ml-py's pynvml; test
# modules take it from sys.modules["sim_pynvml"] (conftest is always imported before them).
sim_pynvml = sys.modules.get("sim_pynvml") or _load_by_path("sim_pynvml", str(SIM_LIB / "pynvml.py"))
assert getattr(sim_pynvml, "SIMULATED", False)
PRISTINE_ERROR_TEXTS = dict(sim_pynvml.NVMLError._errcode_to_string)  # pylint: disable=protected-access


def shared_dir() -> Path:
    """The shared directory with reference captures: $GPUVIRT_SHARED, default <repo>/../shared."""
    return Path(os.environ.get("GPUVIRT_SHARED") or REPO.parent / "shared")


def h100_capture_dir() -> Path:
    path = shared_dir() / "fixtures" / "real" / "h100-80gb-hbm3"
    if not path.is_dir():
        pytest.fail("real H100 capture not found at %s: set GPUVIRT_SHARED to the shared directory "
                    "(the one holding fixtures/real/h100-80gb-hbm3)" % path, pytrace=False)
    return path


def load_real_pynvml():
    """nvidia-ml-py's pynvml, imported from its installed file under a private name."""
    spec = importlib.util.find_spec("pynvml", [p for p in sys.path if Path(p).resolve() != SIM_LIB.resolve()])
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent == SIM_LIB.resolve():
        pytest.fail("nvidia-ml-py is not installed in this interpreter (pip install nvidia-ml-py)", pytrace=False)
    # its error-class factory looks itself up in sys.modules, hence the registration in _load_by_path
    return sys.modules.get("real_pynvml") or _load_by_path("real_pynvml", spec.origin)


@pytest.fixture(scope="session")
def real_pynvml():
    return load_real_pynvml()


@pytest.fixture(scope="session")
def capture_dir():
    """fixtures/real/h100-80gb-hbm3 of the shared directory (fails, never skips, when absent)."""
    return h100_capture_dir()


@pytest.fixture(scope="session")
def gpusimctl_path():
    return GPUSIMCTL


@pytest.fixture
def pristine_error_texts(monkeypatch):
    """The stand-in's error texts as before any nvmlInit loaded the (simulated) library."""
    monkeypatch.setattr(sim_pynvml, "_lib_loaded", False)
    monkeypatch.setattr(sim_pynvml.NVMLError, "_errcode_to_string", dict(PRISTINE_ERROR_TEXTS))


def _shutdown_all(nvml) -> None:
    while True:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            return


@pytest.fixture
def nvml():
    """The stand-in module, with no NVML session open before and after the test."""
    _shutdown_all(sim_pynvml)
    yield sim_pynvml
    _shutdown_all(sim_pynvml)


class SimHost:
    """A simulated host rooted in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ctl(self, *args: str) -> int:
        return cli.main(["--root", str(self.root), *args])

    def ok(self, *args: str) -> None:
        assert self.ctl(*args) == 0, "gpusimctl %s failed" % " ".join(args)

    def init(self, *gpus: str, extra: tuple[str, ...] = ()) -> None:
        args = ["init", "--hostname", "simhost"]
        for spec in gpus:
            args += ["--gpu", spec]
        self.ok(*args, *extra)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """gpusimctl as a separate process, as the fleet calls it."""
        env = dict(os.environ, GPUSIM_ROOT=str(self.root))
        return subprocess.run([sys.executable, str(GPUSIMCTL), *args], capture_output=True, text=True, env=env, check=False)

    def state(self) -> dict:
        from gpusim import store  # pylint: disable=import-outside-toplevel
        return store.load(str(self.root))


@pytest.fixture
def simhost(tmp_path, monkeypatch):
    root = tmp_path / "gpusim"
    monkeypatch.setenv("GPUSIM_ROOT", str(root))
    return SimHost(root)
