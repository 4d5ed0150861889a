"""voltana.adapters.sglang."""
