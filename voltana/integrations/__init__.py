"""Integrations with distributed serving engines (same layer as ``voltana.router`` and ``voltana.sim``)."""
