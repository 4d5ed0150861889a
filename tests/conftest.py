"""Shared fixtures: a clean plugin manager and environment for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from voltana.plugins import reset_plugin_manager


@pytest.fixture(autouse=True)
def _clean_voltana_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No VOLTANA_* variable from the developer's shell leaks into a test; the plugin manager is rebuilt."""
    for name in list(os.environ):
        if name.startswith("VOLTANA_"):
            monkeypatch.delenv(name)
    reset_plugin_manager()
    yield
    reset_plugin_manager()
