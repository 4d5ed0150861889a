"""The simulated GPU against its public sources (Vidur, splitwise) and the published clock/energy facts.

Every comparison is printed at the end of the run ("fitted vs public source" section).
"""

from __future__ import annotations

import statistics

import pytest

from hardware.calibration_sources import (
    CALIBRATION_ROWS,
    DATA_DIR,
    require,
    splitwise_points,
    splitwise_power_w,
    vidur_points,
)
from voltana.core.types import Phase
from voltana.hardware.simulated import PerformanceModel, performance_model

VIDUR_TOKENS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4096)
TOLERANCE = 0.15


def _relative_error(model_value: float, source_value: float) -> float:
    return model_value / source_value - 1.0


def _energy_curve(
    perf: PerformanceModel, phase: Phase, batch: int, new: int, context: int
) -> dict[int, float]:
    return {f: perf.cost(phase, batch, new, context, f).energy_j for f in perf.supported_clocks_mhz}


def test_linear_layers_match_vidur_at_max_clock() -> None:
    require(DATA_DIR / "vidur")
    points = vidur_points(VIDUR_TOKENS)
    assert len(points) == 5 * 4 * len(VIDUR_TOKENS)  # (A100 x 3 + H100 x 2 models) x TP 1,2,4,8
    errors: dict[str, list[float]] = {"a100-80gb": [], "h100-80gb": []}
    for point in points:
        perf = performance_model(point.gpu, point.model, point.tp)
        modelled = perf.layer_linear_s(point.num_tokens, perf.max_clock_mhz)
        errors[point.gpu].append(_relative_error(modelled, point.layer_s))
    for gpu, errs in errors.items():
        within = sum(abs(e) <= TOLERANCE for e in errs) / len(errs)
        median = statistics.median(abs(e) for e in errs)
        CALIBRATION_ROWS.append(
            f"Vidur linear+elementwise per layer, {gpu}: {len(errs)} points (models x TP 1-8 x "
            f"{len(VIDUR_TOKENS)} token counts), median |error| {median:.1%}, within 15%: {within:.0%}, "
            f"worst {max(errs, key=abs):+.0%}"
        )
    a100, h100 = errors["a100-80gb"], errors["h100-80gb"]
    # A100 is the paper's GPU: >= 90% of points within 15%; H100 profiles are noisier (docs: hardware).
    assert sum(abs(e) <= TOLERANCE for e in a100) / len(a100) >= 0.90
    assert statistics.median(abs(e) for e in a100) <= 0.08
    assert statistics.median(abs(e) for e in h100) <= 0.12


@pytest.mark.parametrize(
    ("model_dir", "model", "tp", "tokens"),
    [("Meta-Llama-3-8B", "llama-3.1-8b", 1, n) for n in (1, 128, 512, 2048, 4096)]
    + [("Llama-2-70b-hf", "llama-2-70b", 4, n) for n in (1, 128, 512, 2048, 4096)],
)
def test_key_vidur_points_within_15_percent(model_dir: str, model: str, tp: int, tokens: int) -> None:
    require(DATA_DIR / "vidur")
    [point] = [p for p in vidur_points((tokens,)) if p.gpu == "a100-80gb" and p.model == model and p.tp == tp]
    perf = performance_model("a100-80gb", model, tp)
    modelled = perf.layer_linear_s(tokens, perf.max_clock_mhz)
    error = _relative_error(modelled, point.layer_s)
    CALIBRATION_ROWS.append(
        f"Vidur a100 {model_dir} TP{tp} {tokens:>4} tokens: layer {point.layer_s * 1e3:.3f} ms, "
        f"model {modelled * 1e3:.3f} ms ({error:+.0%})"
    )
    assert abs(error) <= TOLERANCE


def test_llama2_70b_iterations_match_splitwise() -> None:
    points = splitwise_points()
    assert len(points) >= 40
    a100_errors: list[float] = []
    h100_errors: list[float] = []
    for point in points:
        perf = performance_model(point.gpu, "llama-2-70b", point.tp)
        if point.phase == "prefill":
            cost = perf.cost(Phase.PREFILL, 1, point.prompt_tokens, 0, perf.max_clock_mhz)
        else:  # mid-generation of 128 tokens after a 512-token prompt
            context = point.batch_size * (point.prompt_tokens + 64)
            cost = perf.cost(Phase.DECODE, point.batch_size, point.batch_size, context, perf.max_clock_mhz)
        error = _relative_error(cost.latency_s, point.latency_s)
        (a100_errors if point.gpu == "a100-80gb" else h100_errors).append(error)
        CALIBRATION_ROWS.append(
            f"splitwise {point.gpu} TP{point.tp} {point.phase:<7} prompt {point.prompt_tokens:>4} "
            f"batch {point.batch_size:>2}: {point.latency_s * 1e3:7.1f} ms, "
            f"model {cost.latency_s * 1e3:7.1f} ms ({error:+.0%})"
        )
    assert all(abs(e) <= TOLERANCE for e in a100_errors), max(a100_errors, key=abs)
    # H100 splitwise timings carry a larger, TP-dependent engine overhead than our model: 20% bound.
    assert all(abs(e) <= 0.20 for e in h100_errors), max(h100_errors, key=abs)


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-80gb"])
def test_power_levels_near_splitwise(gpu: str) -> None:
    levels = splitwise_power_w()[gpu]
    perf = performance_model(gpu, "llama-2-70b", 4)
    prefill = perf.cost(Phase.PREFILL, 1, 2048, 0, perf.max_clock_mhz)
    decode = perf.cost(Phase.DECODE, 16, 16, 16 * 576, perf.max_clock_mhz)
    per_gpu = {
        "idle": perf.idle_power_w() / perf.tp,
        "prompt": prefill.avg_power_w / perf.tp,
        "token": decode.avg_power_w / perf.tp,
    }
    for level, source_w in levels.items():
        CALIBRATION_ROWS.append(
            f"splitwise power {gpu} {level:<6}: {source_w:5.0f} W, model {per_gpu[level]:5.0f} W "
            f"(Llama2-70B TP4; prompt 2048 tokens, token batch 16)"
        )
    assert per_gpu["idle"] == pytest.approx(levels["idle"])
    assert per_gpu["prompt"] == pytest.approx(levels["prompt"], rel=0.05)
    assert per_gpu["token"] == pytest.approx(levels["token"], rel=0.10)


@pytest.mark.parametrize(
    ("label", "phase", "batch", "new", "context"),
    [
        ("prefill 2048 tokens", Phase.PREFILL, 1, 2048, 0),
        ("prefill 4 x 512 tokens", Phase.PREFILL, 4, 2048, 0),
        ("full decode batch 256, 256-token contexts", Phase.DECODE, 256, 256, 256 * 256),
        ("full decode batch 256, 1000-token contexts", Phase.DECODE, 256, 256, 256 * 1000),
    ],
)
def test_a100_energy_is_u_shaped_with_minimum_between_900_and_1410(
    label: str, phase: Phase, batch: int, new: int, context: int
) -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")
    curve = _energy_curve(perf, phase, batch, new, context)
    best_clock = min(curve, key=curve.__getitem__)
    ratio_max = curve[1410] / curve[best_clock]
    CALIBRATION_ROWS.append(
        f"A100 Llama-3.1-8B {label}: energy minimum at {best_clock} MHz, 1410 MHz costs {ratio_max:.2f}x, "
        f"210 MHz costs {curve[210] / curve[best_clock]:.2f}x (paper: U-curve inside 1005..1410)"
    )
    assert 900 <= best_clock < 1410
    assert curve[210] > curve[best_clock] < curve[1410]
    assert 1.2 <= ratio_max <= 2.0


def test_memory_bound_small_decode_prefers_low_clocks() -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")
    curve = _energy_curve(perf, Phase.DECODE, 8, 8, 8 * 1000)
    best_clock = min(curve, key=curve.__getitem__)
    CALIBRATION_ROWS.append(f"A100 Llama-3.1-8B decode batch 8: energy minimum at {best_clock} MHz")
    assert best_clock < 900
    allowed = [f for f in perf.supported_clocks_mhz if 1005 <= f <= 1410]
    assert min(allowed, key=curve.__getitem__) == 1005


def test_decode_slows_far_less_than_prefill_from_1410_to_1005() -> None:
    perf = performance_model("a100-80gb", "llama-3.1-8b")

    def slowdown(*args: int | Phase) -> float:
        phase, batch, new, context = args
        assert isinstance(phase, Phase)
        low = perf.cost(phase, int(batch), int(new), int(context), 1005).latency_s
        return low / perf.cost(phase, int(batch), int(new), int(context), 1410).latency_s

    prefill = slowdown(Phase.PREFILL, 1, 2048, 0)
    decode = slowdown(Phase.DECODE, 32, 32, 32 * 1000)
    CALIBRATION_ROWS.append(
        f"A100 1410 -> 1005 MHz (-28.7%): prefill 2048 x{prefill:.2f}, decode batch 32 x{decode:.3f} latency"
    )
    assert prefill > 1.2
    assert decode < 1.05
    assert decode - 1 < (prefill - 1) / 4


def test_h100_power_cap_lowers_the_effective_clock_under_prefill() -> None:
    perf = performance_model("h100-80gb", "llama-3.1-8b")
    prefill = perf.cost(Phase.PREFILL, 1, 4096, 0, 1980)
    decode = perf.cost(Phase.DECODE, 8, 8, 8000, 1980)
    CALIBRATION_ROWS.append(
        f"H100 prefill 4096 at 1980 MHz set: runs at {prefill.effective_clock_mhz} MHz, "
        f"{prefill.avg_power_w:.0f} W (TDP 700 W); decode batch 8 runs at {decode.effective_clock_mhz} MHz"
    )
    assert prefill.effective_clock_mhz < 1980
    assert prefill.avg_power_w <= 700.0
    assert decode.effective_clock_mhz == 1980
