"""User-facing defects of ``voltana profile --engine`` found in QA (issue 14), against ``voltana emulate``:
the root ``--config``, SIGTERM, resuming with another grid, partial profiles, bad ``--plot`` / ``-o`` paths,
and URLs that are not voltana engines."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.profiling import (
    TOKEN,
    VOLTANA,
    clock_state,
    free_port_pair,
    profile_command,
    run_profile,
    running_emulator,
    voltana_env,
    wait_for,
    wait_up,
)
from voltana.core.profile import ProfileError, load_profile

pytestmark = pytest.mark.slow
PROGRESS = re.compile(r"^profiling \d+ clocks: (\d+)/(\d+) \(\d+%\), elapsed \S+, ETA \S+$")
SMALL = ("--phase", "decode", "--clocks", "210,1410", "--max-batch", "4", "--max-prompt-tokens", "256")


def _voltana(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VOLTANA, *args], capture_output=True, text=True, env=voltana_env(env), timeout=300, check=False
    )


def _lines(text: str) -> list[str]:
    """The non-empty lines, less the plain progress lines printed when output is not a terminal."""
    return [line for line in text.splitlines() if line.strip() and not PROGRESS.match(line)]


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


def _interrupt_after_one_unit(engine: str, out: Path, sig: signal.Signals, *args: str) -> tuple[int, str]:
    """Start a decode profile with a 60 s lease, send ``sig`` once a unit is checkpointed; (rc, output)."""
    cmd = profile_command([engine], out, "--lease-s", "60", "--phase", "decode", "--max-batch", "64", *args)
    env = voltana_env({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: out.with_name(out.name + ".partial").exists(), 120.0, "a finished clock")
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0].decode()
        return proc.returncode, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_unpins_at_once_and_writes_a_partial_profile_that_loaders_refuse(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        rc, output = _interrupt_after_one_unit(emu.decode_url, out, signal.SIGTERM)
        assert rc == 143, output
        # With a 60 s lease, only the explicit unpin can explain a free clock now.
        assert clock_state(emu.decode_url)["pinned_mhz"] is None
    assert "Traceback" not in output
    lines = _lines(output)
    assert len(lines) == 1 and "PARTIAL profile" in lines[0] and "not for deployment" in lines[0], lines
    partial = load_profile(out, allow_partial=True)
    assert partial.metadata["complete"] is False and len(partial.clocks_mhz) < 8
    with pytest.raises(ProfileError, match="partial"):  # engine.predictor_profile and the router load so
        load_profile(out)


def test_resume_with_other_grid_options_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    checkpoint = out.with_name("p.json.partial")
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        rc, output = _interrupt_after_one_unit(emu.decode_url, out, signal.SIGINT, "--clocks", "210,720,1410")
        assert rc == 130, output
        assert len(_lines(output)) == 1 and "PARTIAL" in output  # one line on Ctrl-C, and it says partial
        before = checkpoint.read_bytes()
        other = run_profile(
            [emu.decode_url], out, "--phase", "decode", "--max-batch", "64", "--clocks", "210,1410"
        )
    assert other.returncode == 2
    lines = _lines(other.stderr)
    assert len(lines) == 1 and "--clocks" in lines[0] and "--restart" in lines[0], lines
    assert checkpoint.read_bytes() == before  # nothing mixed in
    assert load_profile(out, allow_partial=True).metadata["complete"] is False


def test_bad_paths_and_clocks_fail_in_one_line_before_any_load(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    cases = {
        ("-o", str(tmp_path / "adir")): "is a directory",
        ("-o", str(tmp_path / "missing" / "p.json")): "no such directory",
        ("-o", f"{tmp_path}/newdir/"): "is not a file path",  # was written as a file 'newdir'
        ("--plot", str(tmp_path / "missing" / "u.png")): "no such directory",
        ("--plot", str(tmp_path / "u.bmp")): "cannot write .bmp files; use one of",
        ("--clocks", ""): "--clocks is empty",
    }
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        for args, reason in cases.items():
            out = tmp_path / "ok.json"
            if args[0] == "-o":
                cmd = [a for a in profile_command([emu.decode_url], out) if a not in ("-o", str(out))]
                result = _voltana([*cmd[len(VOLTANA) :], *args], {"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN})
            else:
                result = run_profile([emu.decode_url], out, *args)
            assert result.returncode == 2, (args, result.stderr)
            lines = _lines(result.stderr)
            assert len(lines) == 1 and reason in lines[0], (args, lines)
        next_seq = httpx.get(f"{emu.decode_url}/voltana/iterations", timeout=10).json()["next"]
    assert next_seq == 0  # no load was sent for any of them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # nothing written beside anything


def test_a_url_that_is_not_a_voltana_engine_is_one_line(tmp_path: Path) -> None:
    port = free_port_pair()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}/", server)
        result = run_profile([f"http://127.0.0.1:{port}"], tmp_path / "p.json")
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 2
    lines = _lines(result.stderr)
    assert len(lines) == 1 and "404" in lines[0] and "voltana" in lines[0], lines
    assert "<" not in lines[0]  # no HTML


def test_progress_is_printed_as_lines_when_not_a_terminal(tmp_path: Path) -> None:
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        result = run_profile([emu.decode_url], tmp_path / "p.json", *SMALL)  # stderr is a pipe
    assert result.returncode == 0, result.stderr
    progress = [m.groups() for m in map(PROGRESS.match, result.stderr.splitlines()) if m]
    assert len(progress) >= 2, result.stderr
    done, total = progress[-1]
    assert done == total and int(total) > 0
