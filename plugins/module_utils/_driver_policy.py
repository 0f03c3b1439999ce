# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Driver policy data: which driver branches and kernel-module flavours can drive which GPUs.

This file is data only, so that it can be updated without touching code. Inventory overrides any entry
through the role variable ``driver_policy`` (the module option ``policy``), merged key by key over this one:
``{'architectures': {'hopper': {'min_version': '535'}}}`` changes only Hopper's floor.

Per entry:
- ``flavors``: the kernel-module flavours that can drive the GPU (``open``, ``proprietary``).
- ``recommended``: the flavour ``flavor: auto`` picks when every GPU of the host allows it.
- ``min_version``: the oldest driver that drives the GPU (``'525'`` = any 525.x; ``'570.133.20'`` exact).
- ``max_branch``: the newest branch that still drives it (a ceiling: the architecture left later branches).
- ``source``: where the numbers come from (NVIDIA docs and release notes; ``estimate`` where none gave one).

``models`` entries refine the architecture's entry for GPUs whose product name contains the key
(case-insensitive); the longest matching key wins.
"""

from __future__ import annotations

POLICY = {
    'format': 1,
    'architectures': {
        'kepler': {
            'flavors': ['proprietary'], 'recommended': 'proprietary', 'min_version': None, 'max_branch': 470,
            'source': 'R470 is the last branch with Kepler support (legacy driver notes)',
        },
        'maxwell': {
            'flavors': ['proprietary'], 'recommended': 'proprietary', 'min_version': None, 'max_branch': 580,
            'source': 'open modules lack GSP support for pre-Turing GPUs; R580 is the last branch for Maxwell/Pascal/Volta',
        },
        'pascal': {
            'flavors': ['proprietary'], 'recommended': 'proprietary', 'min_version': None, 'max_branch': 580,
            'source': 'as maxwell',
        },
        'volta': {
            'flavors': ['proprietary'], 'recommended': 'proprietary', 'min_version': None, 'max_branch': 580,
            'source': 'as maxwell',
        },
        'turing': {
            'flavors': ['open', 'proprietary'], 'recommended': 'open', 'min_version': '418', 'max_branch': None,
            'source': 'open modules recommended since R560; floor is an estimate (first data-center branch for T4)',
        },
        'ampere': {
            'flavors': ['open', 'proprietary'], 'recommended': 'open', 'min_version': '450', 'max_branch': None,
            'source': 'open modules recommended since R560; R450 first branch for A100',
        },
        'ada': {
            'flavors': ['open', 'proprietary'], 'recommended': 'open', 'min_version': '525', 'max_branch': None,
            'source': 'open modules recommended since R560; floor is an estimate (L4/L40 production branch)',
        },
        'hopper': {
            'flavors': ['open', 'proprietary'], 'recommended': 'open', 'min_version': '525', 'max_branch': None,
            'source': 'R525 first production branch for H100 (R520 first to know it)',
        },
        'blackwell': {
            'flavors': ['open'], 'recommended': 'open', 'min_version': '570.133.20', 'max_branch': None,
            'source': 'open modules required; HGX B200 needs 570.133.20',
        },
    },
    'models': {
        'H200': {'min_version': '550', 'source': 'R550 first branch for H200'},
        'GH200': {
            'flavors': ['open'], 'recommended': 'open', 'min_version': '535',
            'source': 'Grace Hopper needs the open modules; floor is an estimate',
        },
        'RTX PRO 6000 Blackwell Server': {'min_version': '575.57.08', 'source': 'release notes'},
    },
}
