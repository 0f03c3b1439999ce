"""nvidia-ctk stand-in of the gpuvirt.fleet simulator: `nvidia-ctk cdi generate` and `nvidia-ctk cdi list`.

It reads the GPUs through `pynvml` (the NVML stand-in on a simulated host), the MIG capability minors from
/proc/driver/nvidia/capabilities and the device nodes from /dev, as the NVIDIA Container Toolkit reads NVML, procfs and
/dev, and prints a CDI spec of the shape the real tool prints (kind nvidia.com/gpu, one device per GPU and per MIG
device, `all`, the common container edits). Standard library only.
"""
