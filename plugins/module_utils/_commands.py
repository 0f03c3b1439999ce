# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The one door the command seams (``_packages``, ``_services``) share: run a command, log it, raise on failure.

A ``Runner`` wraps the module's ``run_command``; every command it runs lands in ``log`` as ``{cmd, rc}``, in order,
which is what the driver module returns as ``commands``. It decides nothing and knows no command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Callable


class CommandError(Exception):
    """A command failed; ``output`` carries its stdout and stderr."""

    def __init__(self, msg: str, output: str = ''):
        super().__init__(msg)
        self.output = output


class Runner:
    def __init__(self, run_command: Callable[..., tuple]):
        self.run_command = run_command
        self.log: list[dict] = []

    def run(self, argv: list[str], environ: Mapping[str, str], check: bool = True) -> tuple[int, str, str]:
        """Run `argv` with `environ` added; a non-zero exit raises CommandError unless `check` is false."""
        rc, out, err = self.run_command(argv, environ_update=dict(environ))
        self.log.append({'cmd': ' '.join(argv), 'rc': rc})
        if check and rc != 0:
            lines = (err or out or '').strip().splitlines()
            raise CommandError('%s failed (rc=%d): %s' % (' '.join(argv), rc, lines[-1] if lines else 'no output'),
                               output=(out or '') + (err or ''))
        return rc, out, err


def executable(get_bin_path: Callable[[str], object], name: str):
    """The path of the tool `name`: searched on PATH (`get_bin_path`, the module's) where it is a bare name, taken as it
    is where it is a path and executable; None where there is none."""
    if '/' not in name:
        return get_bin_path(name)
    return name if os.access(name, os.X_OK) else None
