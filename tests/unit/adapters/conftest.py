"""Fixtures for the runtime tests: a registered hook recorder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.runtime_records import HookRecorder
from voltana.plugins import get_plugin_manager


@pytest.fixture
def recorder() -> Iterator[HookRecorder]:
    """A :class:`HookRecorder` registered with the process plugin manager for the test."""
    pm = get_plugin_manager()
    plugin = HookRecorder()
    pm.register(plugin, name="test-recorder")
    yield plugin
    pm.unregister(name="test-recorder")


from tests.support.standin_nvml.fixtures import standin_nvml, standin_nvml_dir  # noqa: E402

__all__ = ["recorder", "standin_nvml", "standin_nvml_dir"]
