"""Third-party plugins through the ``voltana`` entry-point group, and the allowlist."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from voltana.core.contexts import ClockContext
from voltana.core.plugin_manager import PluginLoadError, make_plugin_manager, registered_policies
from voltana.core.types import BatchSnapshot, DecisionReason, Phase, Slo
from voltana.plugins import DEFAULT_PLUGINS


def install_distribution(root: Path, module: str, source: str, ep_name: str) -> None:
    """A tiny installed distribution (module + dist-info with an entry point) on ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[voltana]\n{ep_name} = {module}\n")


THIRD_PARTY = """
from voltana.core.hookspecs import hookimpl
from voltana.core.types import ClockDecision, DecisionReason

@hookimpl
def voltana_choose_clock(snapshot, ctx):
    return ClockDecision(ctx.allowed_clocks_mhz[1], DecisionReason.STATIC, "thirdparty")

@hookimpl
def voltana_register_policies(register):
    from voltana.core.contexts import PolicyInfo
    register(PolicyInfo("clock", "thirdparty", "pins the second clock"))
"""


def choose(pm: object) -> object:
    ctx = ClockContext("static-max", "i0", Phase.DECODE, (900, 1200, 1410), Slo(0.8, 0.05))
    snapshot = BatchSnapshot.build(Phase.DECODE, (), now_s=0.0)
    return pm.hook.voltana_choose_clock(snapshot=snapshot, ctx=ctx)  # type: ignore[attr-defined]


def test_builtin_static_max(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    decision = choose(pm)
    assert decision.clock_mhz == 1410  # type: ignore[attr-defined]
    assert decision.reason is DecisionReason.STATIC  # type: ignore[attr-defined]


def test_entry_point_plugin_wins_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_thirdparty_demo", THIRD_PARTY, "thirdparty")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    assert pm.get_plugin("thirdparty") is not None
    assert choose(pm).clock_mhz == 1200  # type: ignore[attr-defined]
    assert "thirdparty" in {p.name for p in registered_policies(pm)}


def test_allowlist_excludes_unlisted_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_thirdparty_demo2", THIRD_PARTY, "thirdparty2")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VOLTANA_PLUGINS", "someone-else")
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    assert pm.get_plugin("thirdparty2") is None
    assert choose(pm).clock_mhz == 1410  # type: ignore[attr-defined]


def test_misspelt_hook_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from voltana.core.hookspecs import hookimpl

    @hookimpl
    def voltana_chose_clock(snapshot, ctx):
        return None
    """
    install_distribution(tmp_path, "voltana_typo_demo", source, "typo")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="unknown hook"):
        make_plugin_manager(DEFAULT_PLUGINS)


def test_broken_plugin_import_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_broken_demo", "raise ImportError('missing dep')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match=r"'broken'.*missing dep"):
        make_plugin_manager(DEFAULT_PLUGINS)
