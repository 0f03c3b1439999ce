# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The text exposition of a scrape, built from pieces rendered once.

A family's HELP/TYPE header and each series' `name{labels} ` prefix are rendered the first time they are seen, by
prometheus_client itself (gpuvirt names) or by dcgm.render_verbatim (dcgm names, counters without _total), and kept:
a scrape then only formats values. Label sets repeat from scrape to scrape (a GPU's identity, a MIG instance, a vGPU), so
the cache stays the size of one scrape; it is emptied if it ever grows past LIMIT (label values that keep changing).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from gpuvirt_exporter.dcgm import VerbatimMetric, render_verbatim

LIMIT = 100_000
TEXT_LIMIT = 4096  # values seen often (0, 1, clocks, limits) keep their text; 1 and 1.0 are one key, as they are one value
_TEXT: dict = {}


class _One:
    def __init__(self, metric):
        self.metric = metric

    def collect(self):
        return [self.metric]


def _render_one(name: str, doc: str, kind: str, keys: list[str], values: list[str], verbatim: bool) -> str:
    if verbatim:
        metric = VerbatimMetric(name, doc, kind)
        metric.add_sample(name, dict(zip(keys, values)), 0.0)
        return render_verbatim(metric)
    family = (CounterMetricFamily if kind == 'counter' else GaugeMetricFamily)(name, doc, labels=keys)
    family.add_metric(values, 0.0)
    return generate_latest(_One(family)).decode('utf-8')


class Rendered:
    """One family of one scrape: its cached header and one line per series (server.render writes `exposition` as is)."""

    verbatim = True
    __slots__ = ('name', 'documentation', 'type', 'lines')

    def __init__(self, name: str, doc: str, kind: str, header: str):
        self.name, self.documentation, self.type = name, doc, kind
        self.lines = [header]

    @property
    def exposition(self) -> str:
        return ''.join(self.lines)

    @property
    def samples(self) -> list:
        """The series as prometheus_client samples, for a caller that reads them (read back from the text)."""
        return [sample for family in text_string_to_metric_families(self.exposition) for sample in family.samples]


class TextCache:
    """Headers per family name and line prefixes per (name, label values), across scrapes."""

    def __init__(self):
        self.headers: dict[str, str] = {}  # name -> HELP and TYPE lines
        self.prefixes: dict[tuple, str] = {}  # (name, label values or entity number) -> 'sample_name{labels} '
        self.entities: dict[tuple, int] = {}  # (label keys, label values) -> entity number

    def entity(self, keys: tuple, values: tuple) -> int:
        """A number for one label set, so that the series of one GPU or MIG instance find their prefixes by it."""
        found = self.entities.get((keys, values))
        if found is None:
            if len(self.entities) >= LIMIT:
                self.entities.clear()
                self.prefixes.clear()
            found = self.entities[(keys, values)] = len(self.entities) + 1
        return found

    def prefix(self, name, doc, kind, keys, values: tuple, verbatim) -> str:
        key = (name, values)
        found = self.prefixes.get(key)
        if found is None:
            if len(self.prefixes) >= LIMIT:
                self.prefixes.clear()
            text = _render_one(name, doc, kind, keys, values, verbatim)
            head = [line for line in text.splitlines(True) if line.startswith('#')]
            line = next(line for line in text.splitlines() if not line.startswith('#'))
            self.headers.setdefault(name, ''.join(head))
            found = self.prefixes[key] = line[:line.rindex(' ') + 1]
        return found


class Entity:
    """The series of one label set (a GPU, a MIG instance) in a scrape: add() finds each prefix by a small key."""

    __slots__ = ('families', 'keys', 'values', 'number')

    def __init__(self, families, keys, values):
        self.families = families
        self.keys = tuple(keys)
        self.values = tuple(values)
        self.number = families.cache.entity(self.keys, self.values)

    def gauge(self, name: str, doc: str, value) -> None:
        """A gpuvirt gauge of this label set, kept as Families.gauge keeps it (naming mode)."""
        fam = self.families
        if value is not None and (fam.gpuvirt or name.startswith(fam.kept)):
            self.add(name, doc, 'gauge', value, False)

    def add(self, name: str, doc: str, kind: str, value, verbatim: bool) -> None:
        fam = self.families
        cache = fam.cache
        prefix = cache.prefixes.get((name, self.number))
        if prefix is None:
            prefix = cache.prefixes[(name, self.number)] = cache.prefix(name, doc, kind, self.keys, self.values, verbatim)
        family = fam.items.get(name)
        if family is None:
            family = fam.items[name] = Rendered(name, doc, kind, cache.headers[name])
        text = _TEXT.get(value)
        if text is None:
            text = _text(value)
        family.lines.append(prefix + text + '\n')


def _text(value) -> str:
    value = float(value)
    text = floatToGoString(value)
    if len(_TEXT) < TEXT_LIMIT:
        _TEXT[value] = text
    return text


class Families:
    """The families of one scrape, in first-use order, over a TextCache."""

    def __init__(self, cache: TextCache, gpuvirt: bool = True, kept: tuple = ()):
        self.cache = cache
        self.items: dict[str, Rendered] = {}
        self.gpuvirt = gpuvirt  # False: only the gpuvirt_* series whose names start with one of `kept`
        self.kept = kept

    def entity(self, keys, values) -> Entity:
        return Entity(self, keys, values)

    def gauge(self, name: str, doc: str, labels: list[str], values: list[str], value) -> None:
        if value is not None and (self.gpuvirt or name.startswith(self.kept)):
            self.add(name, doc, 'gauge', labels, values, value, False)

    def counter(self, name: str, doc: str, labels: list[str], values: list[str], value) -> None:
        if value is not None and (self.gpuvirt or name.startswith(self.kept)):
            self.add(name, doc, 'counter', labels, values, value, False)

    def add(self, name, doc, kind, keys, values, value, verbatim: bool) -> None:  # pylint: disable=too-many-arguments
        """One series; verbatim: rendered the dcgm way (name as is, no _total)."""
        if values.__class__ is not tuple:
            values = tuple(values)
        prefix = self.cache.prefixes.get((name, values))
        if prefix is None:
            prefix = self.cache.prefix(name, doc, kind, keys, values, verbatim)
        family = self.items.get(name)
        if family is None:
            family = self.items[name] = Rendered(name, doc, kind, self.cache.headers[name])
        text = _TEXT.get(value)
        if text is None:
            text = _text(value)
        family.lines.append(prefix + text + '\n')
