"""FUSE emulation of the mdev sysfs trees of a simulated vGPU host, backed by the gpusim state (see fs.py)."""
