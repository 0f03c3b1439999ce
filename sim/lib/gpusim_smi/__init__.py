"""nvidia-smi stand-in of the gpuvirt.fleet GPU simulator.

Prints what the real ``nvidia-smi`` (driver 580) prints for the subcommands the collection
uses, reading every value through the ``pynvml`` API: the NVML stand-in on a simulated host
(sim/lib/pynvml.py), the real nvidia-ml-py anywhere else. Faults injected into NVML therefore
show in nvidia-smi's output exactly where the real tool would show them.

Implemented: ``-L``; ``-q`` and ``-q -x``; ``--query-gpu=... --format=csv[,noheader][,nounits]``;
``mig -lgip``; ``mig -lgipp``; each with ``-i`` (index, list, UUID or PCI bus id); ``-r -i ID`` (GPU reset,
see reset.py: the one change made outside NVML). Anything else is refused on stderr with exit code 2
("gpusim nvidia-smi: unsupported arguments: ...").

Deliberate differences from the real tool:

* A GPU that cannot be opened (fallen off the bus, or a fault injected into
  nvmlDeviceGetHandleByIndex) is named by its PCI bus id when NVML still gives it, else by its
  index: the real tool reads the bus id from the driver, which NVML does not expose for a lost
  GPU. The exit code follows the NVML error (15 for a lost GPU). With ``-q -x`` the message goes
  to stderr so stdout stays a well-formed XML document with the other GPUs.
* Fields no NVML call backs here (display mode, c2c/sparse modes, clock-event counters, PCI
  class codes, T.Limit offsets, fabric, capabilities) are printed with the real H100 capture's
  value; fields whose NVML call the module lacks print N/A.
* ``--query-gpu`` renders a subset of the real fields: a real field outside it is refused as
  unsupported (exit 2, on stderr) rather than answered wrongly.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
