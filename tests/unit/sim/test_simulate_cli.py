"""``voltana simulate`` as a user runs it: JSON output, a plot, and one clear line per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import simulate_in_process


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "voltana.cli", "simulate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def one_error_line(code: int, err: str) -> str:
    """The single stderr line of a failed run (exit status 2), asserting there is exactly one."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_json_sweep_with_plot(tmp_path: Path) -> None:
    plot = tmp_path / "out.png"
    result = run_cli(
        "--duration",
        "10",
        "--rates",
        "3,6",
        "--policies",
        "static-max,ecofreq+ecoroute",
        "--json",
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [p["rate_rps"] for p in data["points"]] == [3.0, 6.0]
    first = data["points"][0]["results"]
    assert [r["policy"] for r in first] == ["static-max", "ecofreq+ecoroute"]
    assert first[0]["saving_vs_static_max"] == 0.0
    assert 0.0 <= first[1]["slo_attainment"] <= 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output_on_a_trace(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    rows = "".join(f"{i * 0.3},{200 + 10 * i},{20 + i}\n" for i in range(30))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    result = run_cli("--workload", str(trace), "--policies", "static-max,static-min")
    assert result.returncode == 0, result.stderr
    assert "static-min" in result.stdout and "saving" in result.stdout and "clock residency" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "/nonexistent/trace.csv"], "workload file not found"),
        (["--gpu", "z80"], "unknown simulated GPU"),
        (["--model", "gpt-17"], "unknown simulated model"),
        (["--itl", "0.0005"], "impossible SLOs: ITL"),
        (["--ttft", "0.001"], "impossible SLOs: TTFT"),
        (["--policies", "warp-speed"], "--policies: unknown clock policy 'warp-speed'; registered: "),
        (["--policies", "ecofreq+teleport"], "--policies: unknown routing policy 'teleport'; registered: "),
        (["--policies", "static-max+"], "--policies: empty decode route after '+' in 'static-max+'"),
        (["--policies", "static-max + + ecoroute"], "--policies: more than one '+' in 'static-max++"),
        (["--policies", "static-max,,ecofreq"], "--policies: an empty item in 'static-max,,ecofreq'"),
        (["--policies", "static-max,"], "--policies: an empty item in 'static-max,'"),
        (["--rates", "fast"], "--rates must be"),
        (["--prefill", "0"], "at least one instance"),
        (["--min-clock", "1500"], "contains no supported clock"),
        (
            ["--rates", "2,4", "--timeline-rate", "3", "--plot", "never-written.png"],
            "--timeline-rate 3 is not one of the simulated rates",
        ),
        (["--seed", "-1"], "--seed must be a whole number >= 0"),
        (["--rates", "2,4", "--timeline-rate", "2"], "--timeline-rate chooses the rate of the plot's clock"),
        (["--workload", "/dev/null"], "/dev/null is not a regular file"),
        (["--workload", "sharegpt", "--seed", "-7"], "--seed must be a whole number >= 0"),
        (["--rate", "1e9"], "1e+09 req/s for 5 s is 5e+09 requests; at most 1,000,000 per run"),
        (["--workload", "lmsys", "--rates", "5,1e7"], "1e+07 req/s for 5 s is 5e+07 requests"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console-script entry point in-process (the subprocess path is covered by the trace test below)."""
    code, _, err = simulate_in_process(["--duration", "5", *args], monkeypatch, capsys)
    assert message in one_error_line(code, err)


def test_garbled_trace_is_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,12x,4\n")
    result = run_cli("--workload", str(trace))
    assert result.returncode == 2
    assert "is not a number" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# Issue 18, item 8: options the simulation cannot honour stop with one line; the tables describe the
# requests actually simulated.


def gap_trace(tmp_path: Path) -> Path:
    """63 requests 0.5 s apart, a 144 s pause, 137 more: the first window's rate is far from the mean."""
    trace = tmp_path / "gap.csv"
    rows, t = [], 0.0
    for i in range(200):
        rows.append(f"{t:.3f},{300 + (7 * i) % 500},{30 + i % 40}\n")
        t += 144.0 if i == 62 else 0.5
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(rows))
    return trace


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate must be a positive request rate"),
        (["--rate", "-2"], "--rate must be a positive request rate"),
        (["--duration", "0"], "--duration must be a positive number of seconds"),
        (["--duration", "-5"], "--duration must be a positive number of seconds"),
        (["--rate", "2", "--rates", "1,2"], "give --rate or --rates, not both"),
        (["--tp", "3"], "tensor-parallel degree 3 does not split llama-3.1-8b's 32 attention heads"),
        (["--model", "qwen3-32b", "--tp", "6"], "use one of 1, 2, 4, 8, 16, 32, 64"),
    ],
)
def test_options_a_trace_run_cannot_honour_are_one_line(
    tmp_path: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload = ["--workload", str(gap_trace(tmp_path)), "--policies", "static-max"]
    code, _, err = simulate_in_process([*workload, *args], monkeypatch, capsys)
    assert message in one_error_line(code, err)


def test_table_reports_the_window_and_each_rates_scale_factor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(gap_trace(tmp_path))
    args = ["--workload", trace, "--rates", "1,2", "--duration", "102", "--policies", "static-max"]
    code, out, err = simulate_in_process([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["workload"] == "gap.csv"  # the trace itself, not the first rate's rescaled replay
    first, second = data["points"]
    # The whole trace (199 gaps over 99 + 144 = 243 s) rescaled to a 1 req/s mean is x1.22111; its first
    # 102 s hold the 63 requests before the pause: 62 gaps of 0.5 / 1.22111 s = 25.4 s, 2.44 req/s.
    factor = 243 / 199
    assert first["num_requests"] == 63
    assert first["arrival_span_s"] == pytest.approx(31 / factor)
    assert first["offered_rate_rps"] == pytest.approx(62 / (31 / factor))
    assert first["workload"] == "gap.csv x1.22111" and second["workload"] == "gap.csv x2.44221"
    assert second["num_requests"] == 200 and second["offered_rate_rps"] == pytest.approx(2.0)
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens
    assert "2.44 req/s: 63 requests in 25.4 s of arrivals (gap.csv x1.22111; sweep rate 1 req/s)" in out
    assert "2 req/s: 200 requests in 99.5 s of arrivals (gap.csv x2.44221; sweep rate 2 req/s)" in out


# Issue 18 follow-up: defects a QA run of `voltana simulate` found after items 6 and 8-11.


@pytest.mark.parametrize(
    ("gaps_s", "own_rate_rps"),
    [
        ([3601.0], 1 / 3601),  # the DST file: two requests an hour apart (0.000278 req/s rounds to 0.0)
        ([700.0] * 10, 10 / 7000),  # 11 requests 700 s apart: 0.00143 rounds to 0.001, a x0.7 replay
        ([0.3] * 29, 29 / 8.7),  # an ordinary trace: 3.33333 req/s was replayed x0.999849
    ],
)
def test_a_trace_without_rate_is_replayed_as_recorded(
    tmp_path: Path,
    gaps_s: list[float],
    own_rate_rps: float,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = tmp_path / "own.csv"
    arrivals = [0.0]
    for gap in gaps_s:
        arrivals.append(arrivals[-1] + gap)
    rows = "".join(f"{t},{200 + 10 * i},{20 + i}\n" for i, t in enumerate(arrivals))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    args = ["--workload", str(trace), "--policies", "static-max", "--json"]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens
    data = json.loads(out)
    (point,) = data["points"]
    assert point["workload"] == "own.csv"  # no scale factor: x1
    assert point["rate_rps"] == pytest.approx(own_rate_rps, rel=1e-12)
    assert point["num_requests"] == len(arrivals)
    assert point["arrival_span_s"] == pytest.approx(sum(gaps_s))


@pytest.mark.parametrize(
    ("plot_name", "message"),
    [
        ("missing/out.png", "--plot '{tmp}/missing/out.png': no such directory '{tmp}/missing'"),
        ("out.txt", "cannot write .txt files; use one of"),
        ("adir.png", "--plot '{tmp}/adir.png' is a directory; give a file path"),
        ("taken", "--plot '{tmp}/taken.png' is a directory; give a file path"),  # the file it would write
        ("adir/", "--plot '{tmp}/adir/' is not a file path (give a file name)"),
        ("out/.", "--plot '{tmp}/out/.' is not a file path (give a file name)"),
        ("afile/x.png", "--plot '{tmp}/afile/x.png': '{tmp}/afile' is a file, not a directory"),
        ("a" * 300 + ".png", "File name too long"),
        ("dangling.png", "--plot '{tmp}/dangling.png' is a link to a missing place; give a file path"),
    ],
)
def test_a_bad_plot_path_is_one_line_before_simulating(
    tmp_path: Path,
    plot_name: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import voltana.sim.sweep

    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "taken.png").mkdir()
    (tmp_path / "afile").write_text("")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere" / "x.png")
    before = sorted(tmp_path.iterdir())

    def no_simulation(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated before checking --plot")

    monkeypatch.setattr(voltana.sim.sweep, "run_sweep", no_simulation)
    args = ["--duration", "5", "--policies", "static-max", "--plot", f"{tmp_path}/{plot_name}"]  # as typed
    code, _, err = simulate_in_process(args, monkeypatch, capsys)
    assert message.format(tmp=tmp_path) in one_error_line(code, err)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_pgf_is_refused_where_its_latex_engine_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import voltana.core.files

    real_which = shutil.which
    monkeypatch.setattr(
        voltana.core.files.shutil, "which", lambda name: None if "tex" in name else real_which(name)
    )
    args = ["--duration", "5", "--policies", "static-max", "--plot", f"{tmp_path}/x.pgf"]
    code, _, err = simulate_in_process(args, monkeypatch, capsys)
    line = one_error_line(code, err)
    assert "cannot write .pgf files; use one of" in line and ".png" in line


def test_plot_without_extension_prints_the_file_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "figure"
    args = ["--duration", "5", "--rate", "2", "--policies", "static-max", "--plot", str(plot)]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens
    written = tmp_path / "figure.png"
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = out.strip().splitlines()[-1]
    # The real file, the timeline's rate and why that rate (docs/simulate-inputs.md promises both).
    assert last == (
        f"plot written to {written} (clock timeline of static-max at 2 req/s: "
        "highest rate where static-max meets the SLO for >= 90%)"
    )


@pytest.mark.parametrize("typed", ["figure.", "figure.."])
def test_a_trailing_dot_is_no_extension_and_json_mode_says_where_the_plot_went(
    typed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--duration", "5", "--rate", "2", "--policies", "static-max", "--json"]
    code, out, err = simulate_in_process([*args, "--plot", str(tmp_path / typed)], monkeypatch, capsys)
    assert code == 0, err
    written = tmp_path / "figure.png"  # not figure..png
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
    json.loads(out)  # stdout stays machine-readable; the file written is told on stderr
    assert err.strip().splitlines()[-1] == (
        f"plot written to {written} (clock timeline of static-max at 2 req/s: "
        "highest rate where static-max meets the SLO for >= 90%)"
    )


def test_plot_without_matplotlib_names_the_extra_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import voltana.sim.sweep

    def no_simulation(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated without the plot's library")

    monkeypatch.setattr(voltana.sim.sweep, "run_sweep", no_simulation)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the [plot] extra imports
    args = ["--duration", "5", "--policies", "static-max", "--plot", str(tmp_path / "x.png")]
    code, _, err = simulate_in_process(args, monkeypatch, capsys)
    line = one_error_line(code, err)
    assert "voltana simulate --plot needs matplotlib" in line and "pip install 'voltana[plot]'" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    ("module", "function", "mode"),
    [
        ("voltana.sim.plot", "plot_sweep", ["--policies", "static-max"]),
        ("voltana.sim.power_budget_report", "plot_budget", ["--power-budget", "60%"]),
    ],
)
def test_a_plot_that_cannot_be_written_after_the_run_keeps_the_results(
    module: str,
    function: str,
    mode: list[str],
    as_json: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plot's directory removed during the run (after --plot was checked): the results are printed all
    the same, then the failure in one line, exit status 2 (was a FileNotFoundError traceback, and the plot
    came before the tables, so a long sweep's results were lost)."""
    import importlib
    import shutil

    gone = tmp_path / "gone"
    gone.mkdir()
    plot = gone / "p.png"
    plotting = importlib.import_module(module)
    real = getattr(plotting, function)

    def vanished_first(*args: object, **kwargs: object) -> object:
        shutil.rmtree(gone)
        return real(*args, **kwargs)

    monkeypatch.setattr(plotting, function, vanished_first)
    args = ["--duration", "5", "--rate", "2", *mode, "--plot", str(plot), *(["--json"] if as_json else [])]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert one_error_line(code, err) == f"error: cannot write the plot {plot}: No such file or directory"
    if as_json:
        assert json.loads(out)  # the results, whole
    else:
        assert "static-max" in out and "SLO att." in out  # the tables
        assert "plot written" not in out
    assert not gone.exists()


@pytest.fixture
def timeline_titles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The titles of the clock timelines the plot draws (the real drawing, observed)."""
    from voltana.sim import plot as plot_module

    shown: list[str] = []
    real_timeline = plot_module._timeline

    def spy(fig: object, ax: object, point: object, policy: str | None, *rest: object) -> None:
        real_timeline(fig, ax, point, policy, *rest)  # type: ignore[arg-type]
        shown.append(ax.get_title())  # type: ignore[attr-defined]

    monkeypatch.setattr(plot_module, "_timeline", spy)
    return shown


def test_a_directory_as_workload_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = simulate_in_process(["--workload", str(tmp_path)], monkeypatch, capsys)
    assert f"{tmp_path} is a directory, not a workload file" in one_error_line(code, err)


def test_one_request_is_singular(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "one.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,100,10\n")
    code, out, err = simulate_in_process(
        ["--workload", str(trace), "--policies", "static-max"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "single arrival: 1 request in 0 s of arrivals" in out


# A refusal that comes after the progress bar started (the second rate's workload): rich ends a bar on a
# stderr that is not a terminal with a blank line, which came before the error line in a log or a pipe.


def test_an_error_after_the_progress_bar_is_exactly_one_line_on_a_pipe() -> None:
    result = run_cli("--workload", "lmsys", "--rates", "5,1e7", "--duration", "5", "--policies", "static-max")
    assert result.returncode == 2
    assert result.stderr == (
        "error: 1e+07 req/s for 5 s is 5e+07 requests; at most 1,000,000 per run (each is generated up "
        "front and kept in memory): lower the rate or the duration\n"
    )


def test_a_run_on_a_pipe_writes_nothing_to_stderr() -> None:
    result = run_cli("--duration", "3", "--rate", "2", "--policies", "static-max")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# A policy named twice in --policies runs once: spaces around the name and '+' do not make it another, nor
# naming the decode route it has by default.


@pytest.mark.parametrize(
    ("policies", "ran", "note"),
    [
        ("static-max,static-max", ["static-max"], "static-max"),
        (
            "ecofreq+ecoroute, ecofreq + ecoroute,static-max, static-max ,ecofreq+ecoroute",
            ["ecofreq+ecoroute", "static-max"],
            "ecofreq+ecoroute, static-max",
        ),
        (
            "static-max,ecofreq,static-max+round-robin,ecofreq+ecoroute,ecofreq+ecoroute-paper",
            ["static-max", "ecofreq", "ecofreq+ecoroute-paper"],
            "static-max+round-robin (as static-max), ecofreq+ecoroute (as ecofreq)",
        ),
        # The bare name, which the savings and the oracle look up, runs even when given second, and a
        # reference runs under its bare name even when it is not given.
        (
            "static-max+round-robin,ecofreq+ecoroute,static-max,oracle",
            ["static-max", "ecofreq+ecoroute", "oracle"],
            "static-max+round-robin (as static-max)",
        ),
        (
            "oracle,static-max+round-robin,ecofreq,static-max+round-robin",
            ["static-max", "ecofreq", "oracle"],  # the oracle's row comes last
            "static-max+round-robin (as static-max)",
        ),
    ],
)
def test_a_repeated_policy_runs_once_with_a_note(
    policies: str,
    ran: list[str],
    note: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--duration", "3", "--rate", "2", "--policies", policies, "--json"]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens
    (point,) = json.loads(out)["points"]
    assert [r["policy"].split(" (")[0] for r in point["results"]] == ran  # the oracle's name adds its clocks
    assert err == f"note: --policies gives the same policy more than once: {note}; each runs once\n"
    savings = {r["policy"]: r["saving_vs_static_max"] for r in point["results"]}
    assert all(saving is not None for name, saving in savings.items() if name != "static-max")


def test_the_note_on_repeats_waits_for_the_run_so_a_refused_run_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--duration", "3", "--rate", "2", "--policies", "static-max,static-max", "--max-model-len", "50"]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("error: the engine refuses all"), err


def test_rates_are_checked_in_order_and_run_once_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = simulate_in_process(
        ["--workload", "lmsys", "--rates", "5,6", "--duration", "1e9", "--policies", "static-max"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and err.startswith("error: 5 req/s for 1e+09 s"), err
    code, out, err = simulate_in_process(
        ["--rates", "2,2.0", "--duration", "3", "--policies", "static-max", "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    assert [p["rate_rps"] for p in json.loads(out)["points"]] == [2.0]


def test_a_rate_refused_later_in_a_sweep_stops_it_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import voltana.sim.sweep

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulated before every rate was checked")

    monkeypatch.setattr(voltana.sim.sweep, "run_sweep", no_run)
    args = [
        "--workload",
        "lmsys",
        "--rates",
        "5,1e7",
        "--duration",
        "5",
        "--policies",
        "static-max,static-max",
    ]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert err == (
        "error: 1e+07 req/s for 5 s is 5e+07 requests; at most 1,000,000 per run (each is generated up front "
        "and kept in memory): lower the rate or the duration\n"
    )


@pytest.mark.parametrize(
    ("policies", "timeline"),
    [
        ("static-max, ecofreq + ecoroute", "ecofreq+ecoroute"),
        # The last name is ecofreq's repeat: it runs as ecofreq.
        ("static-max,ecofreq,ecofreq+ecoroute", "ecofreq"),
        # The oracle alone: the timeline of static max, the reference it is compared with.
        ("oracle", "static-max"),
    ],
)
def test_the_plot_draws_the_clock_timeline_of_a_policy_that_ran(
    policies: str,
    timeline: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    timeline_titles: list[str],
) -> None:
    """The plot's timeline policy is the name a run carries (it was 'not recorded' for a spaced name)."""
    args = ["--duration", "3", "--rate", "2", "--policies", policies, "--plot", str(tmp_path / "p.png")]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens
    assert f"clock timeline of {timeline} at 2 req/s" in out.strip().splitlines()[-1]
    assert timeline_titles and timeline_titles[0].startswith(f"clock timeline: {timeline} at 2 req/s")


def test_an_impossible_ttft_in_a_window_names_the_requests_it_was_checked_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TTFT check reads the median prompt of what is simulated: a ``--duration`` window of long prompts
    is refused where the whole trace runs, and the line says how many requests it was checked on."""
    rows = "".join(f"{0.1 * i:.1f},8000,5\n" for i in range(3)) + "".join(f"{5 + i},10,5\n" for i in range(5))
    trace = tmp_path / "window.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    args = ["--workload", str(trace), "--ttft", "0.3", "--policies", "static-max"]
    code, _, err = simulate_in_process([*args, "--duration", "1"], monkeypatch, capsys)
    line = one_error_line(code, err)
    assert line.startswith(
        "error: impossible SLOs: TTFT 300 ms is below the prefill of the median prompt of the 3"
    )
    assert "requests simulated (8000 tokens: " in line
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "static-max" in out  # the whole trace's median prompt is 10 tokens


def test_close_rates_of_a_sweep_print_distinctly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both tables of ``--rates 3.331,3.334`` were headed ``sweep rate 3.33 req/s``."""
    code, out, err = simulate_in_process(
        ["--rates", "3.331,3.334", "--duration", "3", "--policies", "static-max"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "sweep rate 3.331 req/s" in out and "sweep rate 3.334 req/s" in out
    assert "3.33 req/s" not in out


def test_the_timeline_rate_is_named_as_the_tables_print_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace replayed at its own mean rate (30 arrivals 0.3 s apart: 3.33333 req/s) is shown as 3.33;
    ``--timeline-rate 3.33`` was refused, listing 3.33333."""
    pytest.importorskip("matplotlib")
    trace = tmp_path / "own.csv"
    rows = "".join(f"{i * 0.3},{200 + 10 * i},{20 + i}\n" for i in range(30))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    plot = tmp_path / "out.png"
    args = [
        "--workload",
        str(trace),
        "--policies",
        "static-max",
        "--timeline-rate",
        "3.33",
        "--plot",
        str(plot),
    ]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    assert "sweep rate 3.33 req/s" in out and "at 3.33 req/s: --timeline-rate" in out
    assert plot.exists()


def test_json_of_requests_without_itl_is_strict_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every request with one output token: no ITL at all. ``--json`` printed ``"p50_s": NaN``."""
    trace = tmp_path / "one.csv"
    rows = "".join(f"{i * 0.3},{200 + 10 * i},1\n" for i in range(30))
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON output")

    args = ["--workload", str(trace), "--policies", "static-max", "--json"]
    code, out, err = simulate_in_process(args, monkeypatch, capsys)
    assert code == 0, err
    (result,) = json.loads(out, parse_constant=refuse)["points"][0]["results"]
    assert result["itl"] == {"p50_s": None, "p90_s": None, "p99_s": None}
    code, out, err = simulate_in_process(args[:-1], monkeypatch, capsys)
    assert code == 0, err
    assert "nan" not in out and "-/-/-" in out


def test_with_json_the_overload_hint_goes_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` dropped the hint that static max is needed to check an overload."""
    args = ["--rate", "40", "--duration", "5", "--prefill", "1", "--decode", "1", "--policies", "static-min"]
    code, out, err = simulate_in_process([*args, "--json"], monkeypatch, capsys)
    assert code == 0, err
    json.loads(out)
    assert err.startswith("note: at 40 req/s, static-min meets the SLO for only "), err
    assert "add static-max to --policies to check" in err


def test_a_power_budget_run_refuses_a_timeline_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--timeline-rate`` with ``--power-budget`` was silently ignored (a budget run plots no timeline)."""
    code, _, err = simulate_in_process(
        ["--rate", "2", "--duration", "3", "--power-budget", "70%", "--timeline-rate", "5"],
        monkeypatch,
        capsys,
    )
    assert one_error_line(code, err).endswith("plots no clock timeline: drop --timeline-rate")
