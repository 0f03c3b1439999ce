# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt-exporter: GPU, MIG and vGPU metrics from NVML for Prometheus (a standalone service, no Ansible at run time)."""

__version__ = '1.0.0'
DEFAULT_PORT = 9945
