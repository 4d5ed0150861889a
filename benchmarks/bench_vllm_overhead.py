"""Overhead of voltana's vLLM hook: tokens/s with the hook attached vs detached, same engine, one run.

One vLLM engine (CPU build, tiny local Llama, EngineCore in this process) serves the same greedy batch in
alternating rounds: hook attached (voltana enabled: snapshot, EcoFreq decision, clock submit to the
simulated GPU, latency/energy report) and hook detached (the scheduler runs exactly as without voltana;
what remains is one attribute lookup per scheduler call in the class-level wrappers). Alternating rounds
cancel drift from other load on the machine. Also reported: the hook's own time per iteration, measured
inside the hook, against the mean iteration time. Target: enabled <= 2% slower on CPU.

    .venv/bin/python benchmarks/bench_vllm_overhead.py [--rounds 10] [--requests 16] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


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
    """Times each iteration's three hook calls (benchmark only): per-iteration wall time of the hook (s)."""

    def __init__(self, hook: Any) -> None:
        self.per_iteration_s: list[float] = []
        self._current_s = 0.0
        for name in ("after_schedule", "before_update", "after_update"):
            setattr(hook, name, self._timed(getattr(hook, name), closes=name == "after_update"))

    def _timed(self, method: Any, closes: bool) -> Any:
        def timed(*args: Any) -> None:
            start = time.perf_counter()
            method(*args)
            self._current_s += time.perf_counter() - start
            if closes:
                self.per_iteration_s.append(self._current_s)
                self._current_s = 0.0

        return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per mode (alternating)")
    parser.add_argument("--requests", type=int, default=16, help="prompts per round (one batch)")
    parser.add_argument("--max-tokens", type=int, default=128, help="generated tokens per prompt")
    parser.add_argument("--model-dir", type=Path, default=None, help="tiny model dir (built if absent)")
    args = parser.parse_args()

    _engine_env()
    sys.path.insert(0, str(REPO))
    from rich.console import Console
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

    rates: dict[str, list[float]] = {"disabled": [], "enabled": []}
    iterations_before = hook.runtime.status().iterations
    timer = HookTimer(hook)
    enabled_busy_s = 0.0
    order = ["disabled", "enabled"]
    for r in track(range(args.rounds), description="alternating rounds"):
        for mode in order if r % 2 == 0 else reversed(order):
            scheduler._voltana_hook = hook if mode == "enabled" else None
            tokens, elapsed_s = _run_round(llm, prompts, params)
            rates[mode].append(tokens / elapsed_s)
            if mode == "enabled":
                enabled_busy_s += elapsed_s
    scheduler._voltana_hook = hook
    iterations = hook.runtime.status().iterations - iterations_before
    iteration_s = enabled_busy_s / max(1, iterations)
    hook_s = sorted(timer.per_iteration_s)
    hook_median_s, hook_p90_s = statistics.median(hook_s), hook_s[int(0.9 * (len(hook_s) - 1))]
    hook_mean_s = statistics.fmean(hook_s)

    # Each round ran both modes back to back: their ratio cancels the machine's slower drift.
    paired = [e / d for e, d in zip(rates["enabled"], rates["disabled"], strict=True)]
    table = Table(title=f"voltana vLLM hook overhead ({args.rounds} rounds x {args.requests} requests)")
    for column in ("mode", "tokens/s (median)", "min", "max"):
        table.add_column(column, justify="right")
    for mode in ("disabled", "enabled"):
        values = rates[mode]
        table.add_row(mode, f"{statistics.median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}")
    console = Console()
    console.print(table)
    ratio = statistics.median(paired)
    console.print(
        f"enabled/disabled tokens/s, median of {len(paired)} back-to-back pairs: {ratio:.3f} "
        f"(pairs range {min(paired):.3f}..{max(paired):.3f})"
    )
    console.print(
        f"hook wall time per iteration (snapshot, decision, clock submit, report) over {iterations} "
        f"iterations: median {hook_median_s * 1e6:.1f} µs, p90 {hook_p90_s * 1e6:.1f} µs, "
        f"mean {hook_mean_s * 1e6:.1f} µs; mean iteration {iteration_s * 1e3:.2f} ms -> "
        f"hook share {hook_median_s / iteration_s:.2%} (median) / {hook_mean_s / iteration_s:.2%} (mean)"
    )
    slowdown = 1.0 - ratio
    verdict = "meets" if slowdown <= 0.02 else "misses"
    console.print(
        f"enabled is {slowdown:+.2%} slower than disabled (paired median): {verdict} the <= 2% target"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
