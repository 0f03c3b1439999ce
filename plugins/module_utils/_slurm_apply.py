# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""What the slurm_* modules do, over the _slurm_host seam: write a config file (check, diff, backup), and drain,
resume and wait for one node in its controller. Each returns a result dict for _results.finish."""

from __future__ import annotations

import os
import tempfile
import time

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _slurm, _slurm_host


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_file(module, path: str, before: str | None, after: str, backup: bool, result: dict) -> None:
    """Set result changed/diff for `path` going from `before` to `after`; write it (atomically, keeping the old
    file's owner and mode, with a backup when asked) unless in check mode or unchanged."""
    result['changed'] = before != after
    result['before'], result['after'] = before or '', after
    if not result['changed'] or module.check_mode:
        return
    if backup and before is not None:
        result['backup_file'] = module.backup_local(path)
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), dir=directory)
    with os.fdopen(fd, 'w', encoding='utf-8') as handle:
        handle.write(after)
    if before is None:
        os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


def file_diff(path: str):
    return lambda result: {'before': result.get('before', ''), 'after': result.get('after', ''),
                           'before_header': path, 'after_header': path}


def node_action(module, runner: _commands.Runner, params: dict) -> dict:
    """slurm_node's actions; the result carries `node` (parsed scontrol show node) and, for drain, `drained_before`
    and the `jobs` still running."""
    ctl = _slurm_host.Scontrol(runner, params['scontrol'], params['squeue'], params['name'])
    result = {'changed': False, 'failed': False, 'commands': runner.log}
    action, timeout, poll = params['action'], params['timeout'], params['poll_interval']
    node = ctl.show()
    result['node'] = node
    if action == 'show':
        result['jobs'] = ctl.jobs()
        return result
    if action == 'drain':
        # A drain with our own reason is ours (left by an earlier run that failed), not somebody else's.
        ours = (node['reason'] or '').startswith(params['reason'])
        result['drained_before'] = 'DRAIN' in node['flags'] and not _invalid(node) and not ours
        if 'DRAIN' not in node['flags']:
            result['changed'] = True
            if not module.check_mode:
                rc, text = ctl.update('state=drain', 'reason=%s' % params['reason'])
                if rc != 0:
                    return dict(result, failed=True, msg='scontrol could not drain %s: %s' % (params['name'], text))
        result['jobs'] = ctl.jobs()
        if module.check_mode:
            return result
        deadline = time.monotonic() + timeout
        while result['jobs'] and time.monotonic() < deadline:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            result['jobs'] = ctl.jobs()
        result['node'] = ctl.show()
        if result['jobs']:
            result.update(failed=True, msg='node %s still runs jobs %s after the drain timeout of %ss'
                          % (params['name'], ', '.join(result['jobs']), timeout))
        return result
    expected = params.get('expected_gres')
    if action == 'resume':
        ok, node = ctl.wait(lambda n: _slurm.registered(n) and not _invalid(n), timeout, poll)
        if not ok:
            return dict(result, node=node, failed=True, msg=_bad(params['name'], node, 'has not registered with a valid configuration'))
        if 'DRAIN' in node['flags'] and not params['keep_drained']:
            result['changed'] = True
            if not module.check_mode:
                rc, text = ctl.update('state=resume')
                if rc != 0:
                    return dict(result, node=ctl.show(), failed=True,
                                msg='scontrol could not resume %s: %s' % (params['name'], text))
        if module.check_mode:
            return result
    ok, node = ctl.wait(lambda n: _slurm.usable(n, allow_drain=params['keep_drained'])
                        and (expected is None or _slurm.gres_counts(n['gres']) == _slurm.gres_counts(expected)), timeout, poll)
    result['node'] = node
    if not ok:
        if not _slurm.usable(node, allow_drain=params['keep_drained']):
            result.update(failed=True, msg=_bad(params['name'], node, 'is not usable'))
        else:
            result.update(failed=True, msg='node %s reports Gres=%s, the GPUs give Gres=%s'
                          % (params['name'], node['gres'] or '(none)', expected or '(none)'))
    return result


def _invalid(node: dict) -> bool:
    return 'INVALID_REG' in node['flags'] or 'INVAL' in node['flags']


def _bad(name: str, node: dict, what: str) -> str:
    return 'node %s %s: state %s, reason %s' % (name, what, node['state'], node['reason'] or '(none)')
