"""voltana.adapters."""
