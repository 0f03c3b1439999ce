# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""host_state's wheel installer (_wheels): it installs what `pip install --no-index --find-links DIR` installs, file
for file, with a RECORD pip uninstalls from; it accepts the wheels pip accepts for the interpreter (checked against
packaging, the library pip uses) and evaluates markers and specifiers as packaging does; it refuses a hostile wheel
by name with nothing written outside the virtualenv; and where it cannot decide exactly, it says why and installs
nothing, so that the role runs pip."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging import markers as pmarkers
from packaging import specifiers as pspecifiers
from packaging import tags as ptags

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _wheels

REPO = Path(__file__).resolve().parents[4]
WHEELS = REPO / '.build' / 'exporter-wheels'
PYTHON = '/usr/bin/python3'


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'pip', '--python', str(venv / 'bin' / 'python'), '--disable-pip-version-check', *args],
                          capture_output=True, text=True, check=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _hash(data: bytes) -> str:
    return 'sha256=' + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()


def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes], tag: str = 'py3-none-any',
               requires: tuple[str, ...] = (), entry_points: str = '', requires_python: str = '',
               record_override: dict[str, str] | None = None, unrecorded: tuple[str, ...] = ()) -> Path:
    """A wheel as a build backend writes it: the files, a .dist-info with METADATA, WHEEL, entry points and RECORD."""
    info = '%s-%s.dist-info' % (name, version)
    members = dict(files)
    metadata = 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' % (name, version)
    metadata += ''.join('Requires-Dist: %s\n' % r for r in requires)
    if requires_python:
        metadata += 'Requires-Python: %s\n' % requires_python
    members[info + '/METADATA'] = metadata.encode()
    members[info + '/WHEEL'] = b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: %s\n' % tag.encode()
    if entry_points:
        members[info + '/entry_points.txt'] = entry_points.encode()
    rows = [[path, (record_override or {}).get(path, _hash(data)), str(len(data))] for path, data in members.items() if path not in unrecorded]
    rows.append([info + '/RECORD', '', ''])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerows(rows)
    members[info + '/RECORD'] = buffer.getvalue().encode()
    path = directory / ('%s-%s-%s.whl' % (name, version, tag))
    with zipfile.ZipFile(path, 'w') as archive:
        for member, data in members.items():
            entry = zipfile.ZipInfo(member)
            entry.external_attr = (0o755 if member.endswith('.sh') else 0o644) << 16
            archive.writestr(entry, data)
    return path


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / 'venv'
    assert run([PYTHON, '-m', 'venv', '--without-pip', str(venv)])[0] == 0
    return venv


# ----------------------------------------------------------------------------------------- the real wheels, with pip
def test_real_wheels_install_file_for_file_as_pip_installs_them_and_pip_uninstalls_them(tmp_path):
    requirements = ['bcrypt==5.0.0']
    ours = tmp_path / 'ours'
    result = _wheels.converge(run, str(ours), PYTHON, False, str(WHEELS), requirements, True)
    assert result == {'venv_created': True, 'installed': ['bcrypt==5.0.0'], 'removed': [], 'pip_needed': ''}
    theirs = tmp_path / 'theirs'
    assert run([PYTHON, '-m', 'venv', '--without-pip', str(theirs)])[0] == 0
    proc = _pip(theirs, 'install', '-q', '--no-index', '--find-links', str(WHEELS), *requirements)
    assert proc.returncode == 0, proc.stderr
    site = Path(sysconfig.get_path('purelib', vars={'base': str(ours), 'platbase': str(ours)}))
    mine, pips = _tree(site), _tree(theirs / site.relative_to(ours))
    assert _tree(ours / 'bin').keys() == _tree(theirs / 'bin').keys()
    # the same files (compiled modules included) with the same bytes; only who installed them differs
    assert sorted(mine) == sorted(pips)
    installer = [p for p in mine if p.endswith('.dist-info/INSTALLER')]
    for path in set(mine) - set(installer) - {p for p in mine if p.endswith('/RECORD') or p.endswith('.pyc')}:
        assert mine[path] == pips[path], path
    record = [p for p in mine if p.endswith('/RECORD')][0]

    def rows(text):
        return sorted(r for r in text.decode().splitlines() if '/INSTALLER,' not in r)
    assert rows(mine[record]) == rows(pips[record])
    # the virtualenv imports it, pip lists it and finds it consistent, and a rerun installs nothing
    assert run([str(ours / 'bin' / 'python'), '-c', 'import bcrypt; assert bcrypt.checkpw(b"a", bcrypt.hashpw(b"a", bcrypt.gensalt(4)))'])[0] == 0
    listed = json.loads(_pip(ours, 'list', '--format', 'json').stdout)
    assert {'name': 'bcrypt', 'version': '5.0.0'} in listed
    assert _pip(ours, 'check').returncode == 0
    assert _wheels.converge(run, str(ours), PYTHON, False, str(WHEELS), requirements, True)['installed'] == []
    assert _pip(ours, 'uninstall', '-y', 'bcrypt').returncode == 0
    assert not list(site.iterdir())


# -------------------------------------------------------------------------------------------------- a wheel's layout
def test_data_scripts_console_scripts_and_an_upgrade_that_removes_the_old_files(tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    make_wheel(wheels, 'demo', '1.0', {
        'demo/__init__.py': b'', 'demo/cli.py': b'def main():\n    print("demo 1.0")\n', 'demo/gone.py': b'OLD = 1\n',
        'demo-1.0.data/scripts/tool': b'#!python\nprint("tool")\n',
        'demo-1.0.data/data/share/demo/x.txt': b'x\n'}, entry_points='[console_scripts]\ndemo = demo.cli:main\n')
    venv = _venv(tmp_path)
    result = _wheels.converge(run, str(venv), PYTHON, False, str(wheels), ['demo==1.0'], True)
    assert result['installed'] == ['demo==1.0'] and not result['venv_created']
    assert run([str(venv / 'bin' / 'demo')])[1] == 'demo 1.0\n'
    tool = (venv / 'bin' / 'tool').read_text()
    assert tool.startswith('#!%s\n' % (venv / 'bin' / 'python')) and os.access(venv / 'bin' / 'tool', os.X_OK)
    assert run([str(venv / 'bin' / 'tool')])[1] == 'tool\n'
    assert (venv / 'share' / 'demo' / 'x.txt').read_bytes() == b'x\n'
    site = Path(sysconfig.get_path('purelib', vars={'base': str(venv), 'platbase': str(venv)}))
    assert list((site / 'demo' / '__pycache__').glob('cli.*.pyc'))

    make_wheel(wheels, 'demo', '2.0', {'demo/__init__.py': b'', 'demo/cli.py': b'def main():\n    print("demo 2.0")\n'},
               entry_points='[console_scripts]\ndemo = demo.cli:main\n')
    result = _wheels.converge(run, str(venv), PYTHON, False, str(wheels), ['demo==2.0'], True)
    assert result['installed'] == ['demo==2.0'] and result['removed'] == ['demo==1.0']
    assert run([str(venv / 'bin' / 'demo')])[1] == 'demo 2.0\n'
    assert not (site / 'demo' / 'gone.py').exists() and not list((site / 'demo' / '__pycache__').glob('gone.*'))
    assert not (venv / 'bin' / 'tool').exists() and not (venv / 'share' / 'demo').exists()
    assert [p.name for p in site.glob('*.dist-info')] == ['demo-2.0.dist-info']
    # pip reads the RECORD written here and removes everything
    assert _pip(venv, 'uninstall', '-y', 'demo').returncode == 0
    assert not list(site.iterdir()) and not (venv / 'bin' / 'demo').exists()


def test_check_mode_says_what_it_would_install_and_writes_nothing(tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    make_wheel(wheels, 'demo', '1.0', {'demo/__init__.py': b''})
    venv = tmp_path / 'venv'
    assert _wheels.converge(run, str(venv), PYTHON, False, str(wheels), ['demo==1.0'], False) == {
        'venv_created': True, 'installed': ['demo==1.0'], 'removed': [], 'pip_needed': ''}
    assert not venv.exists()
    _venv(tmp_path)
    assert _wheels.converge(run, str(venv), PYTHON, False, str(wheels), ['demo==1.0'], False)['installed'] == ['demo==1.0']
    site = Path(sysconfig.get_path('purelib', vars={'base': str(venv), 'platbase': str(venv)}))
    assert not list(site.iterdir())


# ---------------------------------------------------------------------------------------------------- hostile wheels
@pytest.mark.parametrize('files, kwargs, words', [
    ({'../evil.py': b'x'}, {}, "path '../evil.py' leaves its directory"),
    ({'/tmp/evil.py': b'x'}, {}, 'leaves its directory'),
    ({'demo-1.0.data/scripts/../../../../evil': b'x'}, {}, 'leaves its directory'),
    ({'demo/__init__.py': b'changed'}, {'record_override': {'demo/__init__.py': _hash(b'original')}}, 'does not match its RECORD hash'),
    ({'demo/__init__.py': b'', 'demo/extra.py': b'x'}, {'unrecorded': ('demo/extra.py',)}, 'demo/extra.py is not in its RECORD'),
    ({'demo-1.0.data/lib/x': b'x'}, {}, 'is in no scheme directory'),
], ids=['dotdot', 'absolute', 'scripts-dotdot', 'hash', 'unrecorded', 'unknown-scheme'])
def test_a_hostile_wheel_is_refused_by_name_and_nothing_lands_outside_the_virtualenv(tmp_path, files, kwargs, words):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    wheel = make_wheel(wheels, 'demo', '1.0', files, **kwargs)
    venv = _venv(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(_wheels.WheelError) as raised:
        _wheels.converge(run, str(venv), PYTHON, False, str(wheels), ['demo==1.0'], True)
    assert str(raised.value).startswith(wheel.name + ': ') and words in str(raised.value), raised.value
    outside = {k for k in set(_tree(tmp_path)) - set(before) if not k.startswith('venv/')}
    assert not outside and not (tmp_path / 'evil.py').exists() and not Path('/tmp/evil.py').exists()
    site = Path(sysconfig.get_path('purelib', vars={'base': str(venv), 'platbase': str(venv)}))
    assert not list(site.iterdir()), 'a refused wheel writes nothing'


# ----------------------------------------------------------------------------------- where pip must decide, and why
def test_what_it_cannot_decide_exactly_is_left_to_pip_with_the_reason(tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    needs = ('helper>=2.0', 'win-only; sys_platform == "win32"', 'docs-tool; extra == "docs"')
    make_wheel(wheels, 'needy', '1.0', {'needy/__init__.py': b''}, requires=needs)
    make_wheel(wheels, 'helper', '2.1', {'helper/__init__.py': b''})
    make_wheel(wheels, 'helper', '1.5', {'helper/__init__.py': b''})
    make_wheel(wheels, 'native', '1.0', {'native/__init__.py': b''}, tag='cp311-cp311-manylinux_2_28_aarch64')
    make_wheel(wheels, 'future', '1.0', {'future/__init__.py': b''}, requires_python='>=3.99')
    venv = _venv(tmp_path)

    def decide(*requirements):
        return _wheels.converge(run, str(venv), PYTHON, False, str(wheels), list(requirements), False)['pip_needed']
    assert decide('needy>=1') == "requirement 'needy>=1' is not pinned with =="
    assert decide('needy==1.0') == 'needy needs helper, which is neither in the requirements nor installed'
    assert decide('needy==1.0', 'helper==1.5') == 'needy needs helper >=2.0; helper is 1.5'
    assert decide('needy==1.0', 'helper==2.1') == ''
    assert decide('native==1.0').startswith('native==1.0: no wheel in %s for this interpreter' % wheels)
    assert decide('future==1.0') == 'future-1.0-py3-none-any.whl: needs Python >=3.99'
    assert decide('needy==1.0', 'helper==2.1', 'native==1.0; platform_machine == "aarch64"') == ''
    assert decide('nothere==1.0').startswith('nothere==1.0: no wheel in')


# ------------------------------------------------------------------------- tags, markers, specifiers against packaging
def _probed() -> dict:
    return _wheels.probe(run, sys.executable)


def test_the_wheels_accepted_are_those_pip_accepts_for_this_interpreter():
    info = _probed()
    supported = set(ptags.sys_tags())
    minor = sys.version_info[1]
    pythons = ['py3', 'py2', 'py%d%d' % (3, minor), 'py%d%d' % (3, minor + 1), 'cp%d%d' % (3, minor), 'cp39', 'cp%d%d' % (3, minor + 1), 'pp310']
    abis = ['none', 'abi3', 'cp%d%d' % (3, minor), 'cp39', 'cp%d%dd' % (3, minor)]
    machine = info['machine']
    plats = ['any', 'linux_%s' % machine, 'manylinux1_%s' % machine, 'manylinux2014_%s' % machine, 'manylinux_2_17_%s' % machine,
             'manylinux_2_28_%s' % machine, 'manylinux_2_99_%s' % machine, 'musllinux_1_2_%s' % machine,
             'manylinux2014_aarch64' if machine != 'aarch64' else 'manylinux2014_x86_64', 'win_amd64', 'macosx_11_0_arm64']
    for py, abi, plat in itertools.product(pythons, abis, plats):
        name = 'demo-1.0-%s-%s-%s.whl' % (py, abi, plat)
        assert _wheels.wheel_supported(name, info) == (ptags.Tag(py, abi, plat) in supported), name
    # compressed tag sets: any member supported
    assert _wheels.wheel_supported('bcrypt-5.0.0-cp39-abi3-manylinux2014_%s.manylinux_2_17_%s.whl' % (machine, machine), info)
    assert _wheels.wheel_supported('six-1.17.0-py2.py3-none-any.whl', info)
    assert not _wheels.wheel_supported('not-a-wheel.zip', info)


def test_glibc_and_musl_platforms_follow_the_hosts_libc():
    info = {'implementation': 'cpython', 'version': [3, 11, 2], 'machine': 'x86_64', 'bits': 64, 'sys_platform': 'linux', 'libc': 'glibc 2.31'}
    assert _wheels.wheel_supported('a-1-cp39-abi3-manylinux_2_28_x86_64.whl', info)
    assert not _wheels.wheel_supported('a-1-cp39-abi3-manylinux_2_34_x86_64.whl', info)
    assert not _wheels.wheel_supported('a-1-cp39-abi3-musllinux_1_1_x86_64.whl', info)
    musl = dict(info, libc='')
    assert not _wheels.wheel_supported('a-1-cp39-abi3-manylinux2014_x86_64.whl', musl)
    assert _wheels.wheel_supported('a-1-py3-none-any.whl', musl)
    assert _wheels.wheel_supported('a-1-cp39-abi3-musllinux_1_1_x86_64.whl', dict(info, libc='musl 1.2'))
    assert _wheels.wheel_supported('a-1-cp311-cp311-manylinux2014_i686.whl', dict(info, bits=32))


MARKERS = [
    'python_version >= "3.8"', 'python_version < "3.8"', 'python_version == "3.11" or python_version == "3.12"',
    'sys_platform == "linux" and platform_machine == "x86_64"', 'sys_platform != "win32"', '"linux" in sys_platform',
    'platform_machine not in "arm64 aarch64"', '(os_name == "nt" or os_name == "posix") and python_full_version >= "3.9.1"',
    'implementation_name == "cpython"', 'platform_python_implementation != "PyPy"', 'extra == "docs"',
    'python_version ~= "3.9"', '"3.7" < python_version', 'platform_system == "Linux"',
]


@pytest.mark.parametrize('marker', MARKERS)
def test_markers_evaluate_as_packaging_evaluates_them(marker):
    environment = _wheels.marker_environment(_probed())
    assert _wheels.marker_true(marker, environment) == pmarkers.Marker(marker).evaluate({'extra': ''}), marker


@pytest.mark.parametrize('marker', ['python_version >', 'nonsense == "1"', '(python_version >= "3"', 'python_version >= "3" xor 1'])
def test_a_marker_it_cannot_read_is_undecided_not_guessed(marker):
    assert _wheels.marker_true(marker, _wheels.marker_environment(_probed())) is None


@pytest.mark.parametrize('version, specifier', [
    ('3.11.2', '>=3.9'), ('3.11.2', '>=3.9,<3.11'), ('3.11', '!=3.11.*'), ('3.10.4', '==3.10.*'), ('2.1', '~=2.0'),
    ('3.0', '~=2.0'), ('1.4.5', '~=1.4.2'), ('1.5', '~=1.4.2'), ('5.0.0', '==5.0'), ('5.0.1', '>5.0'), ('1.0', '<=1.0.0'),
    ('26.3', '>=22'), ('1.2', '!=1.2.0'),
])
def test_plain_versions_meet_specifiers_as_packaging_says(version, specifier):
    assert _wheels.version_matches(version, specifier) == pspecifiers.SpecifierSet(specifier).contains(version), (version, specifier)


@pytest.mark.parametrize('version, specifier', [('1.0rc1', '>=1.0'), ('1.0.post1', '>1.0'), ('1!2.0', '>=1'), ('1.0', '>=1.0a1')])
def test_pre_post_and_epoch_versions_are_left_undecided(version, specifier):
    assert _wheels.version_matches(version, specifier) is None
