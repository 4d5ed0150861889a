"""``[cluster]`` settings: the power budget and its period, validated with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from voltana.core.config import ConfigError, load_config


def test_cluster_budget_reads_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "voltana.toml"
    path.write_text("[cluster]\npower_budget_w = 1200\nbudget_period_s = 0.5\n")
    cluster = load_config(path).config.cluster
    assert (cluster.power_budget_w, cluster.budget_period_s, cluster.budget_margin) == (1200.0, 0.5, 0.05)
    monkeypatch.setenv("VOLTANA_CLUSTER__POWER_BUDGET_W", "900")
    assert load_config(path).config.cluster.power_budget_w == 900.0


def test_no_budget_by_default() -> None:
    assert load_config().config.cluster.power_budget_w is None


def test_a_negative_budget_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "voltana.toml"
    path.write_text("[cluster]\npower_budget_w = -5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value) and "cluster.power_budget_w" in str(info.value)
