"""Trace-driven simulation of a P/D deployment under voltana's policies (``voltana simulate``).

``workload`` / ``synthetic``: requests from trace files or the fitted generator; ``cluster``: the
discrete-event engine (instances driven by the real controllers, routing through the hook); ``metrics``:
energy, latency, SLO attainment; ``runner``: policy specs and one run; ``oracle``: best static clocks in
hindsight; ``sweep``: policies x rates; ``report`` / ``plot``: tables, JSON and PNG.
"""
