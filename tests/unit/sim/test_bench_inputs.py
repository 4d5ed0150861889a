"""The benchmarks' own inputs as a user gives them: a mistake is one line and exit 2, before anything runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = __import__(name)
    assert isinstance(module, ModuleType)
    return module


def run_main(module: ModuleType, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *args])
    try:
        code: int = module.main()
    except SystemExit as stopped:  # argparse's refusal
        return int(stopped.code or 0)
    return code


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("out/", "'out/' is not a file path (give a file name)"),
        ("out/.", "'out/.' is not a file path (give a file name)"),
        (".", "'.' is not a file path (give a file name)"),
        ("", "'' is not a file path (give a file name)"),
        ("nosuch/x.json", "'nosuch/x.json': no such directory 'nosuch'"),
        ("a" * 300 + ".json", f"{'a' * 300 + '.json'!r}: File name too long"),
    ],
)
def test_an_output_path_that_names_no_writable_file_is_refused(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import argparse

    monkeypatch.chdir(tmp_path)
    bench_report = load("bench_report", monkeypatch)
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        bench_report.output_file_path(text)
    assert str(caught.value) == message


def test_an_output_path_under_a_file_or_at_a_directory_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import argparse

    bench_report = load("bench_report", monkeypatch)
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="is a file, not a directory"):
        bench_report.output_file_path(str(tmp_path / "notes.md" / "x.json"))
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory; give a file path"):
        bench_report.output_file_path(str(tmp_path))
    assert bench_report.output_file_path(str(tmp_path / "out.json")) == tmp_path / "out.json"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rates", "20,abc"], "argument --rates: 'abc' is not a number of req/s"),
        (["--rates", "0"], "argument --rates: '0': give a positive number of req/s"),
        (["--window", "0"], "argument --window: '0': give a positive number of seconds"),
        (["--json", "out/."], "argument --json: 'out/.' is not a file path (give a file name)"),
    ],
)
def test_paper_setting_refuses_bad_input_before_running(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_paper_setting", monkeypatch)
    monkeypatch.setattr(bench, "run_sweep", lambda *a, **k: pytest.fail("ran with a bad input"))
    assert run_main(bench, args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"bench_paper_setting.py: error: {message}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--rate", "-1"],
            "bench_power_budget.py: error: argument --rate: '-1': give a positive number of req/s",
        ),
        (
            ["--budgets", "abc"],
            "bench_power_budget.py: error: --budgets: a power budget is watts or a percentage of the "
            "max-clock peak (e.g. 900 or 60%); got 'abc'",
        ),
    ],
)
def test_power_budget_refuses_bad_input_in_one_line(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_power_budget", monkeypatch)
    monkeypatch.setattr(bench, "run_budget_sweep", lambda *a, **k: pytest.fail("ran with a bad input"))
    assert run_main(bench, [*args, "--duration", "5"], monkeypatch) == 2
    assert capsys.readouterr().err.splitlines()[-1] == message


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("bench_paper_reproduction", ["--duration", "0"]),
        ("bench_edge_routing", ["--duration", "-5"]),
        ("bench_power_budget", ["--duration", "inf"]),
        ("bench_paper_setting", ["--window", "nan"]),
    ],
)
def test_every_benchmark_reads_a_duration_with_one_check(
    name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load(name, monkeypatch)
    assert run_main(bench, args, monkeypatch) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"{name}.py: error: argument {args[0]}: {args[1]!r}: give a positive number of seconds"


@pytest.mark.parametrize(
    ("plot", "message"),
    [
        ("nodir/p.png", "'nodir/p.png': no such directory 'nodir'"),
        ("out.txt", "'out.txt': cannot write .txt files; use one of "),
    ],
)
def test_power_budget_checks_its_plot_path_before_running(
    plot: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_power_budget", monkeypatch)
    monkeypatch.setattr(bench, "run_budget_sweep", lambda *a, **k: pytest.fail("ran with a bad --plot"))
    assert run_main(bench, ["--plot", plot], monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"bench_power_budget.py: error: argument --plot: {message}")


def test_a_plot_without_matplotlib_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_power_budget", monkeypatch)
    monkeypatch.setattr(bench, "run_budget_sweep", lambda *a, **k: pytest.fail("ran without matplotlib"))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an install without the [plot] extra
    assert run_main(bench, ["--plot", "p.png"], monkeypatch) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (
        "bench_power_budget.py: error: argument --plot: bench_power_budget.py --plot needs matplotlib, which "
        "the core install leaves out: pip install 'voltana[plot]'"
    )


def test_a_refused_argument_is_one_line_without_the_usage_block(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_edge_routing", monkeypatch)
    assert run_main(bench, ["--duration", "0"], monkeypatch) == 2
    assert capsys.readouterr().err == (
        "bench_edge_routing.py: error: argument --duration: '0': give a positive number of seconds\n"
    )


def test_help_gives_the_docstring_first_paragraph_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench_power_budget", monkeypatch)
    assert run_main(bench, ["--help"], monkeypatch) == 0
    out = " ".join(capsys.readouterr().out.split())
    first = " ".join((bench.__doc__ or "").strip().split("\n\n", 1)[0].split())
    assert first.endswith(".") and first in out  # whole sentences, not the first line cut mid-sentence


@pytest.mark.parametrize("name", ["bench_power_budget", "bench_paper_reproduction"])
def test_json_and_plot_on_one_file_are_refused_before_running(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load(name, monkeypatch)
    same = str(tmp_path / "same.png")
    assert run_main(bench, ["--json", same, "--plot", same], monkeypatch) == 2
    assert capsys.readouterr().err == (
        f"{name}.py: error: --plot {same!r} is the file --json writes: give each its own file\n"
    )
    assert list(tmp_path.iterdir()) == []


def refused(
    name: str,
    args: list[str],
    work: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Run benchmark ``name`` with ``args`` where each function in ``work`` (what would start the benchmark's
    work) fails the test; assert exit status 2 and return what went to stderr."""
    bench = load(name, monkeypatch)
    for function in work:
        monkeypatch.setattr(bench, function, lambda *a, **k: pytest.fail(f"{name} started its work"))
    assert run_main(bench, args, monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


@pytest.mark.parametrize(
    ("name", "args", "work", "message"),
    [
        (
            "bench_edge_routing",
            ["--points", "llama-3.1-8b/lmsys"],
            ["build_workloads"],
            "--points: 'llama-3.1-8b/lmsys' needs a rate, e.g. llama-3.1-8b/lmsys@105",
        ),
        ("bench_edge_routing", ["--seeds", "0,-1"], ["build_workloads"], "--seeds must be >= 0, got '0,-1'"),
        (
            "bench_paper_reproduction",
            ["--margins", "0,1"],
            ["simulate_point"],
            "--margins must each be in [0, 1), got '0,1'",
        ),
        (
            "bench_paper_reproduction",
            ["--jobs", "0"],
            ["simulate_point"],
            "argument --jobs: '0': give a whole number from 1 to ",
        ),
        (
            "bench_paper_reproduction",
            ["--panels", "nope"],
            ["simulate_point"],
            "--panels: unknown panel 'nope' (one of: llama-3.1-8b/sharegpt, llama-3.1-8b/lmsys, ",
        ),
        # An empty list or item, or one unknown panel among known ones: refused (all six panels ran, the
        # unknown one was dropped, the default margins used, without a word).
        (
            "bench_paper_reproduction",
            ["--panels", "llama-3.1-8b/sharegpt,bogus"],
            ["simulate_point"],
            "--panels: unknown panel 'bogus' (one of: llama-3.1-8b/sharegpt, ",
        ),
        (
            "bench_paper_reproduction",
            ["--panels", ""],
            ["simulate_point"],
            "--panels is empty; give model/workload,... or omit it for the defaults",
        ),
        (
            "bench_paper_reproduction",
            ["--panels", "llama-3.1-8b/sharegpt,"],
            ["simulate_point"],
            "--panels: an empty item in 'llama-3.1-8b/sharegpt,'; give model/workload,...",
        ),
        (
            "bench_paper_reproduction",
            ["--margins", ""],
            ["simulate_point"],
            "--margins is empty; give margins in [0, 1) (e.g. 0,0.1) or omit it for the defaults",
        ),
        (
            "bench_paper_reproduction",
            ["--margins", " "],
            ["simulate_point"],
            "--margins is empty; give margins in [0, 1) (e.g. 0,0.1) or omit it for the defaults",
        ),
        (
            "bench_paper_reproduction",
            ["--margins", "0,,0.1"],
            ["simulate_point"],
            "--margins: an empty item in '0,,0.1'; give margins in [0, 1) (e.g. 0,0.1)",
        ),
        (
            "bench_paper_reproduction",
            ["--duration", "9000"],
            ["simulate_point"],
            "130 req/s for 9000 s is 1.17e+06 requests; at most 1,000,000 per run",
        ),
        (
            "bench_power_budget",
            ["--budgets", "60%,", "--duration", "5"],
            ["run_budget_sweep"],
            "--budgets: empty item in '60%,': write budgets as e.g. '60%,75%,900'",
        ),
        (
            "bench_sim_speed",
            ["--policies", "nope"],
            ["run_policy"],
            "--policies: unknown clock policy 'nope'",
        ),
        # An empty list or item is refused as `voltana simulate --policies` refuses it (it was dropped).
        (
            "bench_sim_speed",
            ["--policies", ","],
            ["run_policy"],
            "--policies: an empty item in ','; give names separated by single commas",
        ),
        (
            "bench_sim_speed",
            ["--policies", "static-max,,static-min"],
            ["run_policy"],
            "--policies: an empty item in 'static-max,,static-min'; give names separated by single commas",
        ),
        (
            "bench_sim_speed",
            ["--policies", "static-max,"],
            ["run_policy"],
            "--policies: an empty item in 'static-max,'; give names separated by single commas",
        ),
        (
            "bench_sim_speed",
            ["--policies", " "],
            ["run_policy"],
            "--policies is empty; give names separated by single commas or omit it for the defaults",
        ),
        # An unknown engine or route: refused while the arguments are read, before any work.
        (
            "bench_paper_reproduction",
            ["--engine", "bogus"],
            ["setup_for", "simulate_point"],
            "argument --engine: invalid choice: 'bogus'",
        ),
        (
            "bench_edge_routing",
            ["--engine", "bogus"],
            ["setup_for", "build_workloads"],
            "argument --engine: invalid choice: 'bogus'",
        ),
        (
            "bench_paper_reproduction",
            ["--prefill-route", "bogus"],
            ["setup_for", "simulate_point"],
            "argument --prefill-route: unknown routing policy 'bogus'; registered: ",
        ),
        (
            "bench_paper_setting",
            ["--compare-prefill-route", "bogus"],
            ["run_sweep"],
            "argument --compare-prefill-route: unknown routing policy 'bogus'; registered: ",
        ),
        (
            "bench_paper_setting",
            ["--compare-prefill-route", ""],
            ["run_sweep"],
            "argument --compare-prefill-route: unknown routing policy ''; registered: ",
        ),
        (
            "bench_edge_draws",
            ["--draws", "1"],
            ["simulate_point"],
            "argument --draws: '1': give a whole number >= 2",
        ),
        (
            "bench_edge_draws",
            ["--jobs", "0"],
            ["simulate_point"],
            "argument --jobs: '0': give a whole number from 1 to ",
        ),
        (
            "bench_edge_draws",
            ["--points", "llama-3.1-8b/nope@5"],
            ["simulate_point"],
            "--points: unknown panel 'llama-3.1-8b/nope'",
        ),
        (
            "bench_edge_draws",
            ["--points", "llama-3.1-8b/lmsys@100000"],
            ["simulate_point"],
            "100000 req/s for 60 s is 6e+06 requests",
        ),
        (
            "bench_sim_speed",
            ["--workload", "mooncake"],
            ["run_policy"],
            "--workload mooncake needs --mooncake-trace PATH",
        ),
        (
            "bench_sim_speed",
            ["--mooncake-trace", "missing.jsonl"],
            ["run_policy"],
            "--mooncake-trace: workload file not found: missing.jsonl",
        ),
    ],
)
def test_a_refusal_after_reading_the_arguments_names_the_script(
    name: str,
    args: list[str],
    work: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(name, args, work, monkeypatch, capsys)
    assert len(err.splitlines()) == 1 and err.endswith("\n")
    assert err.startswith(f"{name}.py: error: {message}")


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("bench_paper_reproduction", ["--engine", "bogus"]),
        ("bench_paper_setting", ["--compare-prefill-route", "bogus"]),
    ],
)
def test_an_unknown_engine_or_route_is_one_line_at_once_from_the_command_line(
    name: str, args: list[str]
) -> None:
    """The script as a user runs it: refused while the arguments are read (the benchmark itself takes
    minutes: the timeout would stop it), one line, no traceback."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"{name}.py: error: argument {args[0]}: ")
    assert "bogus" in done.stderr


@pytest.mark.parametrize(
    ("name", "library", "install"),
    [
        (
            "bench_sglang_hook",
            "sglang",
            "run this benchmark with .venv-sglang/bin/python (make env-sglang builds it) or pip install "
            "'voltana[sglang]'",
        ),
        (
            "bench_ray_router",
            "ray",
            "run this benchmark with .venv-ray/bin/python (make env-ray builds it) or pip install "
            "'voltana[ray]'",
        ),
    ],
)
def test_a_benchmark_whose_library_is_missing_says_which_and_how_to_install_it(
    name: str, library: str, install: str
) -> None:
    """The script as a user runs it in the base environment, which leaves SGLang and Ray out (each has its
    own): one line and exit status 2 before any work (was a ModuleNotFoundError traceback)."""
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed in this environment")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"{name}.py: error: {library} is not installed in this Python ({sys.executable}): {install}\n"
    )


def test_ray_installed_but_not_importable_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray beside PyPI's amdsmi without ROCm (the dev extras): `import ray` raises KeyError, which
    voltana.sim.ray_runner.import_ray turns into one line; the benchmark adds the repository's way round."""
    from voltana.sim import ray_runner

    def broken() -> None:
        raise ray_runner.RayUnavailableError("Ray cannot be imported (KeyError: 'libamd_smi.so'): ...")

    monkeypatch.setattr(ray_runner, "import_ray", broken)
    bench = load("bench_ray_router", monkeypatch)
    monkeypatch.setattr(bench, "require_library", lambda *args: None)  # installed
    monkeypatch.setattr(bench, "stand_in_replicas", lambda *a, **k: pytest.fail("ran without Ray"))
    assert run_main(bench, [], monkeypatch) == 2
    assert capsys.readouterr().err == (
        "bench_ray_router.py: error: Ray cannot be imported (KeyError: 'libamd_smi.so'): ...; or put "
        "tests/support/ray_site on PYTHONPATH\n"
    )


COUNT_OPTIONS = [  # (benchmark, what starts its work, {option: its upper bound, None: none})
    (
        "bench_runtime_hot_path",
        ["measure_batch"],
        {"--iterations": None, "--lifetime": None, "--batches": 1024},
    ),
    (
        "bench_http_client",
        ["free_port", "wait_http"],
        {"--requests": 1_000_000, "--concurrency": 4096, "--events": None, "--rounds": None},
    ),
    (
        "bench_router",
        ["free_port_block", "wait_http"],
        {
            "--requests": 1_000_000,
            "--concurrency": 4096,
            "--latency-samples": 1_000_000,
            "--prefill": 64,
            "--decode": 64,
        },
    ),
    (
        "bench_vllm_overhead",
        ["_engine_env"],
        {"--rounds": None, "--requests": 1024, "--max-tokens": None},
    ),
]


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize(
    ("name", "work", "option", "most"),
    [(name, work, option, most) for name, work, options in COUNT_OPTIONS for option, most in options.items()],
)
def test_a_count_of_zero_or_less_is_refused_before_any_work(
    name: str,
    work: list[str],
    option: str,
    most: int | None,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(name, [option, value], work, monkeypatch, capsys)
    wanted = ">= 1" if most is None else f"from 1 to {most}"
    assert err == f"{name}.py: error: argument {option}: {value!r}: give a whole number {wanted}\n"


@pytest.mark.parametrize("past", [1, 99999999999])
@pytest.mark.parametrize(
    ("name", "work", "option", "most"),
    [
        (name, work, option, most)
        for name, work, options in COUNT_OPTIONS
        for option, most in options.items()
        if most is not None
    ]
    + [("bench_vllm_overhead", ["_engine_env"], "--cpu-hogs", 64)],
)
def test_a_count_that_sizes_something_real_has_an_upper_bound(
    name: str,
    work: list[str],
    option: str,
    most: int,
    past: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Instances, ports, connections, requests, a batch, processes: a count past its bound is one line
    before any work (`bench_router.py --prefill 99999999999` looked for that many free ports)."""
    value = str(most + past)
    err = refused(name, [option, value], work, monkeypatch, capsys)
    least = 0 if option == "--cpu-hogs" else 1
    assert (
        err == f"{name}.py: error: argument {option}: {value!r}: give a whole number from {least} to {most}\n"
    )


def test_every_batch_size_is_a_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused("bench_runtime_hot_path", ["--batches", "1,x"], ["measure_batch"], monkeypatch, capsys)
    assert err == "bench_runtime_hot_path.py: error: argument --batches: 'x' is not a whole number\n"
    err = refused("bench_runtime_hot_path", ["--batches", "1,1025"], ["measure_batch"], monkeypatch, capsys)
    assert err == (
        "bench_runtime_hot_path.py: error: argument --batches: '1025': give a whole number from 1 to 1024\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "'0': give a whole number >= 1"),
        ("-3", "'-3': give a whole number >= 1"),
        ("1.5", "'1.5' is not a whole number"),
        ("1e3", "'1e3' is not a whole number"),
        ("", "'' is not a whole number"),
    ],
)
def test_a_count_is_a_whole_number_of_at_least_one(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    bench_report = load("bench_report", monkeypatch)
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        bench_report.count(text)
    assert str(caught.value) == message
    assert bench_report.count(" 7 ") == 7
    assert bench_report.process_count("0") == 0
    assert bench_report.random_seed("0") == 0


def test_a_file_that_cannot_be_written_at_the_end_names_the_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rich.table import Table

    bench_report = load("bench_report", monkeypatch)
    monkeypatch.setattr(sys, "argv", ["bench_x.py"])
    gone = tmp_path / "gone" / "out.json"  # checked when the arguments were read, removed since
    with pytest.raises(SystemExit) as stopped:
        bench_report.emit(Table(), benchmark="bench_x", json_path=gone)
    assert stopped.value.code == f"bench_x.py: error: cannot write {gone}: No such file or directory"


@pytest.mark.parametrize(
    ("name", "function", "args", "table"),
    [
        (
            "bench_power_budget",
            "plot_budget",
            ["--duration", "3", "--rate", "5", "--budgets", "60%"],
            "ecofreq+coordinator",
        ),
        (
            "bench_paper_reproduction",
            "plot_grid",
            ["--quick", "--panels", "qwen3-32b/sharegpt", "--duration", "1", "--margins", "0.1"],
            "### qwen3-32b / sharegpt",
        ),
    ],
)
def test_a_plot_that_cannot_be_written_at_the_end_is_one_line_after_the_results(
    name: str,
    function: str,
    args: list[str],
    table: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The plot's directory removed during the run (after --plot was checked): the table is printed and
    --json written, then one line naming the script, exit status 1 (was a FileNotFoundError traceback)."""
    import json
    import shutil

    bench = load(name, monkeypatch)
    gone = tmp_path / "gone"
    gone.mkdir()
    plot, results = gone / "p.png", tmp_path / "results.json"
    real = getattr(bench, function)

    def vanished_first(*args: object, **kwargs: object) -> object:
        shutil.rmtree(gone)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, function, vanished_first)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args, "--json", str(results), "--plot", str(plot)])
    with pytest.raises(SystemExit) as stopped:
        bench.main()
    assert stopped.value.code == f"{name}.py: error: cannot write {plot}: No such file or directory"
    assert json.loads(results.read_text())  # the results, whole
    assert table in capsys.readouterr().out
    assert not gone.exists()
