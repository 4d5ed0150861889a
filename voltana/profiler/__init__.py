"""Profiling a live engine: the engine-side clock/iteration API and the ``voltana profile --engine`` client.

Layer 4 (next to the router and the emulator): :mod:`.engine_api` is the HTTP contract every voltana
engine serves (vLLM, SGLang, the emulator); the other modules drive it to fit an EcoPred profile.
"""
