"""voltana.hardware: GPUs behind one interface.

``device`` (GpuDevice, GpuGroup), drivers ``nvml`` (NVIDIA), ``amd`` (AMD SMI) and ``simulated`` (a
calibrated physics model; constants in ``profiles``), ``applier`` (clock changes off the hot path),
``watchdog`` (clock restore after a crash), ``energy`` (meter windows), ``select`` (vendor by config),
``errors`` (one exception hierarchy).
"""
