"""The engine emulator: servers speaking vLLM's or SGLang's HTTP and P/D protocols, timed by the simulated
GPU.

A test double for the router, the profiler and the Ray integration, and the engines of ``voltana emulate``.
It sits beside :mod:`voltana.router` and :mod:`voltana.sim` in the layers (it uses the router's serving
helpers and the simulated GPU, never the reverse).
"""
