"""python -m gpusim_sysfs MOUNTPOINT [--root STATE_DIR]: serve the emulated mdev trees until unmounted."""
from __future__ import annotations

import argparse

from gpusim_sysfs.fs import mount


def main() -> None:
    parser = argparse.ArgumentParser(prog='gpusim_sysfs')
    parser.add_argument('mountpoint')
    parser.add_argument('--root', default=None, help='gpusim state directory (default: $GPUSIM_ROOT)')
    args = parser.parse_args()
    mount(args.mountpoint, args.root)


if __name__ == '__main__':
    main()
