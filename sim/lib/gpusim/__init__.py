"""GPU simulator: per-host state, GPU model data and MIG/vGPU rules behind the NVML stand-in.

Modules: ``store`` (state file and locking), ``models`` (GPU model data files), ``mig``
(placement rules), ``host`` (state construction and host operations), ``errors`` (NVML
return codes), ``cli`` (gpusimctl).  Only the standard library is used.
"""
