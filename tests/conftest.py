# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Markers of the whole test tree, and the figures of the rollback sweep (`make sweep`).

`sweep` marks the wide rollback sweeps of issue 15 (a fault at every step of several changes, and a second, transient
fault at every call of each rollback): opt-in, left out of `make units` and `make integration` (-m "not sweep").
A sweep test records {'scenario', 'forward', 'rollback', 'failures'} as its 'sweep' property; the summary prints them.
"""
from __future__ import annotations

_SWEEP: list[dict] = []


def pytest_configure(config):
    config.addinivalue_line('markers', 'sweep: the wide rollback sweep of issue 15 (slow, opt-in: make sweep)')


def pytest_runtest_logreport(report):
    if report.when == 'call':
        _SWEEP.extend(value for key, value in report.user_properties if key == 'sweep')


def pytest_terminal_summary(terminalreporter):
    if not _SWEEP:
        return
    write = terminalreporter.write_line
    write('rollback sweep: positions checked per scenario (forward steps k; rollback calls j failing once after k)')
    for row in sorted(_SWEEP, key=lambda r: r['scenario']):
        write('  %-40s forward %4d  rollback %5d  failures %d' % (row['scenario'], row['forward'], row['rollback'], row['failures']))
    total = ('total (%d scenarios)' % len(_SWEEP),) + tuple(sum(r[key] for r in _SWEEP) for key in ('forward', 'rollback', 'failures'))
    write('  %-40s forward %4d  rollback %5d  failures %d' % total)


def pytest_sessionfinish(session, exitstatus):
    """With GPUVIRT_NO_SKIPS=1 (make units, make integration) a skipped test fails the run: a check that did not run
    (a missing tool, no root) is never reported as a pass."""
    import os  # pylint: disable=import-outside-toplevel
    if os.environ.get('GPUVIRT_NO_SKIPS') != '1' or hasattr(session.config, 'workerinput') or exitstatus not in (0, 1):
        return
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    skipped = (reporter.stats.get('skipped', []) if reporter is not None else [])
    if skipped:
        for report in skipped:
            reporter.write_line('SKIPPED (not allowed here): %s %s' % (report.nodeid, report.longrepr[2] if isinstance(report.longrepr, tuple) else ''))
        session.exitstatus = 1
