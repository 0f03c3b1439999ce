# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared by the property tests: the hypothesis profiles, hostile values, a module run in this process against the
simulated host, and the clean-failure checks.

Profiles: `ci` (what `make units` and `make test` run: derandomized, a few dozen examples per property, no example
database) and `fuzz` (`make fuzz`: many examples, random, failures kept in .build/hypothesis). The environment variable
GPUVIRT_HYPOTHESIS_PROFILE picks one; the profile applies only to these tests (`settings(PROFILE)` on each), never
globally.

A module runs the way Ansible runs it on a host (its `main`, the JSON arguments through AnsibleModule), in this
process for speed: the stand-in pynvml is swapped into `_nvml` for the test only (the real nvidia-ml-py stays what
`import pynvml` gives elsewhere), `GPUSIM_ROOT` names the simulated host and the stand-in nvidia-smi is first on PATH.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import unicodedata
from pathlib import Path

from ansible.module_utils.testing import patch_module_args
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

REPO = Path(__file__).resolve().parents[3]
SIM_LIB = REPO / 'sim' / 'lib'
SIM_BIN = REPO / 'sim' / 'bin'

if str(SIM_LIB) not in sys.path:
    sys.path.append(str(SIM_LIB))  # appended: the real pynvml stays first

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile('ci', derandomize=True, database=None, max_examples=40, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.register_profile('fuzz', max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_SLOW_OK,
                          database=DirectoryBasedExampleDatabase(str(REPO / '.build' / 'hypothesis')))
PROFILE_NAME = os.environ.get('GPUVIRT_HYPOTHESIS_PROFILE', 'ci')
PROFILE = settings.get_profile(PROFILE_NAME)
# Checks to leave out while exploring past a known failure (comma-separated: control, raw), never in make test.
SKIP = set(filter(None, os.environ.get('GPUVIRT_PROPS_SKIP', '').split(',')))


def examples(ci: int) -> settings:
    """The profile, with `ci` examples in the ci profile (the fuzz profile keeps its own count)."""
    return settings(PROFILE, max_examples=ci) if PROFILE_NAME == 'ci' else PROFILE


def sim_pynvml():
    """The NVML stand-in under a private module name (never shadowing nvidia-ml-py's pynvml)."""
    if 'sim_pynvml' not in sys.modules:
        spec = importlib.util.spec_from_file_location('sim_pynvml', str(SIM_LIB / 'pynvml.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules['sim_pynvml'] = module
        spec.loader.exec_module(module)
    return sys.modules['sim_pynvml']


@contextlib.contextmanager
def simulated(root: str):
    """The simulated host `root` behind _nvml, GPUSIM_ROOT and PATH, for the duration of a test."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.gpuvirt.fleet.plugins.module_utils import _nvml
    nvml = sim_pynvml()
    saved = (_nvml.pynvml, _nvml.HAS_PYNVML, os.environ.get('GPUSIM_ROOT'), os.environ['PATH'])
    _nvml.pynvml, _nvml.HAS_PYNVML = nvml, True
    os.environ['GPUSIM_ROOT'] = root
    os.environ['PATH'] = str(SIM_BIN) + os.pathsep + saved[3]
    try:
        yield
    finally:
        while nvml._refcount > 0:  # pylint: disable=protected-access
            nvml.nvmlShutdown()
        _nvml.pynvml, _nvml.HAS_PYNVML = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop('GPUSIM_ROOT', None)
        else:
            os.environ['GPUSIM_ROOT'] = saved[2]
        os.environ['PATH'] = saved[3]


def run_module(main, args: dict, check_mode: bool = False) -> dict:
    """Run a module's `main` with `args` as Ansible passes them; its JSON result. An exception escaping the module (a
    traceback on a real host) propagates and fails the property."""
    payload = dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)
    out = io.StringIO()
    with patch_module_args(payload), contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit:
            pass
    text = out.getvalue()
    assert text, 'the module printed no result'
    return json.loads(text)


def _control(char: str) -> bool:
    return unicodedata.category(char) in ('Cc', 'Cf', 'Zl', 'Zp') and char != '\n'


def assert_clean_failure(result: dict, given=()) -> None:
    """A module failure with a message about the input: no traceback, no 'unexpected error', no raw control character
    (a newline only between lines, never inside one of the `errors` lines), and none of the hostile strings in `given`
    that carry a control character copied raw."""
    assert result.get('failed') is True, result
    msg = result.get('msg')
    assert isinstance(msg, str) and msg.strip(), 'a failure without a message: %r' % (result,)
    text = json.dumps(result)
    assert 'Traceback' not in text, msg
    assert 'exception' not in result, 'a failure with a traceback: %s' % msg
    assert 'unexpected error' not in msg.lower(), msg
    if 'control' in SKIP:
        return
    bad = [char for char in msg if _control(char)]
    assert not bad, 'raw control characters %r in the message: %r' % (bad, msg)
    for line in result.get('errors') or []:
        assert '\n' not in line and not any(_control(char) for char in line), 'an errors line with a control character: %r' % line
    for value in given:
        visible = isinstance(value, str) and any(not _control(char) and not char.isspace() for char in value)
        if visible and any(_control(char) or char == '\n' for char in value):
            assert value not in msg, 'a hostile value copied raw into the message: %r in %r' % (value, msg)


def hostile_strings() -> st.SearchStrategy:
    """Strings an operator should never get through unquoted: control characters, escapes, unicode, shell syntax."""
    return st.one_of(
        st.sampled_from(['', ' ', 'all', '0', '-1', '1e9', '\n', 'a\nFAILED! => fake', '\x1b[31mred\x1b[0m', '\x00', '\t',
                         '$(reboot)', '; rm -rf /', '../../etc', '\u202eevil', '\u0663', '\uff11', 'None', 'null',
                         '{{ lookup("pipe", "id") }}', '\u2028', 'GPU-\u00e9']),
        st.just('x' * 5000),
        st.text(st.characters(codec='utf-8', exclude_categories=('Cs',)), max_size=20),
    )


def hostile_values(depth: int = 1) -> st.SearchStrategy:
    """Any JSON value a YAML inventory can hold: wrong types, huge and negative numbers, null, nesting."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([-1, 0, 2 ** 31, 2 ** 63, 10 ** 8]),
                        st.floats(allow_nan=False, allow_infinity=False), hostile_strings())
    if depth <= 0:
        return scalars
    inner = hostile_values(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3), st.dictionaries(hostile_strings(), inner, max_size=3))


def maybe(good: st.SearchStrategy, hostile: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Mostly `good` (shrinks to it), sometimes a hostile value."""
    return st.one_of(good, good, good, hostile if hostile is not None else hostile_values())


def strings_in(value) -> list[str]:
    """Every string inside a generated value, for the raw-copy check."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def run_and_check(host, main, args: dict, check_mode: bool) -> dict | None:
    """Run `main` on `host` from its pristine state (`host.restore()`, `host.read()` give and compare its bytes): a
    failure must be clean and leave the host unchanged, and so must check mode. Returns the result of a real run
    that succeeded, for the caller to verify further, else None."""
    host.restore()
    before = host.read()
    result = run_module(main, args, check_mode=check_mode)
    if result.get('failed'):
        event('failed')
        assert_clean_failure(result, strings_in(args))
        assert host.read() == before, 'a refused declaration changed the host: %s' % result['msg']
        return None
    event('succeeded')
    if check_mode:
        assert host.read() == before, 'check mode changed the host'
        return None
    return result
