"""Cost of voltana's SGLang hook per iteration, against the GPU time of that iteration, in one run.

The real ``Scheduler.run_batch`` / ``process_batch_result`` are wrapped by SGLang's ``HookRegistry`` exactly
as in a server, around stand-in bodies that do nothing (no model runs on CPU). Each row builds real SGLang
``Req``/``ScheduleBatch`` objects and times one iteration (launch + result processing) with voltana's hooks
(snapshot, EcoFreq decision, clock submit to a simulated A100, latency/energy report) against the same
two calls on the unwrapped bodies, alternating rounds so other load on the machine cancels out. The ratio
column divides voltana's added time by the iteration's GPU time from the calibrated simulated A100
(Llama-3.1-8B, max clock): the share of an iteration voltana costs. Target: well under 1%.

    .venv-sglang/bin/python benchmarks/bench_sglang_hook.py [--iterations 300]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_report import argument_parser, count, require_library

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _do_nothing(*args: Any, **kwargs: Any) -> object:
    return object()


def _time_per_iteration_us(step: Callable[[], None], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        step()
    return (time.perf_counter_ns() - start) / iterations / 1000.0


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--iterations", type=count, default=300, help="iterations per round")
    parser.add_argument("--rounds", type=count, default=5, help="alternating hooked/plain rounds per row")
    args = parser.parse_args()
    require_library(
        parser,
        "sglang",
        "run this benchmark with .venv-sglang/bin/python (make env-sglang builds it) or pip install "
        "'voltana[sglang]'",
    )
    os.environ.update({"VOLTANA_ENABLED": "1", "VOLTANA_HARDWARE__VENDOR": "simulated"})

    from sglang.srt.disaggregation.utils import DisaggregationMode
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.plugins.hook_registry import HookRegistry

    from tests.engines.sglang.sglang_objects import decode_batch, extend_batch, make_req, scheduler_shell
    from voltana.adapters.sglang import binding, plugin
    from voltana.core.config import VoltanaConfig
    from voltana.core.types import Phase
    from voltana.hardware.simulated import performance_model

    plain = {"run_batch": _do_nothing, "process_batch_result": _do_nothing}
    for name, body in plain.items():
        setattr(Scheduler, name, body)
    plugin.install(VoltanaConfig(enabled=True))
    HookRegistry.apply_hooks()
    hooked = {name: Scheduler.__dict__[name] for name in plain}
    config = VoltanaConfig(enabled=True)
    binding.set_binding_factory(lambda scheduler: plugin.make_binding(config, scheduler))
    model = performance_model("a100-80gb", "llama-3.1-8b")

    rows: list[tuple[str, int, int, float, float]] = []
    cases = [("decode", bs, waiting) for bs in (1, 8, 32, 128, 256) for waiting in (0, 64)]
    cases += [("prefill", bs, waiting) for bs in (1, 4) for waiting in (0, 64)]
    bindings = []
    for phase_name, bs, waiting in cases:
        mode = DisaggregationMode.DECODE if phase_name == "decode" else DisaggregationMode.PREFILL
        queued = [make_req(f"w{i}", 512) for i in range(waiting)]
        scheduler = scheduler_shell(mode, waiting=queued, port=40000 + len(rows))
        if phase_name == "decode":
            reqs = [make_req(f"r{i}", 600, output_tokens=100) for i in range(bs)]
            batch = decode_batch(reqs)
            gpu_s = model.cost(
                Phase.DECODE, bs, bs, sum(r.seqlen - 1 for r in reqs), model.max_clock_mhz
            ).latency_s
        else:
            batch = extend_batch([make_req(f"r{i}", 512) for i in range(bs)])
            gpu_s = model.cost(Phase.PREFILL, bs, 512 * bs, 0, model.max_clock_mhz).latency_s

        def step(methods: dict[str, Any], sched: Any = scheduler, b: Any = batch) -> None:
            result = methods["run_batch"](sched, b)
            methods["process_batch_result"](sched, b, result)

        step(hooked)  # first iteration builds the binding (runtime, GPUs, controller)
        bindings.append(sched_binding := scheduler.__dict__[binding.BINDING_ATTR])
        assert sched_binding is not None and not sched_binding.broken
        added: list[float] = []
        for _ in range(args.rounds):
            with_hook = _time_per_iteration_us(lambda: step(hooked), args.iterations)
            without = _time_per_iteration_us(lambda: step(plain), args.iterations)
            added.append(with_hook - without)
        rows.append((phase_name, bs, waiting, statistics.median(added), gpu_s * 1e6))

    print(
        f"{'phase':8} {'batch':>6} {'waiting':>8} {'voltana us/iter':>16} {'A100 iter us':>13} {'share':>8}"
    )
    for phase_name, bs, waiting, added_us, gpu_us in rows:
        print(
            f"{phase_name:8} {bs:>6} {waiting:>8} {added_us:>16.1f} {gpu_us:>13.0f} {added_us / gpu_us:>8.3%}"
        )
    for made in bindings:
        made.runtime.close()


if __name__ == "__main__":
    main()
