# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bench_site.py --task-cpu: the CPU each task of a run cost the controller and the fleet, all hosts together.

Reads the bench's two cgroups (paths in TASK_CPU_CONTROLLER and TASK_CPU_FLEET) when each task starts and when the
run ends; with the linear strategy every host finishes a task before the next starts, so the difference between two
task starts is that task's cost. Writes one line per task to TASK_CPU_OUT: controller CPU-s, fleet CPU-s, wall s,
play | task. A bench tool: not part of the collection (bench/ is left out of its build).
"""
from __future__ import annotations

import os
import sys
import time

from ansible.plugins.callback import CallbackBase

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_site import cgroup_seconds  # noqa: E402  pylint: disable=wrong-import-position


def _seconds(group: str) -> float:
    """CPU-seconds of a cgroup (bench_site.cgroup_seconds); 0 where it cannot be read."""
    try:
        return cgroup_seconds(group)
    except (OSError, ValueError, KeyError):
        return 0.0


class CallbackModule(CallbackBase):
    """Per-task CPU of a run (see the module docstring)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'task_cpu'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._groups = (os.environ.get('TASK_CPU_CONTROLLER', ''), os.environ.get('TASK_CPU_FLEET', ''))
        self._rows: list[tuple[str, float, float, float]] = []
        self._current: tuple | None = None
        self._play = ''

    def _mark(self, name: str) -> None:
        now = (_seconds(self._groups[0]), _seconds(self._groups[1]), time.monotonic())
        if self._current is not None:
            label, controller, fleet, started = self._current
            self._rows.append((label, now[0] - controller, now[1] - fleet, now[2] - started))
        self._current = (name,) + now

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()
        self._mark('%s | (play start)' % self._play)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._mark('%s | %s' % (self._play, task.get_name()))

    def v2_playbook_on_handler_task_start(self, task):
        self._mark('%s | handler: %s' % (self._play, task.get_name()))

    def v2_playbook_on_stats(self, stats):
        self._mark('(end)')
        path = os.environ.get('TASK_CPU_OUT')
        if not path:
            return
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write('controller_cpu_s\tfleet_cpu_s\twall_s\tplay | task\n')
            for label, controller, fleet, wall in self._rows:
                handle.write('%.3f\t%.3f\t%.2f\t%s\n' % (controller, fleet, wall, label))
