"""python -m gpusim_sysfs MOUNTPOINT [--root STATE_DIR] [--sriov]: serve the emulated vGPU sysfs trees until unmounted."""
from __future__ import annotations

import argparse

from gpusim_sysfs.fs import mount


def main() -> None:
    parser = argparse.ArgumentParser(prog='gpusim_sysfs')
    parser.add_argument('mountpoint')
    parser.add_argument('--root', default=None, help='gpusim state directory (default: $GPUSIM_ROOT)')
    parser.add_argument('--sriov', action='store_true',
                        help='GPUs with SR-IOV VFs (A40) use the SR-IOV vendor vGPU interface under bus/pci/devices instead of mdev')
    args = parser.parse_args()
    mount(args.mountpoint, args.root, sriov=args.sriov)


if __name__ == '__main__':
    main()
