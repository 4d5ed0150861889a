"""voltana.router."""
