# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The queries of a Grafana dashboard (Prometheus data source), as Grafana would send them.

- `Dashboard.load(path)`: the dashboard's variables and every panel target (panels nested in rows included, hidden
  targets left out), each with its panel, refId, expression, instant or range, and the panel's unit.
- `resolve_variables(dashboard, api, selection)`: each query variable's options from its own query (`label_values`,
  `query_result`, `metrics`), in dashboard order, so that a variable's query sees the variables before it; what is
  selected (`ALL` or a list of values) becomes the value Grafana substitutes.
- `interpolate(expr, values, builtins)`: `$var`, `${var}`, `${var:format}` and `[[var]]`, formatted as Grafana's
  Prometheus data source does (a multi-value or include-all variable is regex-escaped, several values become
  `(a|b)`, "All" becomes the variable's allValue or every option).
- `vector_selectors(expr)`: the series selectors of a PromQL expression (metric name and label matchers), read with a
  small PromQL tokenizer (strings, durations, label lists of by/on/group_left, function calls); Grafana variables
  outside strings (`[$__rate_interval]`) are read as values.
- `Prometheus(url)`: the HTTP API calls the above need (instant and range queries, label values).

Test-only code: it is not part of the collection.
"""
from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

ALL = object()  # the "All" option of an include-all variable


class DashboardError(ValueError):
    """The dashboard (or one of its queries) cannot be read; the message names the offending entry."""


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    query: str = ''
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    regex: str = ''
    options: tuple[str, ...] = ()  # custom/constant/interval variables: their fixed options


@dataclass(frozen=True)
class Target:
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    instant: bool
    unit: str | None
    legend: str = ''

    @property
    def name(self) -> str:
        return '%s [%s]' % (self.panel_title, self.ref_id)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[Matcher, ...]
    text: str  # the selector as written (metric name and braces, no range or offset)


def _text(value: Any) -> str:
    if isinstance(value, dict):  # newer dashboards: {"query": "...", "refId": "..."}
        value = value.get('query', '')
    return value if isinstance(value, str) else ''


def _panels(panels: Iterable[dict]) -> Iterable[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get('panels') or [])  # a row's panels (collapsed rows keep them here)


@dataclass
class Dashboard:
    title: str
    variables: list[Variable]
    targets: list[Target]
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> 'Dashboard':
        try:
            raw = json.loads(Path(path).read_text(encoding='utf-8'))
        except (OSError, ValueError) as exc:
            raise DashboardError('%s: not a readable JSON dashboard: %s' % (path, exc)) from exc
        return cls.from_json(raw, str(path))

    @classmethod
    def from_json(cls, raw: dict, where: str = 'dashboard') -> 'Dashboard':
        if not isinstance(raw, dict) or not isinstance(raw.get('panels'), list):
            raise DashboardError('%s: no "panels" list' % where)
        variables = []
        for item in (raw.get('templating') or {}).get('list') or []:
            name = item.get('name')
            if not name or not re.fullmatch(r'\w+', name):
                raise DashboardError('%s: a template variable without a usable name: %r' % (where, item))
            options = tuple(str(option.get('value')) for option in item.get('options') or [] if 'value' in option)
            if item.get('type') == 'custom' and not options:
                options = tuple(part.strip() for part in _text(item.get('query')).split(',') if part.strip())
            variables.append(Variable(name=name, type=item.get('type', 'query'), query=_text(item.get('query')) or item.get('definition', ''),
                                      multi=bool(item.get('multi')), include_all=bool(item.get('includeAll')),
                                      all_value=item.get('allValue') or None, regex=item.get('regex') or '', options=options))
        targets = []
        for panel in _panels(raw['panels']):
            if panel.get('type') == 'row':
                continue
            unit = ((panel.get('fieldConfig') or {}).get('defaults') or {}).get('unit')
            for target in panel.get('targets') or []:
                if target.get('hide'):
                    continue
                title = panel.get('title') or 'panel %s' % panel.get('id')
                expr = target.get('expr')
                if not isinstance(expr, str) or not expr.strip():
                    raise DashboardError('%s: panel %r target %s has no expression' % (where, title, target.get('refId')))
                targets.append(Target(panel_id=panel.get('id'), panel_title=title, panel_type=panel.get('type', ''),
                                      ref_id=target.get('refId', '?'), expr=expr, unit=unit,
                                      instant=bool(target.get('instant')) and not target.get('range'),
                                      legend=target.get('legendFormat', '')))
        return cls(title=raw.get('title', where), variables=variables, targets=targets, raw=raw)

    def variable(self, name: str) -> Variable:
        for var in self.variables:
            if var.name == name:
                return var
        raise DashboardError('%s: no variable %r' % (self.title, name))

    def panel_targets(self, title: str) -> list[Target]:
        found = [t for t in self.targets if t.panel_title == title]
        if not found:
            raise DashboardError('%s: no panel titled %r' % (self.title, title))
        return found


# ---------------------------------------------------------------------------------------------------------------
# Variable queries and interpolation
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariableQuery:
    kind: str  # label_values | label_names | metrics | query_result
    label: str = ''
    match: str = ''  # series selector (label_values, label_names) or regex (metrics) or expression (query_result)


def parse_variable_query(query: str, name: str = '?') -> VariableQuery:
    """What a Prometheus query variable asks for (the forms Grafana's Prometheus data source accepts)."""
    text = query.strip()
    found = re.fullmatch(r'label_values\(\s*(?:(.*?)\s*,\s*)?([a-zA-Z_]\w*)\s*\)', text, re.S)
    if found:
        return VariableQuery('label_values', label=found.group(2), match=found.group(1) or '')
    found = re.fullmatch(r'label_names\(\s*(.*?)\s*\)', text, re.S)
    if found:
        return VariableQuery('label_names', match=found.group(1))
    found = re.fullmatch(r'metrics\(\s*(.*?)\s*\)', text, re.S)
    if found:
        return VariableQuery('metrics', match=found.group(1))
    found = re.fullmatch(r'query_result\(\s*(.*)\s*\)', text, re.S)
    if found:
        return VariableQuery('query_result', match=found.group(1))
    raise DashboardError('variable %r: query %r is none of label_values(), label_names(), metrics(), query_result()' % (name, query))


_VARIABLE = re.compile(r'\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}')
_REGEX_META = re.compile(r'[$^*{}\[\]+?.()|]')


def regex_escape(value: str) -> str:
    """Grafana's escape of one value for a Prometheus regex matcher (inside a double-quoted PromQL string)."""
    return _REGEX_META.sub(lambda m: '\\\\' + m.group(0), value.replace('\\', '\\\\\\\\'))


def regular_escape(value: str) -> str:
    """Grafana's escape of the value of a single-value variable (no regex)."""
    return value.replace('\\', '\\\\').replace("'", "\\\\'")


def _format(var: Variable | None, value: Any, fmt: str | None, name: str) -> str:
    values = value if isinstance(value, list) else [value]
    if fmt in ('raw', 'text'):
        return ','.join(values)
    if fmt == 'csv':
        return ','.join(values)
    if fmt == 'pipe':
        return '|'.join(values)
    if fmt == 'regex':
        escaped = [re.sub(r'[\\^$.|?*+()\[\]{}]', lambda m: '\\' + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else '(%s)' % '|'.join(escaped)
    if fmt is not None:
        raise DashboardError('variable %r: format %r is not supported here' % (name, fmt))
    if var is None or (not var.multi and not var.include_all):
        return regular_escape(values[0]) if values else ''
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else '(%s)' % '|'.join(escaped)


def interpolate(expr: str, values: dict[str, Any], variables: Iterable[Variable] = (), builtins: dict[str, str] | None = None) -> str:
    """`expr` with every variable replaced as Grafana would. `values`: name -> str, list of str, or a raw string
    already formatted (the allValue of "All"). An unknown variable is an error naming it."""
    by_name = {v.name: v for v in variables}
    builtins = builtins or {}

    def replace(found: re.Match) -> str:
        name = found.group(1) or found.group(2) or found.group(4)
        fmt = found.group(3) or found.group(5)
        if name in builtins:
            return builtins[name]
        if name not in values:
            raise DashboardError('%r: variable $%s has no value (not a dashboard variable, or not resolved yet)' % (expr, name))
        value = values[name]
        if isinstance(value, RawValue):
            return value.text
        return _format(by_name.get(name), value, fmt, name)

    return _VARIABLE.sub(replace, expr)


@dataclass(frozen=True)
class RawValue:
    """A value substituted as it is (the allValue of an "All" selection)."""
    text: str


def grafana_builtins(scrape_interval_s: float, interval_s: float, range_s: float) -> dict[str, str]:
    """$__interval, $__rate_interval (max(interval + scrape interval, 4 x scrape interval)), $__range."""
    def dur(seconds: float) -> str:
        return '%dms' % round(seconds * 1000) if seconds < 1 or seconds != int(seconds) else '%ds' % seconds
    rate = max(interval_s + scrape_interval_s, 4 * scrape_interval_s)
    return {'__interval': dur(interval_s), '__rate_interval': dur(rate), '__range': dur(range_s),
            '__range_s': str(int(range_s)), '__interval_ms': str(int(interval_s * 1000))}


class PrometheusLike(Protocol):  # what resolve_variables needs from the data source
    def label_values(self, label: str, match: str = '') -> list[str]: ...
    def label_names(self, match: str = '') -> list[str]: ...
    def instant(self, expr: str) -> list[dict]: ...


def variable_options(var: Variable, api: PrometheusLike, values: dict[str, Any]) -> list[str]:
    """The options Grafana would list for `var`, its query interpolated with the variables before it."""
    if var.type in ('custom', 'constant', 'interval'):
        options = list(var.options) or ([var.query] if var.query else [])
    elif var.type == 'query':
        query = parse_variable_query(interpolate(var.query, values), var.name)
        if query.kind == 'label_values':
            options = api.label_values(query.label, query.match)
        elif query.kind == 'label_names':
            options = api.label_names(query.match)
        elif query.kind == 'metrics':
            options = [m for m in api.label_values('__name__') if re.search(query.match, m)]
        else:
            options = []
            for series in api.instant(query.match):
                labels = series['metric']
                name = labels.get('__name__', '')
                body = ', '.join('%s="%s"' % (k, v) for k, v in sorted(labels.items()) if k != '__name__')
                options.append('%s{%s} %s %s' % (name, body, series['value'][1], int(float(series['value'][0]) * 1000)))
    else:
        raise DashboardError('variable %r: type %r is not supported here' % (var.name, var.type))
    if var.regex:
        pattern = re.compile(var.regex.strip('/'))
        kept = []
        for option in options:
            found = pattern.search(option)
            if found:
                kept.append(found.group(1) if pattern.groups else option)
        options = kept
    return sorted(set(options), key=options.index)


def resolve_variables(dashboard: Dashboard, api: PrometheusLike, selection: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(values to interpolate, options of each variable). `selection`: name -> ALL or a list of values; a variable not
    named gets "All" when it has that option, else its first option. A selected value that is not an option is an error."""
    selection = selection or {}
    values: dict[str, Any] = {}
    options: dict[str, list[str]] = {}
    for var in dashboard.variables:
        if var.type == 'datasource':
            values[var.name] = var.query or 'prometheus'
            continue
        opts = options[var.name] = variable_options(var, api, values)
        chosen = selection.get(var.name, ALL if var.include_all else opts[:1])
        if chosen is ALL:
            if not var.include_all:
                raise DashboardError('variable %r has no "All" option' % var.name)
            values[var.name] = RawValue(var.all_value) if var.all_value is not None else list(opts)
            continue
        missing = [v for v in chosen if v not in opts]
        if missing:
            raise DashboardError('variable %r: %s not among its options %s' % (var.name, missing, opts))
        values[var.name] = list(chosen)
    return values, options


# ---------------------------------------------------------------------------------------------------------------
# PromQL: the series selectors of an expression
# ---------------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'''
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+\d*)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<var>\$\w+|\$\{[^}]*\}|\[\[\w+(?::\w+)?\]\])
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=,@])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
''', re.X)

AGGREGATIONS = {'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk',
                'quantile', 'limitk', 'limit_ratio'}
_LABEL_LISTS = {'by', 'without', 'on', 'ignoring', 'group_left', 'group_right'}
_KEYWORDS = {'and', 'or', 'unless', 'bool', 'offset', 'atan2', 'inf', 'nan'}


def _tokens(expr: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(expr):
        found = _TOKEN.match(expr, pos)
        if not found:
            raise DashboardError('%r: cannot read PromQL at %r' % (expr, expr[pos:pos + 20]))
        if found.lastgroup != 'ws':
            out.append((found.lastgroup, found.group(0), pos))
        pos = found.end()
    return out


def _unquote(text: str) -> str:
    if text.startswith('`'):
        return text[1:-1]
    return re.sub(r'\\(.)', lambda m: {'n': '\n', 't': '\t'}.get(m.group(1), m.group(1)), text[1:-1])


def _matchers(expr: str, toks: list, start: int) -> tuple[tuple[Matcher, ...], int]:
    """Label matchers from the token after `{` to its `}`; returns (matchers, index after `}`)."""
    found, i = [], start
    while i < len(toks) and toks[i][1] != '}':
        if toks[i][1] == ',':
            i += 1
            continue
        try:
            (kind_l, label, _pos_l), (kind_o, op, _pos_o), (kind_v, value, _pos_v) = toks[i:i + 3]
        except ValueError as exc:
            raise DashboardError('%r: unterminated label matchers' % expr) from exc
        if kind_l not in ('ident', 'string') or kind_o != 'op' or op not in ('=', '!=', '=~', '!~') or kind_v != 'string':
            raise DashboardError('%r: bad label matcher near %r' % (expr, ' '.join(t[1] for t in toks[i:i + 3])))
        found.append(Matcher(_unquote(label) if kind_l == 'string' else label, op, _unquote(value)))
        i += 3
    if i >= len(toks):
        raise DashboardError('%r: unterminated label matchers' % expr)
    return tuple(found), i + 1


def vector_selectors(expr: str) -> list[Selector]:
    """Every series selector of `expr`, in order (a metric used twice is listed twice)."""
    toks = _tokens(expr)
    selectors, i, depth = [], 0, []
    while i < len(toks):
        kind, text, pos = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ''
        if kind == 'ident' and text in _LABEL_LISTS and nxt == '(':
            close = next((j for j in range(i + 2, len(toks)) if toks[j][1] == ')'), None)
            if close is None:
                raise DashboardError('%r: unterminated label list after %s' % (expr, text))
            i = close + 1
            continue
        if kind == 'ident' and (text.lower() in _KEYWORDS or (text in AGGREGATIONS and nxt in ('(', 'by', 'without'))):
            i += 1
            continue
        if kind == 'ident' and nxt == '(':  # a function call
            i += 1
            continue
        if kind == 'ident' or (kind == 'open' and text == '{'):
            if kind == 'ident' and i > 0 and toks[i - 1][1] == '@':  # @ start() / end()
                i += 1
                continue
            metric = text if kind == 'ident' else None
            j = i + 1 if kind == 'ident' else i
            matchers: tuple[Matcher, ...] = ()
            if j < len(toks) and toks[j][1] == '{':
                matchers, j = _matchers(expr, toks, j + 1)
                end = toks[j - 1][2] + 1
            else:
                end = pos + len(text)
            name_matchers = [m for m in matchers if m.label == '__name__' and m.op == '=']
            if metric is None and name_matchers:
                metric = name_matchers[0].value
            if metric is None and not matchers:
                raise DashboardError('%r: empty selector {}' % expr)
            selectors.append(Selector(metric, matchers, expr[pos:end]))
            i = j
            continue
        if kind == 'open':
            depth.append(text)
            if text == '[':  # a range or subquery: skip to its end
                close = next((j for j in range(i + 1, len(toks)) if toks[j][1] == ']'), None)
                if close is None:
                    raise DashboardError('%r: unterminated [' % expr)
                depth.pop()
                i = close + 1
                continue
        elif kind == 'close':
            if not depth:
                raise DashboardError('%r: unbalanced %s' % (expr, text))
            depth.pop()
        i += 1
    if depth:
        raise DashboardError('%r: unbalanced %s' % (expr, depth[-1]))
    return selectors


# ---------------------------------------------------------------------------------------------------------------
# Prometheus HTTP API
# ---------------------------------------------------------------------------------------------------------------
class Prometheus:
    """The HTTP API calls of a Grafana Prometheus data source, at one evaluation time (`at`, Unix seconds)."""

    def __init__(self, url: str, at: float | None = None, lookback_s: float = 300):
        self.url = url.rstrip('/')
        self.at = at
        self.lookback_s = lookback_s

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen('%s%s?%s' % (self.url, path, query), timeout=20) as response:
            body = json.load(response)
        if body.get('status') != 'success':
            raise DashboardError('%s %s: %s' % (path, params, body))
        return body['data']

    def _window(self) -> list[tuple[str, str]]:
        if self.at is None:
            return []
        return [('start', '%.3f' % (self.at - self.lookback_s)), ('end', '%.3f' % self.at)]

    def label_values(self, label: str, match: str = '') -> list[str]:
        params = self._window() + ([('match[]', match)] if match else [])
        return sorted(self._get('/api/v1/label/%s/values' % urllib.parse.quote(label), params))

    def label_names(self, match: str = '') -> list[str]:
        params = self._window() + ([('match[]', match)] if match else [])
        return sorted(self._get('/api/v1/labels', params))

    def instant(self, expr: str) -> list[dict]:
        params = [('query', expr)] + ([('time', '%.3f' % self.at)] if self.at is not None else [])
        return self._get('/api/v1/query', params)['result']

    def range(self, expr: str, seconds: float, step: float) -> list[dict]:
        end = self.at if self.at is not None else time.time()
        return self._get('/api/v1/query_range', [('query', expr), ('start', '%.3f' % (end - seconds)), ('end', '%.3f' % end),
                                                 ('step', '%g' % step)])['result']


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: every panel query of a dashboard, and whether its data exists
# ---------------------------------------------------------------------------------------------------------------
def render_selector(metric: str | None, matchers: Iterable[Matcher]) -> str:
    body = ', '.join('%s%s%s' % (m.label, m.op, json.dumps(m.value)) for m in matchers)
    return '%s{%s}' % (metric or '', body) if body or not metric else metric


def data_selector(selector: Selector, scope: dict[str, str] | None = None) -> str:
    """The series a selector means to show, whatever the dashboard's variables say: its matchers without those that
    reference a variable, plus `scope` (label -> regex, e.g. the selected host's instance)."""
    kept = [m for m in selector.matchers if '$' not in m.value and not m.value.startswith('[[')]
    kept += [Matcher(label, '=~', regex) for label, regex in sorted((scope or {}).items())]
    if selector.metric and not any(m.label == '__name__' for m in kept):
        return render_selector(selector.metric, kept)
    return render_selector(None, kept)


@dataclass
class Evaluation:
    target: Target
    expr: str  # as sent, variables substituted
    series: int  # series the query returned
    data: list[str]  # selectors (scoped as the selection means) that have series
    selectors: list[str]

    @property
    def empty_with_data(self) -> bool:
        return self.series == 0 and bool(self.data)

    @property
    def no_data(self) -> bool:
        return not self.data


def selection_scope(dashboard: Dashboard, api: PrometheusLike, selection: dict[str, Any], scope_label: str = 'instance') -> dict[str, str]:
    """What a selection of single values means, as the scrape targets (`instance`) whose series carry them: for
    each selected variable, the instances of the series its own query lists with that value."""
    scope: dict[str, str] = {}
    for name, chosen in selection.items():
        if chosen is ALL:
            continue
        var = dashboard.variable(name)
        query = parse_variable_query(var.query, name)
        if query.kind != 'label_values':
            raise DashboardError('variable %r: only label_values() selections can be scoped' % name)
        instances = set()
        for value in chosen:
            base = vector_selectors(query.match)[0] if query.match else Selector(None, (), '')
            match = data_selector(base, {query.label: re.escape(value)})
            instances.update(api.label_values(scope_label, match))
        scope[scope_label] = '|'.join(re.escape(i) for i in sorted(instances)) or '^$'
    return scope


def evaluate(dashboard: Dashboard, api: Any, selection: dict[str, Any] | None = None, builtins: dict[str, str] | None = None,
             range_s: float = 60, step_s: float = 1) -> list[Evaluation]:
    """Every target of `dashboard` as Grafana would query it under `selection`, and which of its selectors have data
    for what the selection means (every host for "All"; the selected hosts' series otherwise)."""
    selection = selection or {}
    values, _unused = resolve_variables(dashboard, api, selection)
    scope = selection_scope(dashboard, api, selection)
    out = []
    for target in dashboard.targets:
        expr = interpolate(target.expr, values, dashboard.variables, builtins)
        result = api.instant(expr) if target.instant else api.range(expr, range_s, step_s)
        selectors = [data_selector(s, scope) for s in vector_selectors(target.expr)]
        data = [s for s in selectors if api.instant('count(%s)' % s)]
        out.append(Evaluation(target, expr, len(result), data, selectors))
    return out
