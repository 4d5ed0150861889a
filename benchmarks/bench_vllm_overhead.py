"""Overhead of voltana's vLLM hook: tokens/s and the hook's time per iteration under load (one engine).

One vLLM engine (CPU build, tiny local Llama, EngineCore in this process) serves the same greedy batch of
``--requests`` concurrent requests in rotating rounds of three modes:

- ``detached``: the scheduler runs exactly as without voltana (what remains is one attribute lookup per
  scheduler call in the class-level wrappers);
- ``sync-publish``: hook attached, the instance state written on the engine thread (JSON, atomic file
  replace, request energy log append) as the hook did before the publisher thread: the "before" column;
- ``thread-publish``: hook attached as shipped: the engine thread hands the state to the publisher thread.

Rotating rounds cancel drift from other load on the machine. Reported: tokens/s per mode, the paired
attached/detached ratio (target: <= 2% slower on CPU), and the hook's own wall time per iteration (all three
hook calls of one iteration, timed around them) as p50 / p99 / max, under a batch of concurrent requests.
``--cpu-hogs N`` adds N busy-looping processes for the whole run (a loaded machine: another engine on the same
cores).

    .venv/bin/python benchmarks/bench_vllm_overhead.py [--rounds 6] [--requests 16] [--max-tokens 128]
        [--cpu-hogs 0] [--json out.json]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_report import (  # noqa: E402
    MOST_BATCH,
    MOST_PROCESSES,
    add_json_option,
    argument_parser,
    batch_size,
    count,
    emit,
    process_count,
)


def _engine_env() -> None:
    os.environ.update(
        {
            "VOLTANA_ENABLED": "1",
            "VOLTANA_HARDWARE__VENDOR": "simulated",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # EngineCore in this process: the hook can be toggled
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            # The engine publishes its state as under `vllm serve` (the API server sets this directory).
            "_VOLTANA_VLLM_STATE_DIR": tempfile.mkdtemp(prefix="voltana-bench-state-"),
        }
    )


def _scheduler_of(llm: Any) -> Any:
    return llm.llm_engine.engine_core.engine_core.scheduler


def _run_round(llm: Any, prompts: list[str], params: Any) -> tuple[int, float]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed_s = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs), elapsed_s


class HookTimer:
    """Times each iteration's three hook calls (benchmark only): per-iteration wall time of the hook (s),
    kept per ``mode``."""

    def __init__(self, hook: Any) -> None:
        self.mode = ""
        self.per_iteration_s: dict[str, list[float]] = {}
        self.cpu_per_iteration_s: dict[str, list[float]] = {}
        """The engine thread's CPU time in the hook: wall minus time waiting for a core or the GIL."""
        self._current_s = 0.0
        self._current_cpu_s = 0.0
        for name in ("after_schedule", "before_update", "after_update"):
            setattr(hook, name, self._timed(getattr(hook, name), closes=name == "after_update"))

    def _timed(self, method: Any, closes: bool) -> Any:
        def timed(*args: Any) -> None:
            start, start_cpu = time.perf_counter(), time.thread_time()
            method(*args)
            self._current_s += time.perf_counter() - start
            self._current_cpu_s += time.thread_time() - start_cpu
            if closes:
                self.per_iteration_s.setdefault(self.mode, []).append(self._current_s)
                self.cpu_per_iteration_s.setdefault(self.mode, []).append(self._current_cpu_s)
                self._current_s = self._current_cpu_s = 0.0

        return timed


def _synchronous_submit(publisher: Any) -> Any:
    """The publish as it was before the publisher thread: serialise and write on the caller's thread."""

    def submit(payload: Any) -> None:
        publisher._last_submit_s = time.monotonic()
        publisher._write(payload)  # JSON, atomic replace, request log append: all on the engine thread

    return submit


def _hog(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


MODES = ("detached", "sync-publish", "thread-publish")


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--rounds", type=count, default=6, help="rounds per mode (rotating)")
    parser.add_argument(
        "--requests",
        type=batch_size,
        default=16,
        help=f"concurrent prompts per round (one batch; 1 to {MOST_BATCH})",
    )
    parser.add_argument("--max-tokens", type=count, default=128, help="generated tokens per prompt")
    parser.add_argument(
        "--cpu-hogs",
        type=process_count,
        default=0,
        help=f"busy-looping processes during the run (0 to {MOST_PROCESSES})",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="tiny model dir (built if absent)")
    add_json_option(parser)
    args = parser.parse_args()

    _engine_env()
    from rich.progress import track
    from rich.table import Table
    from vllm import LLM, SamplingParams

    from tests.support.tiny_model import build_tiny_llama

    model_dir = args.model_dir or Path(tempfile.mkdtemp(prefix="voltana-bench-")) / "tiny-llama"
    build_tiny_llama(model_dir)
    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=args.requests,
    )
    scheduler = _scheduler_of(llm)
    hook = getattr(scheduler, "_voltana_hook", None)
    if hook is None:
        print("voltana's hook is not attached: is voltana installed (vllm.general_plugins entry point)?")
        return 1
    prompts = [f"{i} energy aware serving of tiny models, prompt number {i}" for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    _run_round(llm, prompts, params)  # warm-up, not counted

    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.cpu_hogs)]
    for process in hogs:
        process.start()
    publisher = hook._publisher
    threaded_submit = publisher.submit
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    writes: dict[str, int] = dict.fromkeys(MODES, 0)
    timer = HookTimer(hook)
    try:
        for r in track(range(args.rounds), description="rotating rounds"):
            for i in range(len(MODES)):
                mode = MODES[(r + i) % len(MODES)]
                timer.mode = mode
                scheduler._voltana_hook = None if mode == "detached" else hook
                publisher.submit = (
                    _synchronous_submit(publisher) if mode == "sync-publish" else threaded_submit
                )
                before = publisher.writes
                tokens, elapsed_s = _run_round(llm, prompts, params)
                publisher.flush()
                writes[mode] += publisher.writes - before
                rates[mode].append(tokens / elapsed_s)
    finally:
        stop.set()
        for process in hogs:
            process.join(timeout=5)
        scheduler._voltana_hook = hook
        publisher.submit = threaded_submit

    load = f"{args.requests} concurrent requests x {args.max_tokens} tokens, {args.cpu_hogs} CPU hogs"
    table = Table(title=f"voltana vLLM hook under load ({args.rounds} rounds per mode; {load})")
    for column in ("mode", "tokens/s (median)", "vs detached", "iterations", "hook p50 µs", "hook p99 µs",
                   "hook max µs", "hook mean µs", "hook CPU p99 µs", "hook CPU max µs",
                   "state writes"):  # fmt: skip
        table.add_column(column, justify="right")
    detached = rates["detached"]
    for mode in MODES:
        values = rates[mode]
        paired = statistics.median(v / d for v, d in zip(values, detached, strict=True))
        hook_s = sorted(timer.per_iteration_s.get(mode, []))
        cpu_s = sorted(timer.cpu_per_iteration_s.get(mode, []))
        if hook_s:
            cells = [str(len(hook_s))] + [
                f"{x * 1e6:.0f}"
                for x in (
                    _percentile(hook_s, 0.5),
                    _percentile(hook_s, 0.99),
                    hook_s[-1],
                    statistics.fmean(hook_s),
                    _percentile(cpu_s, 0.99),
                    cpu_s[-1],
                )
            ]
        else:
            cells = ["-"] * 7
        table.add_row(mode, f"{statistics.median(values):.1f}", f"{paired:.3f}", *cells, str(writes[mode]))
    table.caption = (
        "hook time: wall time of the hook's three calls in one iteration (snapshot, decision, clock submit, "
        "report, state publish); hook CPU: the engine thread's CPU time in it (the rest of the wall time it "
        "waited for a core or the GIL); 'vs detached': median of the per-round tokens/s ratios; "
        "target <= 2% slower"
    )
    emit(table, benchmark="bench_vllm_overhead", json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
