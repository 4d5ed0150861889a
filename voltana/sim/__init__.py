"""voltana.sim."""
