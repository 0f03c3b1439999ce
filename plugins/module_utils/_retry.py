# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Bounded retries with a short backoff, for the rollbacks of _mig_apply and _vgpu_apply.

A rollback that meets a transient fault (a busy driver, a write refused once) tries the step again: three tries, 0.05 s
and 0.2 s apart. The sleeps are bounded for the whole rollback too (`budget`, 2 s): once it is spent, a failing step
gets one try, so a permanent fault costs little more time than it did without retries. `sleep` is injectable, so that
tests need not wait.
"""

from __future__ import annotations

import time
from typing import Any, Callable

DELAYS = (0.05, 0.2)
BUDGET = 2.0


class GaveUp(Exception):
    """Every try failed: `error` is the last error, `tries` how many tries there were."""

    def __init__(self, error: BaseException, tries: int):
        super().__init__(str(error))
        self.error = error
        self.tries = tries


class Retrier:
    """Runs an action up to len(delays) + 1 times while it raises one of `errors`; counts what it slept."""

    def __init__(self, sleep: Callable[[float], Any] | None = None, delays: tuple = DELAYS, budget: float = BUDGET):
        self.sleep = time.sleep if sleep is None else sleep
        self.delays = tuple(delays)
        self.budget = budget
        self.slept = 0.0

    def run(self, action: Callable[[], Any], errors: tuple) -> tuple[Any, int]:
        """(what `action()` returned, the number of tries it took); GaveUp when every try failed."""
        tries = 0
        for delay in self.delays + (None,):
            tries += 1
            try:
                return action(), tries
            except errors as exc:
                if delay is None or self.slept + delay > self.budget:
                    raise GaveUp(exc, tries) from exc
            self.slept += delay
            self.sleep(delay)
        raise AssertionError('unreachable')  # pragma: no cover
