"""Without SGLang and with voltana disabled, the SGLang plugin entry point is inert and imports no engine."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from voltana.adapters.sglang import plugin


def test_disabled_register_imports_nothing_of_sglang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "_registered", False)
    before = {name for name in sys.modules if name.startswith("sglang")}
    plugin.register()
    assert {name for name in sys.modules if name.startswith("sglang")} == before


def test_supported_range_is_the_one_the_extra_pins() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["sglang"] == [f"sglang{plugin.SUPPORTED_SGLANG}"]
    entry = pyproject["project"]["entry-points"]["sglang.srt.plugins"]["voltana"]
    assert entry == "voltana.adapters.sglang.plugin:register"
