"""Every command's ``--help`` as rendered (rich): no markup eaten, no RST literals, true defaults."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from voltana.cli.app import build_app

COMMANDS = ("clockd", "emulate", "profile", "simulate", "router", "doctor")


def _help(monkeypatch: pytest.MonkeyPatch, command: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")
    result = CliRunner().invoke(build_app(), [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_rst_literals(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    assert "``" not in _help(monkeypatch, command)


def test_clockd_help_names_the_hardware_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: rich markup ate "[hardware]" and left "the config's  section"."""
    assert "Opens the GPUs of the config's hardware section" in _help(monkeypatch, "clockd")


def test_simulate_duration_help_gives_each_workloads_default(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(monkeypatch, "simulate")
    assert "default: synthetic 300, sharegpt/lmsys 60" in text
