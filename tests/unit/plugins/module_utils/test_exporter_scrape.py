# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_exporter_scrape and the exporter_scrape filter: what the health gates read from a scrape of the exporter, the same
for gpu_facts' exporter option (the XID baseline) and the exporter role's scrape entry point (after a change): on the
real H200's /metrics, on XID counts of several GPUs and XIDs, and on an exporter that did not answer."""
from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.fleet.plugins.filter.exporter_scrape import exporter_scrape
from ansible_collections.gpuvirt.fleet.plugins.module_utils._exporter_scrape import result

REAL_H200 = (Path(__file__).resolve().parents[2] / 'exporter' / 'fixtures' / 'real-h200-metrics-both.txt').read_text()
XIDS = '''# TYPE gpuvirt_gpu_xid_events_total counter
gpuvirt_gpu_xid_events_total{UUID="GPU-a",gpu="0"} 2.0
gpuvirt_gpu_xid_events_total{UUID="GPU-a",gpu="0",xid="79"} 3
gpuvirt_gpu_xid_events_total{UUID="GPU-b",gpu="1"} NaN-ish
gpuvirt_exporter_nvml_up 0
gpuvirt_exporter_xid_events_supported 1
gpuvirt_exporter_invocation_info{invocation_id="0123abcd"} 1
'''


def test_the_real_h200_scrape_reads_nvml_up_xid_watched_and_no_xid():
    assert result(200, REAL_H200, 'OK') == {'ok': True, 'status': 200, 'msg': 'OK', 'nvml_up': True, 'xid_supported': True,
                                            'xid_total': 0, 'invocation': ''}


def test_xid_counts_of_every_gpu_and_xid_are_summed_and_a_value_that_is_no_number_is_skipped():
    read = result(200, XIDS)
    assert (read['xid_total'], read['nvml_up'], read['xid_supported'], read['invocation']) == (5, False, True, '0123abcd')


def test_a_sample_inside_a_comment_or_another_series_is_not_read():
    text = '# gpuvirt_exporter_nvml_up 1\nxgpuvirt_exporter_nvml_up 1\ngpuvirt_exporter_nvml_up 10\n'
    assert result(200, text)['nvml_up'] is False


@pytest.mark.parametrize('status', [-1, 401, 503])
def test_an_exporter_that_did_not_answer_200_gives_no_values(status):
    assert result(status, XIDS, 'refused') == {'ok': False, 'status': status, 'msg': 'refused', 'nvml_up': False,
                                               'xid_supported': False, 'xid_total': 0, 'invocation': ''}


def test_the_filter_reads_a_uri_result_and_takes_systemds_invocation_only_where_the_exporter_publishes_none():
    answered = {'status': 200, 'content': REAL_H200, 'msg': 'OK (58 bytes)'}
    assert exporter_scrape(answered, ' 9f8e\n') == dict(result(200, REAL_H200, 'OK (58 bytes)'), invocation='9f8e')
    assert exporter_scrape({'status': 200, 'content': XIDS}, 'ffff')['invocation'] == '0123abcd'
    refused = {'status': -1, 'msg': 'Request failed: <urlopen error [Errno 111] Connection refused>'}
    assert exporter_scrape(refused) == result(-1, '', refused['msg'])
    with pytest.raises(AnsibleFilterError, match='result of a uri task'):
        exporter_scrape('200 OK')
