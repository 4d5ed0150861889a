"""Fixtures of the SGLang tier (runs in .venv-sglang: ``make env-sglang``); builders in ``sglang_objects``."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from typing import Any

import pytest

if importlib.util.find_spec("sglang") is None:
    # This tier runs in .venv-sglang (``make env-sglang``); in other environments it is not collected.
    collect_ignore_glob = ["test_*.py", "sglang_objects.py"]


@pytest.fixture
def clean_sglang_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SGLang's hook registry, plugin-loaded flag and the hooked methods are restored after the test."""
    import sglang.srt.plugins as sglang_plugins
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.plugins import hook_registry

    from voltana.adapters.sglang import binding, plugin

    hook_registry.HookRegistry.reset()

    monkeypatch.setattr(sglang_plugins, "_plugins_loaded", False)
    monkeypatch.setattr(plugin, "_registered", False)
    for name in plugin.HOOKED_METHODS:
        monkeypatch.setattr(Scheduler, name, Scheduler.__dict__[name])
    monkeypatch.setattr(binding, "_factory", binding._unbound)
    yield
    hook_registry.HookRegistry.reset()


@pytest.fixture
def voltana_errors(caplog: pytest.LogCaptureFixture) -> Any:
    """ERROR records voltana logged during the test."""
    caplog.set_level(logging.INFO)
    return lambda: [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("voltana")]
