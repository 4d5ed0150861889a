"""User-facing defects of ``voltana profile --engine`` found in QA (issue 14), each against ``voltana emulate``
or before any load is sent: the root ``--config``, SIGTERM, resuming with another grid, partial profiles,
bad ``--plot`` / ``-o`` paths, and URLs that are not voltana engines."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.profiling import TOKEN, VOLTANA, profile_command, running_emulator, voltana_env

pytestmark = pytest.mark.slow
SMALL = ("--phase", "decode", "--clocks", "210,1410", "--max-batch", "4", "--max-prompt-tokens", "256")


def _voltana(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VOLTANA, *args], capture_output=True, text=True, env=voltana_env(env), timeout=300, check=False
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_root_config_option_gives_the_clock_token(tmp_path: Path) -> None:
    config = tmp_path / "voltana.toml"
    config.write_text(f'[engine]\nclock_token = "{TOKEN}"\n', encoding="utf-8")
    out = tmp_path / "p.json"
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        cmd = profile_command([emu.decode_url], out, *SMALL)
        result = _voltana(["--config", str(config), *cmd[len(VOLTANA) :]])  # no token in the environment
        assert result.returncode == 0, result.stderr
        assert out.exists()
        missing = _voltana(["--config", str(tmp_path / "nope.toml"), *cmd[len(VOLTANA) :]])
    assert missing.returncode == 2
    assert _lines(missing.stderr) == [f"error: config file not found: {tmp_path / 'nope.toml'}"]
