"""voltana.hardware."""
