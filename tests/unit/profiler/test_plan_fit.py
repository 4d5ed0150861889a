"""The profiler's pieces without an engine: load shapes, budget sizing, fitting and the passive SLO rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voltana.core.types import Phase
from voltana.plugins.ecofreq.factory import PREFILL_SEGMENT_ENDS
from voltana.profiler.client import EngineInfo
from voltana.profiler.errors import ProfilerError
from voltana.profiler.fit import held_out_quality, sample_of, samples_of
from voltana.profiler.passive import slo_allows
from voltana.profiler.plan import TOKEN_ID_RANGE, decode_shapes, prefill_shapes, spread_clocks
from voltana.profiler.run import (
    UNIT_OVERHEAD_S,
    Checkpoint,
    ProfileRequest,
    estimate_s,
    fit_budget,
    plan_grid,
)

CLOCKS = (210, 375, 555, 720, 900, 1065, 1245, 1410)


def _info(role: str = "mixed") -> EngineInfo:
    return EngineInfo("http://e", role, "m", 8192, CLOCKS, (1, 2, 4, 8, 16, 32), 100_000)


def test_prefill_shapes_cover_every_segment_within_the_prompt_limit() -> None:
    shapes = prefill_shapes(2047)
    totals = [s.batch_size * s.prompt_tokens for s in shapes]
    assert max(s.prompt_tokens for s in shapes) <= 2047
    for lo, hi in zip((0, *PREFILL_SEGMENT_ENDS), PREFILL_SEGMENT_ENDS[:8], strict=False):
        assert sum(lo < t <= hi for t in totals) >= 4, (lo, hi)  # enough points for a 3-coefficient fit
    assert len(prefill_shapes(2047, coarse=True)) < len(shapes)


def test_decode_shapes_cover_segments_and_respect_the_kv_capacity() -> None:
    shapes = decode_shapes((1, 2, 4, 8, 16, 32), 8192, 100_000, 32)
    for lo, hi in zip((0, 1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 32), strict=True):
        assert any(lo < s.batch_size <= hi for s in shapes)
    assert all(s.batch_size * (s.prompt_tokens + s.max_tokens) <= 100_000 for s in shapes)
    assert {s.prompt_tokens for s in shapes if s.batch_size == 1} == {16, 256, 1024, 4096}
    assert max(s.batch_size for s in decode_shapes((1, 2, 4, 8, 16, 32), 8192, 0, 8)) == 8


def test_prompts_are_deterministic_and_valid_token_ids() -> None:
    shape = prefill_shapes(512)[3]
    assert shape.prompts(7) == shape.prompts(7) != shape.prompts(8)
    ids = np.array(shape.prompts(7))
    assert ids.shape == (shape.batch_size, shape.prompt_tokens)
    assert ids.min() >= TOKEN_ID_RANGE[0] and ids.max() < TOKEN_ID_RANGE[1]


def test_budget_picks_coarser_shapes_then_fewer_clocks_keeping_the_ends() -> None:
    request = ProfileRequest(engines=("http://e",), output=Path("p.json"))
    infos = [_info()]
    per_shape = {Phase.PREFILL: 0.5, Phase.DECODE: 1.0}
    full = plan_grid(infos, request, CLOCKS, coarse=False)
    assert fit_budget(infos, request, CLOCKS, per_shape, 1e9)[0].shapes == full.shapes
    budget_s = estimate_s(full, per_shape) / 4
    grid, estimate = fit_budget(infos, request, CLOCKS, per_shape, budget_s)
    assert estimate <= budget_s
    assert len(grid.shapes[Phase.DECODE]) < len(full.shapes[Phase.DECODE])
    assert grid.clocks_mhz[0] == 210 and grid.clocks_mhz[-1] == 1410
    assert spread_clocks(CLOCKS, 3) == (210, 900, 1410)


def test_budget_estimate_counts_the_slower_low_clocks() -> None:
    """The warm-up times shapes at the engine's own (top) clock; a unit at 210 MHz of a 210..1410 grid is
    estimated 1410/210 times as long, plus a fixed overhead per unit."""
    request = ProfileRequest(engines=("http://e",), output=Path("p.json"), phase="decode")
    grid = plan_grid([_info()], request, (210, 1410), coarse=False)
    shapes = len(grid.shapes[Phase.DECODE])
    estimate = estimate_s(grid, {Phase.DECODE: 1.0})
    assert estimate == pytest.approx(shapes * (1410 / 210 + 1.0) + 2 * UNIT_OVERHEAD_S)


def test_held_out_error_of_exactly_linear_data_is_zero_and_filters_apply() -> None:
    records = []
    for clock in (900, 1410):
        for batch in range(1, 9):
            for kv in (100, 900, 3000):
                latency = 0.01 + 1e-4 * batch + 2e-6 * kv * 1410 / clock
                records.append(
                    {
                        "phase": "decode",
                        "batch_size": batch,
                        "new_tokens": batch,
                        "context_tokens": kv,
                        "clock_mhz": clock,
                        "latency_s": latency,
                        "energy_j": 300 * latency,
                    }
                )
    samples = samples_of(records, Phase.DECODE, (900, 1410))
    assert len(samples) == len(records)
    quality = held_out_quality(samples, (900, 1410), (1, 2, 4, 8))
    assert all(q.latency_mape is not None and q.latency_mape < 1e-6 for q in quality)
    assert sample_of({**records[0], "new_tokens": 5}, Phase.DECODE) is None  # not one token per request
    assert sample_of({**records[0], "energy_j": None}, Phase.DECODE) is None
    assert sample_of(records[0], Phase.PREFILL) is None


def test_passive_probe_only_when_the_slo_holds_in_the_worst_case() -> None:
    recent = [{"phase": "decode", "latency_s": 0.030, "clock_mhz": 1410}] * 50
    assert slo_allows(recent, Phase.DECODE, 1410, 0.05)
    assert slo_allows(recent, Phase.DECODE, 1065, 0.05)  # 30 ms x 1410/1065 = 39.7 ms <= 45 ms
    assert not slo_allows(recent, Phase.DECODE, 720, 0.05)  # 58.8 ms
    assert not slo_allows(recent, Phase.PREFILL, 1410, 0.8)  # no prefill traffic: nothing to learn


@pytest.mark.parametrize("text", ["[]", "null", "1", '"x"', "{}", "{not json"])
def test_a_checkpoint_that_is_not_one_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.json.partial"
    path.write_text(text)
    with pytest.raises(ProfilerError, match=r"^cannot resume from .*\(delete it or pass --restart\)$") as err:
        Checkpoint.load(path)
    assert "\n" not in str(err.value)
