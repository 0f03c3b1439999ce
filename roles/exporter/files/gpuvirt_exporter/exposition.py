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
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gpuvirt_exporter.dcgm import VerbatimMetric, render_verbatim

LIMIT = 100_000


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
    __slots__ = ('name', 'documentation', 'type', 'lines', 'series')

    def __init__(self, name: str, doc: str, kind: str, header: str):
        self.name, self.documentation, self.type = name, doc, kind
        self.lines = [header]
        self.series: list = []  # (sample name, labels, value), for callers that read samples

    @property
    def exposition(self) -> str:
        return ''.join(self.lines)

    @property
    def samples(self) -> list:
        return [Sample(name, dict(labels), value) for name, labels, value in self.series]


class TextCache:
    """Headers per family name and line prefixes per (name, label values), across scrapes."""

    def __init__(self):
        self.headers: dict[str, tuple[str, str]] = {}  # name -> (header text, sample name)
        self.prefixes: dict[tuple, tuple[str, str, dict]] = {}  # (name, values) -> (prefix, sample name, labels)

    def prefix(self, name, doc, kind, keys, values, verbatim) -> tuple[str, str, dict]:
        key = (name, tuple(values))
        found = self.prefixes.get(key)
        if found is None:
            if len(self.prefixes) >= LIMIT:
                self.prefixes.clear()
            text = _render_one(name, doc, kind, keys, values, verbatim)
            head = [line for line in text.splitlines(True) if line.startswith('#')]
            line = next(line for line in text.splitlines() if not line.startswith('#'))
            prefix = line[:line.rindex(' ') + 1]
            sample_name = prefix.split('{', 1)[0].strip()
            self.headers.setdefault(name, (''.join(head), sample_name))
            found = self.prefixes[key] = (prefix, sample_name, dict(zip(keys, values)))
        return found


class Families:
    """The families of one scrape, in first-use order, over a TextCache."""

    def __init__(self, cache: TextCache, gpuvirt: bool = True, kept: tuple = ()):
        self.cache = cache
        self.items: dict[str, Rendered] = {}
        self.gpuvirt = gpuvirt  # False: only the gpuvirt_* series whose names start with one of `kept`
        self.kept = kept

    def gauge(self, name: str, doc: str, labels: list[str], values: list[str], value) -> None:
        if value is not None and (self.gpuvirt or name.startswith(self.kept)):
            self.add(name, doc, 'gauge', labels, values, value, False)

    def counter(self, name: str, doc: str, labels: list[str], values: list[str], value) -> None:
        if value is not None and (self.gpuvirt or name.startswith(self.kept)):
            self.add(name, doc, 'counter', labels, values, value, False)

    def add(self, name, doc, kind, keys, values, value, verbatim: bool) -> None:  # pylint: disable=too-many-arguments
        """One series; verbatim: rendered the dcgm way (name as is, no _total)."""
        prefix, sample_name, labels = self.cache.prefix(name, doc, kind, keys, values, verbatim)
        family = self.items.get(name)
        if family is None:
            family = self.items[name] = Rendered(name, doc, kind, self.cache.headers[name][0])
        value = float(value)
        family.lines.append('%s%s\n' % (prefix, floatToGoString(value)))
        family.series.append((sample_name, labels, value))
