# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The text exposition of a scrape (Prometheus text format 0.0.4), built from pieces rendered once.

A family's HELP/TYPE header and each series' `name{labels} ` prefix are rendered the first time they are seen and kept:
a scrape then only formats values. gpuvirt counters are written as prometheus_client writes them (name_total on the
sample and in HELP/TYPE); dcgm names are written as is (dcgm-exporter's counters have no _total). Labels are sorted,
label values and HELP escaped as the format asks. Label sets repeat from scrape to scrape (a GPU's identity, a MIG
instance, a vGPU), so the cache stays the size of one scrape; it is emptied if it ever grows past LIMIT (label values
that keep changing). The exporter needs no Prometheus client library: importing one costs more memory than the whole
collector.
"""

from __future__ import annotations

import math

LIMIT = 100_000
TEXT_LIMIT = 4096  # values seen often (0, 1, clocks, limits) keep their text; 1 and 1.0 are one key, as they are one value
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
_TEXT: dict = {}


def escape_help(text: str) -> str:
    return text.replace('\\', r'\\').replace('\n', r'\n')


def escape_label(text: str) -> str:
    return text.replace('\\', r'\\').replace('\n', r'\n').replace('"', r'\"')


def sample_name(name: str, kind: str, verbatim: bool) -> str:
    """The name a series is written under: gpuvirt counters end in _total, dcgm names stay as they are."""
    return name + '_total' if kind == 'counter' and not verbatim and not name.endswith('_total') else name


def header(name: str, doc: str, kind: str, verbatim: bool) -> str:
    shown = sample_name(name, kind, verbatim)
    return '# HELP %s %s\n# TYPE %s %s\n' % (shown, escape_help(doc), shown, kind)


def series_prefix(name: str, keys, values) -> str:
    """`name{k="v",...} `, labels sorted by name."""
    labels = ','.join('%s="%s"' % (key, escape_label(str(value))) for key, value in sorted(zip(keys, values)))
    return '%s{%s} ' % (name, labels) if labels else name + ' '


def go_float(value) -> str:
    """A sample value as Go (and so Prometheus and prometheus_client) writes it: NaN, +Inf, -Inf; Python's shortest
    repr, except that a positive number of 7 or more integer digits is written with an exponent (1.5e+11)."""
    value = float(value)
    if math.isnan(value):
        return 'NaN'
    if math.isinf(value):
        return '+Inf' if value > 0 else '-Inf'
    text = repr(value)
    if value > 0 and 'e' not in text:
        whole, _dot, fraction = text.partition('.')
        if len(whole) > 6:
            digits = (whole + fraction).rstrip('0')
            return '%s%se+%02d' % (digits[0], '.' + digits[1:] if len(digits) > 1 else '', len(whole) - 1)
    return text


def render_family(metric) -> str:
    """The text of a family from another collector (name, documentation, type, samples with name, labels, value), or
    the cached text of one of ours."""
    ready = getattr(metric, 'exposition', None)
    if ready is not None:
        return ready
    verbatim = getattr(metric, 'verbatim', False)
    lines = [header(metric.name, metric.documentation, metric.type, verbatim)]
    for sample in metric.samples:
        labels = sample.labels
        lines.append(series_prefix(sample.name, list(labels), list(labels.values())) + go_float(sample.value) + '\n')
    return ''.join(lines)


class Rendered:
    """One family of one scrape: its cached header and one line per series (server.render writes `exposition` as is)."""

    verbatim = True
    __slots__ = ('name', 'documentation', 'type', 'lines')

    def __init__(self, name: str, doc: str, kind: str, lines: list):
        self.name, self.documentation, self.type = name, doc, kind
        self.lines = lines

    @property
    def exposition(self) -> str:
        return ''.join(self.lines)

    @property
    def samples(self) -> list:
        """The series as prometheus_client samples, for a caller that reads them (read back from the text with
        prometheus_client's parser, imported only then)."""
        from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel
        return [sample for family in text_string_to_metric_families(self.exposition) for sample in family.samples]


class TextCache:
    """Headers per family name and line prefixes per (name, label values), across scrapes."""

    def __init__(self):
        self.headers: dict[str, str] = {}  # name -> HELP and TYPE lines
        self.prefixes: dict[tuple, str] = {}  # (name, label values or entity number) -> 'sample_name{labels} '
        self.entities: dict[tuple, int] = {}  # (label keys, label values) -> entity number
        self.blocks: dict[tuple, list] = {}  # (name, entity numbers) -> the prefixes of that series for those entities

    def entity(self, keys: tuple, values: tuple) -> int:
        """A number for one label set, so that the series of one GPU or MIG instance find their prefixes by it."""
        found = self.entities.get((keys, values))
        if found is None:
            if len(self.entities) >= LIMIT:
                self.entities.clear()
                self.prefixes.clear()
                self.blocks.clear()
            found = self.entities[(keys, values)] = len(self.entities) + 1
        return found

    def prefix(self, name, doc, kind, keys, values: tuple, verbatim) -> str:
        key = (name, values)
        found = self.prefixes.get(key)
        if found is None:
            if len(self.prefixes) >= LIMIT:
                self.prefixes.clear()
            if name not in self.headers:
                self.headers[name] = header(name, doc, kind, verbatim)
            found = self.prefixes[key] = series_prefix(sample_name(name, kind, verbatim), keys, values)
        return found


class Entity:
    """The series of one label set (a GPU, a MIG instance) in a scrape: each finds its prefix by a small key."""

    __slots__ = ('families', 'keys', 'values', 'number')

    def __init__(self, families, keys, values):
        self.families = families
        self.keys = tuple(keys)
        self.values = tuple(values)
        self.number = families.cache.entity(self.keys, self.values)

    def gauge(self, name: str, doc: str, value) -> None:
        """A gpuvirt gauge of this label set, kept as Families.gauge keeps it (naming mode)."""
        if value is not None:
            self._one(name, doc, 'gauge', value)

    def counter(self, name: str, doc: str, value) -> None:
        if value is not None:
            self._one(name, doc, 'counter', value)

    def gauge_by(self, name: str, doc: str, label: str, label_value: str, value) -> None:  # pylint: disable=too-many-arguments
        """A gpuvirt gauge of this label set and one label more (a GPU's clocks, its throttle reasons...)."""
        if value is not None:
            self._by(name, doc, 'gauge', label, label_value, value)

    def counter_by(self, name: str, doc: str, label: str, label_value: str, value) -> None:  # pylint: disable=too-many-arguments
        if value is not None:
            self._by(name, doc, 'counter', label, label_value, value)

    def _by(self, name: str, doc: str, kind: str, label: str, label_value: str, value) -> None:  # pylint: disable=too-many-arguments
        fam = self.families
        if not fam.gpuvirt and not name.startswith(fam.kept):
            return
        cache = fam.cache
        key = (name, self.number, label_value)  # one label name per family: its value tells the series apart
        prefix = cache.prefixes.get(key)
        if prefix is None:
            prefix = cache.prefixes[key] = cache.prefix(name, doc, kind, self.keys + (label,), self.values + (label_value,), False)
        fam.line(name, doc, kind, prefix, value)

    def _one(self, name: str, doc: str, kind: str, value) -> None:
        fam = self.families
        if fam.gpuvirt or name.startswith(fam.kept):
            fam.line(name, doc, kind, self.prefix(name, doc, kind, False), value)

    def prefix(self, name: str, doc: str, kind: str, verbatim: bool) -> str:
        """`name{labels} ` of a series of this label set."""
        found = self.families.cache.prefixes.get((name, self.number))
        return self._prefix(name, doc, kind, verbatim) if found is None else found

    def _prefix(self, name: str, doc: str, kind: str, verbatim: bool) -> str:
        cache = self.families.cache
        cache.prefixes[(name, self.number)] = found = cache.prefix(name, doc, kind, self.keys, self.values, verbatim)
        return found

    def add_many(self, series, verbatim: bool) -> None:
        """Several series of this label set, (name, HELP, kind, value) each, in one loop (a MIG instance has about 25)."""
        fam = self.families
        items, prefixes, number = fam.items, fam.cache.prefixes, self.number
        for name, doc, kind, value in series:
            prefix = prefixes.get((name, number))
            if prefix is None:
                prefix = self._prefix(name, doc, kind, verbatim)
            lines = items.get(name)
            if lines is None:
                lines = fam.family(name, doc, kind)
            text = _TEXT.get(value)
            lines.append(prefix + (_text(value) if text is None else text))


def _text(value) -> str:
    """The text of a value and the line's end; the texts of values seen often are kept."""
    value = float(value)
    text = go_float(value) + '\n'
    if len(_TEXT) < TEXT_LIMIT and text != '-0.0\n':  # -0.0 == 0.0: it must not become the text of every zero
        _TEXT[value] = text
    return text


class Families:
    """The families of one scrape, in first-use order, over a TextCache: items maps a family name to its lines, the
    cached header first; collect() gives them as Rendered families."""

    def __init__(self, cache: TextCache, gpuvirt: bool = True, kept: tuple = ()):
        self.cache = cache
        self.items: dict[str, list] = {}
        self.kinds: dict[str, tuple] = {}  # name -> (HELP, kind) of the families of this scrape
        self.gpuvirt = gpuvirt  # False: only the gpuvirt_* series whose names start with one of `kept`
        self.kept = kept

    def entity(self, keys, values) -> Entity:
        return Entity(self, keys, values)

    def family(self, name: str, doc: str, kind: str) -> list:
        """The lines of a family new in this scrape: its cached header first."""
        self.kinds[name] = (doc, kind)
        lines = self.items[name] = [self.cache.headers[name]]
        return lines

    def collect(self) -> list:
        """The families of this scrape, as exposition.Rendered (what a collector's collect() returns)."""
        return [Rendered(name, self.kinds[name][0], self.kinds[name][1], lines) for name, lines in self.items.items()]

    def block(self, name: str, doc: str, kind: str, entities: list, numbers: tuple, value) -> None:  # pylint: disable=too-many-arguments
        """One dcgm series with the same value for several label sets (numbers: theirs), one line each, written in one
        join: dcgm-exporter repeats a GPU's GPU-wide series for each of its MIG instances."""
        key = (name, numbers)
        prefixes = self.cache.blocks.get(key)
        if prefixes is None:
            if len(self.cache.blocks) >= LIMIT:
                self.cache.blocks.clear()
            prefixes = self.cache.blocks[key] = [entity.prefix(name, doc, kind, True) for entity in entities]
        text = _TEXT.get(value)
        self.line(name, doc, kind, (_text(value) if text is None else text).join(prefixes), value)  # p1 v p2 v ... pN, then v

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
        self.line(name, doc, kind, prefix, value)

    def line(self, name: str, doc: str, kind: str, prefix: str, value) -> None:
        """The series line `prefix value` into its family (made with its cached header the first time in this scrape)."""
        lines = self.items.get(name)
        if lines is None:
            lines = self.family(name, doc, kind)
        text = _TEXT.get(value)
        lines.append(prefix + (_text(value) if text is None else text))
