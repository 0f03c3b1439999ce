# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The fleet report as one self-contained HTML page, drawn from the analysis of `_report` (drift, summary).

`render_html(hosts, title, generated)` returns one HTML document with inline CSS and inline SVG only: no script, no
external stylesheet, font or image, so it opens from a file, an e-mail attachment or a CI artifact as it is. Every
text from facts or inventory is escaped with html.escape. `mig_grid(gpu)` is the slice grid of one GPU as the page
draws it. Nothing here reads a file, runs a command or imports pynvml.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _report, _vgpu

# GPU-instance colours by compute slices (the "Ng" of a profile), so one size has one colour on every GPU model.
PROFILE_COLORS = {1: '#4e79a7', 2: '#59a14f', 3: '#e15759', 4: '#f28e2b', 6: '#b6992d', 7: '#8c5fa8', 8: '#9c755f'}
FALLBACK_COLOR = '#79706e'
EMPTY_FILL = '#eef1f5'
EMPTY_STROKE = '#c3cad5'
CELL_W = 64
ROW_H = 30
LABEL_W = 150
ROW_GAP = 4
GPU_GAP = 14
DRIFT_LINES = 12  # a host's drift list is cut here, with "and N more"


def _text(value: Any) -> str:
    return '' if value is None else str(value)


def esc(value: Any) -> str:
    """Escape any value for HTML text and attribute values (quotes included)."""
    return html.escape(_text(value), quote=True)


def profile_color(slices: Any) -> str:
    try:
        return PROFILE_COLORS.get(int(slices), FALLBACK_COLOR)
    except (TypeError, ValueError):
        return FALLBACK_COLOR


def _slices_of_name(name: str) -> int | None:
    head = _text(name).split('.', 1)[0]
    if head.endswith('g') and head[:-1].isdigit():
        return int(head[:-1])
    return None


# ---------------------------------------------------------------------------------------------------------
# The MIG slice grid of one GPU


def mig_grid(gpu: Mapping[str, Any]) -> dict:
    """The slice grid of a MIG-capable GPU as drawn: `memory_slices` and `compute_slices` (column counts, from the
    profiles the GPU reports) and one block per GPU instance with its memory span (placement start..start+size-1)
    and compute span (start..start+slices-1), both inclusive, and its compute instances (absolute compute columns)."""
    mig = gpu.get('mig') or {}
    profiles = {p.get('id'): p for p in mig.get('profiles') or []}
    by_name = {p.get('name'): p for p in mig.get('profiles') or []}
    memory_slices = max([int(pl['start']) + int(pl['size']) for p in profiles.values() for pl in p.get('placements') or []] or [0])
    compute_slices = max([int(p.get('slices') or 0) for p in profiles.values()] or [0])
    blocks = []
    for gi in mig.get('gpu_instances') or []:
        profile = profiles.get(gi.get('profile_id')) or by_name.get(gi.get('profile')) or {}
        name = gi.get('profile') or profile.get('name') or 'profile %s' % gi.get('profile_id')
        placement = gi.get('placement') or {}
        start = placement.get('start')
        size = placement.get('size') or profile.get('memory_slices') or 1
        slices = profile.get('slices') or _slices_of_name(name) or size
        if start is None:
            blocks.append({'id': gi.get('id'), 'profile': name, 'slices': slices, 'placed': False, 'color': profile_color(slices),
                           'memory': None, 'compute': None, 'compute_instances': []})
            continue
        start, size, slices = int(start), int(size), int(slices)
        memory_slices = max(memory_slices, start + size)
        compute_end = start + slices - 1
        if compute_slices:
            compute_end = min(compute_end, compute_slices - 1)
        compute_slices = max(compute_slices, compute_end + 1)
        cis = []
        for ci in gi.get('compute_instances') or []:
            ci_place = ci.get('placement') or {}
            ci_slices = int(ci.get('slices') or ci_place.get('size') or 1)
            ci_start = start + int(ci_place.get('start') or 0)
            cis.append({'id': ci.get('id'), 'slices': ci_slices, 'start': ci_start, 'end': min(ci_start + ci_slices - 1, compute_end)})
        blocks.append({'id': gi.get('id'), 'profile': name, 'slices': slices, 'placed': True, 'color': profile_color(slices),
                       'memory': (start, start + size - 1), 'compute': (start, compute_end),
                       'compute_instances': sorted(cis, key=lambda c: c['start'])})
    blocks.sort(key=lambda b: (b['memory'] is None, b['memory'] or (0, 0)))
    return {'memory_slices': memory_slices, 'compute_slices': compute_slices, 'blocks': blocks}


# ---------------------------------------------------------------------------------------------------------
# HTML

CSS = '''
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0; background: #f6f7f9;
       color: #1d2430; font-size: 14px; }
header { background: #1d2430; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header p { margin: 4px 0 0; color: #b8c1cf; font-size: 13px; }
main { padding: 18px 28px 40px; }
section.summary, section.host { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 14px 18px; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 10px; }
.card { border: 1px solid #dde2ea; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card .num { font-size: 22px; font-weight: 600; }
.card .lbl { color: #5b6576; font-size: 12px; }
.card.bad { border-color: #e0a3a3; background: #fff4f4; }
h2 { font-size: 18px; margin: 0 0 8px; display: flex; align-items: center; gap: 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: #3b4556; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #e7ebf1; vertical-align: top; }
th { color: #5b6576; font-weight: 600; font-size: 12px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
.badge { font-size: 12px; font-weight: 600; border-radius: 10px; padding: 2px 10px; }
.badge.ok { background: #e3f4e6; color: #1e6b30; }
.badge.drift { background: #fde8e8; color: #9b1c1c; }
.badge.unreachable, .badge.failed { background: #eceff3; color: #4b5563; }
ul.drift { margin: 4px 0 8px; padding-left: 20px; color: #9b1c1c; }
.muted { color: #6b7483; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; margin: 6px 0 0; font-size: 12px; }
.legend span.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: -3px; margin-right: 5px; }
svg.mig { display: block; margin: 4px 0 6px; }
svg.mig text { font-family: system-ui, "DejaVu Sans", sans-serif; }
'''


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = '') -> str:
    """Rows are already-escaped HTML fragments; headers are escaped here."""
    head = ''.join('<th>%s</th>' % esc(h) for h in headers)
    body = ''.join('<tr>%s</tr>' % ''.join('<td>%s</td>' % cell for cell in row) for row in rows)
    return '<table%s><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (' class="%s"' % esc(cls) if cls else '', head, body)


def _memory(gpu: Mapping[str, Any]) -> str:
    total = (gpu.get('memory') or {}).get('total_mib')
    if total is None:
        return '<span class="muted">unknown</span>'
    return '%s GiB <span class="muted">(%s MiB)</span>' % (esc('%.1f' % (int(total) / 1024.0)), esc(total))


def _mig_state(gpu: Mapping[str, Any]) -> str:
    mig = gpu.get('mig') or {}
    if not mig.get('capable'):
        return '<span class="muted">not supported</span>'
    state = 'on' if mig.get('current') else 'off'
    if bool(mig.get('pending')) != bool(mig.get('current')):
        state += ' (pending %s)' % ('on' if mig.get('pending') else 'off')
    count = len(mig.get('gpu_instances') or [])
    return esc(state) + (' &middot; %d GI' % count if mig.get('current') else '')


def _virt_state(gpu: Mapping[str, Any]) -> str:
    vgpu = gpu.get('vgpu') or {}
    mode = vgpu.get('virtualization_mode')
    text = esc(mode or 'unknown')
    if vgpu.get('host_mode'):
        text += ' <span class="muted">(%s)</span>' % esc(vgpu['host_mode'])
    return text


def _gpu_table(gpus: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for gpu in gpus:
        status = esc(gpu.get('status') or 'ok')
        if gpu.get('status') == 'lost':
            status = '<strong style="color:#9b1c1c">lost</strong> <span class="muted">%s</span>' % esc(gpu.get('error'))
        rows.append([esc(gpu.get('index')), esc(gpu.get('name') or 'unknown'), '<span class="mono">%s</span>' % esc((gpu.get('pci') or {}).get('bus_id')),
                     _memory(gpu), esc(gpu.get('architecture') or 'unknown'), _mig_state(gpu), _virt_state(gpu), status])
    return _table(['GPU', 'model', 'bus id', 'memory', 'architecture', 'MIG', 'virtualization', 'status'], rows, 'gpus')


def _rect(x: float, y: float, w: float, h: float, fill: str, attrs: str = '', stroke: str = '#ffffff', rx: int = 4) -> str:
    return '<rect x="%g" y="%g" width="%g" height="%g" rx="%d" fill="%s" stroke="%s" stroke-width="2"%s/>' % (
        x, y, w, h, rx, fill, stroke, attrs)


def _label(x: float, y: float, text: str, fill: str = '#ffffff', size: int = 12, anchor: str = 'middle', weight: str = '600') -> str:
    return '<text x="%g" y="%g" fill="%s" font-size="%d" font-weight="%s" text-anchor="%s" dominant-baseline="central">%s</text>' % (
        x, y, fill, size, weight, anchor, esc(text))


def mig_svg(gpus: Sequence[Mapping[str, Any]]) -> str:
    """One SVG: per MIG-capable GPU a memory-slice row and a compute-slice row, GPU instances as coloured blocks."""
    rows = [(gpu, mig_grid(gpu)) for gpu in gpus if (gpu.get('mig') or {}).get('capable') and gpu.get('status') != 'lost']
    if not rows:
        return ''
    columns = max([max(g['memory_slices'], g['compute_slices']) for gpu_grid in rows for g in gpu_grid[1:]] + [1])
    width = LABEL_W + columns * CELL_W + 10
    parts = []
    y = 22
    header = [_label(LABEL_W + c * CELL_W + CELL_W / 2, 10, str(c), '#6b7483', 11, weight='400') for c in range(columns)]
    for gpu, grid in rows:
        index = esc(gpu.get('index'))
        mig = gpu.get('mig') or {}
        parts.append('<g class="gpu" data-gpu="%s">' % index)
        mode = 'MIG on' if mig.get('current') else 'MIG off'
        if bool(mig.get('pending')) != bool(mig.get('current')):
            mode += ', pending ' + ('on' if mig.get('pending') else 'off')
        parts.append(_label(6, y + ROW_H / 2, 'GPU %s' % _text(gpu.get('index')), '#1d2430', 13, 'start'))
        parts.append(_label(6, y + ROW_H + ROW_GAP + ROW_H / 2, mode, '#6b7483', 11, 'start', '400'))
        for row, count, y0 in (('memory', grid['memory_slices'], y), ('compute', grid['compute_slices'], y + ROW_H + ROW_GAP)):
            parts.append(_label(LABEL_W - 8, y0 + ROW_H / 2, row, '#8a93a3', 10, 'end', '400'))
            for c in range(count):
                parts.append(_rect(LABEL_W + c * CELL_W + 1, y0, CELL_W - 2, ROW_H, EMPTY_FILL,
                                   ' class="slice" data-row="%s" data-col="%d"' % (row, c), EMPTY_STROKE, 3))
        for block in grid['blocks']:
            if not block['placed']:
                continue
            color = block['color']
            first, last = block['memory']
            attrs = ' class="gi" data-gpu="%s" data-gi="%s" data-profile="%s" data-row="memory" data-start="%d" data-end="%d"' % (
                index, esc(block['id']), esc(block['profile']), first, last)
            x = LABEL_W + first * CELL_W + 1
            w = (last - first + 1) * CELL_W - 2
            parts.append('<g>' + _rect(x, y, w, ROW_H, color, attrs) + _label(x + w / 2, y + ROW_H / 2, block['profile'])
                         + '<title>%s</title></g>' % esc('GPU %s: GPU instance %s, %s at %d' % (gpu.get('index'), block['id'], block['profile'], first)))
            cy = y + ROW_H + ROW_GAP
            first, last = block['compute']
            attrs = ' class="gi" data-gpu="%s" data-gi="%s" data-profile="%s" data-row="compute" data-start="%d" data-end="%d"' % (
                index, esc(block['id']), esc(block['profile']), first, last)
            x = LABEL_W + first * CELL_W + 1
            w = (last - first + 1) * CELL_W - 2
            if block['compute_instances']:
                parts.append(_rect(x, cy, w, ROW_H, color, attrs + ' fill-opacity="0.35"'))
                for ci in block['compute_instances']:
                    cx = LABEL_W + ci['start'] * CELL_W + 1
                    cw = (ci['end'] - ci['start'] + 1) * CELL_W - 2
                    parts.append(_rect(cx + 2, cy + 2, cw - 4, ROW_H - 4, color, ' class="ci" data-gpu="%s" data-gi="%s" data-start="%d" data-end="%d"' % (
                        index, esc(block['id']), ci['start'], ci['end']), '#ffffff', 3))
                    parts.append(_label(cx + cw / 2, cy + ROW_H / 2, '%dc' % ci['slices'], size=11))
            else:
                parts.append(_rect(x, cy, w, ROW_H, color, attrs + ' fill-opacity="0.35"'))
                parts.append(_label(x + w / 2, cy + ROW_H / 2, 'no CI', '#1d2430', 11))
        unplaced = [b for b in grid['blocks'] if not b['placed']]
        if unplaced:
            parts.append(_label(LABEL_W + columns * CELL_W, y + ROW_H / 2, '+ %s (placement unknown)' % ', '.join(b['profile'] for b in unplaced),
                                '#6b7483', 11, 'end', '400'))
        parts.append('</g>')
        y += 2 * ROW_H + ROW_GAP + GPU_GAP
    height = y - GPU_GAP + 6
    return ('<svg class="mig" width="%d" height="%d" viewBox="0 0 %d %d" role="img" '
            'aria-label="MIG slices">%s%s</svg>') % (width, height, width, height, ''.join(header), ''.join(parts))


def _vgpu_table(gpus: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for gpu in gpus:
        vgpu = gpu.get('vgpu') or {}
        bus_id = (gpu.get('pci') or {}).get('bus_id')
        parent = _facts.sysfs_pci_address(bus_id) if bus_id else None
        for device in vgpu.get('active') or []:
            rows.append([esc(gpu.get('index')), esc(_vgpu.short_name(_text(device.get('type')))), '<span class="mono">%s</span>' % esc(device.get('uuid')),
                         '<span class="mono">%s</span>' % esc(parent), esc(vgpu.get('host_mode') or '-'), esc(device.get('vm_id') or '-')])
    if not rows:
        return ''
    return '<h3>vGPU devices</h3>' + _table(['GPU', 'type', 'UUID', 'parent GPU', 'host mode', 'VM'], rows, 'vgpus')


def _host_section(entry: Mapping[str, Any]) -> str:
    name = _text(entry.get('host'))
    state = entry.get('state')
    badge = {'ok': 'matches declaration', 'drift': 'drift', 'unreachable': 'unreachable', 'failed': 'no GPU facts'}[state]
    out = ['<section class="host %s" id="host-%s" data-host="%s">' % (esc(state), esc(name), esc(name)),
           '<h2>%s <span class="badge %s">%s</span></h2>' % (esc(name), esc(state), esc(badge))]
    if state in _report.NO_FACTS:
        reason = 'the host did not answer' if state == 'unreachable' else 'gpu_facts gave no facts'
        out.append('<p class="muted">No facts: %s</p></section>' % esc(entry.get('error') or reason))
        return ''.join(out)
    host = entry.get('gpu_host') or {}
    module = host.get('kernel_module') or {}
    parts = ['driver %s' % (host.get('driver_version') or 'not loaded')]
    if module.get('flavor'):
        parts[0] += ' (%s kernel modules)' % module['flavor']
    if host.get('cuda_version'):
        parts.append('CUDA %s' % host['cuda_version'])
    parts.append('via %s' % (host.get('backend') or 'none'))
    if not host.get('driver_loaded', True) and host.get('driver_error'):
        parts.append(host['driver_error'])
    line = ' &middot; '.join(esc(part) for part in parts)
    out.append('<p class="driver">%s</p>' % line)
    if entry.get('drift'):
        items = ''.join('<li>%s</li>' % esc(d) for d in entry['drift'][:DRIFT_LINES])
        if len(entry['drift']) > DRIFT_LINES:
            items += '<li class="muted">and %d more</li>' % (len(entry['drift']) - DRIFT_LINES)
        out.append('<h3>Drift from the declaration</h3><ul class="drift">%s</ul>' % items)
    gpus = sorted(entry.get('gpus') or [], key=lambda g: g.get('index') or 0)
    if gpus:
        out.append('<h3>GPUs</h3>' + _gpu_table(gpus))
        svg = mig_svg(gpus)
        if svg:
            out.append('<h3>MIG layout</h3>' + svg)
        out.append(_vgpu_table(gpus))
    else:
        out.append('<p class="muted">No GPUs visible.</p>')
    out.append('</section>')
    return ''.join(out)


def _card(number: Any, label: str, bad: bool = False) -> str:
    return '<div class="card%s"><div class="num">%s</div><div class="lbl">%s</div></div>' % (' bad' if bad else '', esc(number), esc(label))


def _summary_section(summary: Mapping[str, Any]) -> str:
    cards = [_card(summary['hosts'], 'hosts'), _card(summary['gpus'], 'GPUs'), _card(summary['mig_gpus'], 'GPUs with MIG on'),
             _card(summary['mig_instances'], 'MIG GPU instances'), _card(summary['vgpus'], 'vGPUs'),
             _card(len(summary['drift']), 'hosts with drift', bool(summary['drift'])),
             _card(len(summary['unreachable']), 'unreachable hosts', bool(summary['unreachable']))]
    if summary['failed']:
        cards.append(_card(len(summary['failed']), 'hosts without GPU facts', True))
    if summary['lost_gpus']:
        cards.append(_card(summary['lost_gpus'], 'lost GPUs', True))
    out = ['<section class="summary"><h2>Fleet summary</h2><div class="cards">%s</div>' % ''.join(cards)]
    out.append(_table(['GPU model', 'GPUs'], [[esc(m), esc(n)] for m, n in summary['models'].items()], 'models'))
    out.append(_table(['driver', 'hosts'], [[esc(v), esc(n)] for v, n in summary['drivers'].items()], 'drivers'))
    for key, label in (('drift', 'Hosts with drift'), ('unreachable', 'Unreachable hosts'), ('failed', 'Hosts without GPU facts')):
        if summary[key]:
            out.append('<p><strong>%s:</strong> %s</p>' % (esc(label), ', '.join('<a href="#host-%s">%s</a>' % (esc(h), esc(h)) for h in summary[key])))
    legend = ''.join('<span><span class="sw" style="background:%s"></span>%dg</span>' % (c, s) for s, c in sorted(PROFILE_COLORS.items()))
    out.append('<div class="legend"><span class="muted">GPU-instance colours by compute slices:</span>%s</div></section>' % legend)
    return ''.join(out)


def render_html(hosts: Sequence[Mapping[str, Any]], title: str = 'GPU fleet report', generated: Any = None) -> str:
    """The whole report as one self-contained HTML document."""
    model = _report.analyse(hosts)
    subtitle = '%d hosts' % model['summary']['hosts']
    if generated:
        subtitle += ' &middot; generated %s' % esc(generated)
    body = [_summary_section(model['summary'])] + [_host_section(h) for h in model['hosts']]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<title>%s</title><style>%s</style></head>\n<body><header><h1>%s</h1><p>%s &middot; gpuvirt.fleet</p></header>\n<main>%s</main>'
            '</body></html>\n') % (esc(title), CSS, esc(title), subtitle, '\n'.join(body))
