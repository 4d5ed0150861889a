"""Running the ``voltana`` command in-process with a TOML config, as a user would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from voltana.cli import main


def simulate_with_config(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    config_text: str,
    policies: str,
) -> tuple[int | str | None, list[str]]:
    """``voltana -c <config> simulate`` (5 s at 3 req/s of ``policies``): (exit code, the non-blank lines
    of stderr)."""
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    argv = [
        "voltana",
        "-c",
        str(config),
        "simulate",
        "--duration",
        "5",
        "--rates",
        "3",
        "--policies",
        policies,
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def simulate_in_process(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``voltana simulate <args>`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["voltana", "simulate", *args])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err
