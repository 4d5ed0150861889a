"""voltana.hardware: GPUs behind one interface.

``device`` (GpuDevice, GpuGroup), drivers ``nvml`` (NVIDIA), ``amd`` (AMD SMI) and ``simulated`` (a
calibrated physics model; constants in ``profiles``), ``applier`` (clock changes off the hot path),
``watchdog`` (clock restore after a crash), ``clockd`` (the privileged clock helper), ``counters`` (counter
wraps vs drops, fallback to integrated power, energy sources), ``energy`` (meter windows), ``select`` (vendor
by config), ``errors`` (one exception hierarchy).
"""
