# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Entry point: python -m gpuvirt_exporter."""

from __future__ import annotations

import sys

from gpuvirt_exporter.server import main

sys.exit(main())
