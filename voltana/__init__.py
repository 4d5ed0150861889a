"""voltana: energy middleware for LLM serving (per-iteration, per-phase GPU clock control)."""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # The version is read from the installed metadata on first use, not at import: ``import voltana`` (the
    # first thing the ``voltana`` console script does) stays free of importlib.metadata, so a Ctrl-C at that
    # moment reaches the entry point's handler instead of printing a traceback.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - see above

        try:
            value = version("voltana")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
