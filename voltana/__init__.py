"""voltana: energy middleware for LLM serving (per-iteration, per-phase GPU clock control)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voltana")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
