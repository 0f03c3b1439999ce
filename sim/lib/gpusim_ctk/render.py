"""The spec as the toolkit writes it: YAML (a `---` document, keys in sorted order, as the real tool's output) or
indented JSON. A small block-style emitter for the plain data a spec holds (mappings, lists, strings, integers)."""
from __future__ import annotations

import json
import re

_PLAIN = re.compile(r"^(?:[A-Za-z/_][A-Za-z0-9/_.=-]*|\d+\.\d+\.\d+)$")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)


def _lines(value, indent: int) -> list[str]:
    pad = " " * indent
    out = []
    if isinstance(value, dict):
        for key in sorted(value):
            item = value[key]
            if isinstance(item, (dict, list)) and item:
                out.append("%s%s:" % (pad, key))
                out.extend(_lines(item, indent + (0 if isinstance(item, list) else 2)))
            else:
                out.append("%s%s: %s" % (pad, key, _empty(item) if isinstance(item, (dict, list)) else _scalar(item)))
    else:
        for item in value:
            if isinstance(item, dict) and item:
                inner = _lines(item, indent + 2)
                out.append(pad + "- " + inner[0][indent + 2:])
                out.extend(inner[1:])
            elif isinstance(item, list) and item:
                inner = _lines(item, indent + 2)
                out.append(pad + "- " + inner[0][indent + 2:])
                out.extend(inner[1:])
            else:
                out.append("%s- %s" % (pad, _empty(item) if isinstance(item, (dict, list)) else _scalar(item)))
    return out


def _empty(value) -> str:
    return "{}" if isinstance(value, dict) else "[]"


def to_yaml(spec: dict) -> str:
    return "---\n" + "\n".join(_lines(spec, 0)) + "\n"


def to_json(spec: dict) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def names_from_text(text: str) -> tuple[str | None, list[str]]:
    """(kind, device names) of a spec file this tool wrote (JSON, or the YAML above): what `cdi list` needs."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        return data.get("kind"), [d.get("name") for d in data.get("devices", [])]
    kind = None
    names = []
    in_devices = False
    for line in text.splitlines():
        if not line.startswith((" ", "-")):
            in_devices = line.startswith("devices:")
            if line.startswith("kind:"):
                kind = line.split(":", 1)[1].strip().strip('"')
            continue
        match = re.match(r"^(?:- |  )name: (.*)$", line)
        if in_devices and match:
            value = match.group(1).strip()
            names.append(json.loads(value) if value.startswith('"') else value)
    return kind, names
