"""The generated reference pages name every config key, command-line option, hook and built-in policy."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from voltana.core import hookspecs
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.policies import policies_of
from voltana.plugins import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pages() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "gen_pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_key_is_in_the_reference(pages: ModuleType) -> None:
    text = pages.config_reference()
    keys = [key for key, _, _ in pages.config_keys()]
    assert {"enabled", "slo.ttft_s", "router.decode", "policy.safety_margin"} <= set(keys)
    for key in keys:
        assert f"| `{key}` |" in text
        assert f"`VOLTANA_{key.upper().replace('.', '__')}`" in text
    # types read as written, without the validators of ConfigFloat/ConfigInt (voltana.core.config)
    assert "Annotated" not in text and "Validator" not in text
    assert "| `hardware.power_limit_w` | `float | None` |" in text
    assert "| `clocks.allowed_mhz` | `list[int]` |" in text


def test_every_cli_command_and_option_is_in_the_reference(pages: ModuleType) -> None:
    text = pages.cli_reference()
    commands = pages.cli_commands()
    names = {path for path, _ in commands}
    assert {"voltana", "voltana simulate", "voltana router", "voltana doctor", "voltana config show"} <= names
    for path, command in commands:
        assert f"## `{path}`" in text
        for param in command.params:
            for opt in param.opts:
                if opt != "--help":
                    assert f"`{opt}`" in text, (path, opt)


def test_every_hook_is_in_the_reference(pages: ModuleType) -> None:
    text = pages.hooks_reference()
    hooks = [name for name in dir(hookspecs) if name.startswith("voltana_")]
    assert len(hooks) >= 6
    for name in hooks:
        assert f"## `{name}`" in text
    assert "Calling: broadcast" in text


def test_every_builtin_policy_is_in_the_reference(pages: ModuleType) -> None:
    text = pages.hooks_reference()
    registered = policies_of(make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook)
    assert {("clock", "ecofreq"), ("route", "ecoroute")} <= {(p.kind, p.name) for p in registered}
    for info in registered:
        assert f"| {info.kind} | `{info.name}` |" in text


def test_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 10 * 1024
