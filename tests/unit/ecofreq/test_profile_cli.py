"""``voltana profile`` run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voltana.core.profile import load_profile
from voltana.core.types import Phase


def run_cli(*args: str, first_on_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    if first_on_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(first_on_path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "voltana.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_profile_writes_a_loadable_profile(tmp_path: Path) -> None:
    out = tmp_path / "h100.json"
    result = run_cli(
        "profile",
        "--gpu",
        "h100-80gb",
        "--model",
        "llama-3.1-8b",
        "--clocks",
        "1005,1410,1980",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    profile = load_profile(out)
    assert profile.clocks_mhz == (1005, 1410, 1980)
    assert profile.metadata["gpu"] == "h100-80gb"
    assert set(profile.phases) == set(Phase)


def test_unknown_gpu_model_or_clock_is_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (("--gpu", "x100"), "unknown simulated GPU 'x100'; known: a100-80gb"),
        (("--model", "gpt-9"), "unknown simulated model 'gpt-9'"),
        (("--clocks", "999"), "not supported"),
    ):
        result = run_cli("profile", *args, "-o", str(tmp_path / "p.json"))
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_plot_without_matplotlib_names_the_extra_in_one_line(tmp_path: Path) -> None:
    # A matplotlib that cannot be imported, first on the path: as an install without the [plot] extra.
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    result = run_cli(
        "profile",
        "-o",
        str(tmp_path / "p.json"),
        "--plot",
        str(tmp_path / "p.png"),
        first_on_path=shadow.parent,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "voltana profile --plot needs matplotlib" in lines[0] and "voltana[plot]" in lines[0]
    assert not (tmp_path / "p.json").exists()  # refused before profiling


def test_profile_on_a_pipe_writes_nothing_to_stderr(tmp_path: Path) -> None:
    """The bar draws nothing off a terminal; rich's closing blank line is not printed either."""
    out = tmp_path / "p.json"
    result = run_cli(
        "profile", "--gpu", "h100-80gb", "--model", "llama-3.1-8b", "--clocks", "1005,1410", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_outputs_and_simulated_choices_that_would_lose_or_ignore_something_are_one_line(
    tmp_path: Path,
) -> None:
    cases = (
        (("-o", os.devnull), "is not a regular file"),  # was replaced by a regular file holding the profile
        (("-o", str(tmp_path / "same.png"), "--plot", str(tmp_path / "same.png")), "is the file -o writes"),
        (("--simulated", "a100-80gb", "llama-3.1-8b", "--gpu", "h100-80gb"), "not both"),
        (("--engine", "http://127.0.0.1:9", "--model", "qwen3-32b"), "drop --simulated/--gpu/--model/--tp"),
        (("--engine", "http://127.0.0.1:9", "--tp", "2"), "drop --simulated/--gpu/--model/--tp"),
        (("--gpu", ""), "unknown simulated GPU ''"),  # an empty name is not the default
        (("--model", ""), "unknown simulated model ''"),
    )
    for args, reason in cases:
        extra = () if "-o" in args else ("-o", str(tmp_path / "p.json"))
        result = run_cli("profile", *args, *extra)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and reason in lines[0], (args, lines)
    assert Path(os.devnull).is_char_device()
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_path_with_brackets_is_named_as_given(tmp_path: Path) -> None:
    """Paths are printed as text, not read as console markup: ``[red]`` stays in the name, ``[/x]`` is no
    markup error (it was a traceback)."""
    out = tmp_path / "[red]p.json"
    result = run_cli("profile", "--gpu", "h100-80gb", "--clocks", "1005,1410", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} " in result.stdout and out.exists()
    missing = tmp_path / "nodir" / "[/x].json"
    refused = run_cli("profile", "--gpu", "h100-80gb", "-o", str(missing))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0]


def test_a_plot_that_cannot_be_written_at_the_end_keeps_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plot's directory removed after ``--plot`` was checked: the profile is saved and said, then the
    failure in one line, exit status 2 (was a FileNotFoundError traceback)."""
    from voltana.cli import main
    from voltana.profiler import plot as plotting

    gone = tmp_path / "gone"
    gone.mkdir()
    plot, out = gone / "p.png", tmp_path / "p.json"
    real = plotting.plot_profile

    def vanished_first(*args: Any, **kwargs: Any) -> Path:
        shutil.rmtree(gone)
        return real(*args, **kwargs)

    monkeypatch.setattr(plotting, "plot_profile", vanished_first)
    monkeypatch.setattr(
        sys, "argv", ["voltana", "profile", "--clocks", "1005,1410", "-o", str(out), "--plot", str(plot)]
    )
    with pytest.raises(SystemExit) as stopped:
        main()
    captured = capsys.readouterr()
    assert stopped.value.code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == [f"error: cannot write the plot {plot}: No such file or directory"]
    assert f"wrote {out}" in captured.out and load_profile(out).clocks_mhz == (1005, 1410)
