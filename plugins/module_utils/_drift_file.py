# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The declaration drift file (gpuvirt_drift_file) the exporter publishes as gpuvirt_declaration_drift{kind}: a JSON
object of kind -> {"drift": bool, "checked": epoch seconds}. One kind's entry is merged in (or removed) in one call,
the other kinds' entries are kept as they are. Standard library only: the module runs it on the host.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional


class DriftFileError(Exception):
    """The file exists but is not a JSON object: nothing is written."""


def read(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DriftFileError('%s is not a JSON object of kind -> {"drift": bool, "checked": seconds} (%s); remove it and rerun'
                             % (path, exc)) from exc
    if not isinstance(data, dict):
        raise DriftFileError('%s is not a JSON object of kind -> {"drift": bool, "checked": seconds} (it holds a %s); remove it and rerun'
                             % (path, type(data).__name__))
    return data


def merge(old: dict, kind: str, drift: Optional[bool], checked: Optional[int]) -> tuple[Optional[dict], Any]:
    """(the new content, or None where nothing is to be written; the entry's drift before: True, False or None)."""
    was = old[kind].get('drift') if isinstance(old.get(kind), dict) else None
    if drift is None:
        if kind not in old:
            return None, was
        return {k: v for k, v in old.items() if k != kind}, was
    new = dict(old)
    new[kind] = {'drift': drift, 'checked': checked}
    return new, was


def write(path: str, content: dict) -> None:
    """Replace the file atomically (mode 0644), making its directory (0755) where it is missing."""
    directory = os.path.dirname(path) or '.'
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.drift-', dir=directory)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(json.dumps(content, indent=4, sort_keys=True) + '\n')
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
