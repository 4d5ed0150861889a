"""EcoFreq's prefill queue grouping: the numpy path for long queues gives exactly the loop's groups."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.core.types import BatchSnapshot, Phase, QueuedRequest
from voltana.plugins import ecofreq
from voltana.plugins.ecofreq import queue_groups


def _snapshot(prompts: list[int], arrivals: list[float], now_s: float) -> BatchSnapshot:
    waiting = tuple(
        QueuedRequest(f"r{i}", p, a) for i, (p, a) in enumerate(zip(prompts, arrivals, strict=True))
    )
    return BatchSnapshot(Phase.PREFILL, (), waiting, now_s, 0, 0)


def _by_loop(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> object:
    with monkeypatch.context() as patch:
        patch.setattr(ecofreq, "_VECTOR_MIN_QUEUE", 10**9)
        return queue_groups(*args, **kwargs)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    prompts=st.lists(st.integers(1, 130_000), min_size=64, max_size=400),
    budget=st.sampled_from([512, 2048, 8192, 16384]),
    spread_s=st.floats(0.0, 500.0),
    newcomer=st.integers(0, 40_000),
)
def test_long_queue_groups_equal_the_loop(
    prompts: list[int], budget: int, spread_s: float, newcomer: int
) -> None:
    # Arrivals out of order within a group too: the group's deadline is its earliest arrival.
    arrivals = [spread_s * ((i * 7919) % 101) / 101 for i in range(len(prompts))]
    snapshot = _snapshot(prompts, arrivals, now_s=spread_s + 1.0)
    patch = pytest.MonkeyPatch()
    try:
        expected = _by_loop(patch, snapshot, budget, 1.8, newcomer_tokens=newcomer)
    finally:
        patch.undo()
    actual = queue_groups(snapshot, budget, 1.8, newcomer_tokens=newcomer)
    assert actual == expected  # exact: same ints, same floats
    assert all(
        type(a) is type(b)
        for got, want in zip(actual, expected, strict=True)
        for a, b in zip(got, want, strict=True)
    )


def test_the_numpy_path_is_taken_and_matches_on_a_mooncake_sized_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prompts = [(i * 104_729) % 126_000 + 1 for i in range(3000)]
    arrivals = [0.25 * i for i in range(3000)]
    snapshot = _snapshot(prompts, arrivals, now_s=800.0)
    calls: list[int] = []
    original = ecofreq._queue_groups_vectorised

    def spy(*args: object) -> object:
        result = original(*args)  # type: ignore[arg-type]
        calls.append(0 if result is None else len(result))
        return result

    monkeypatch.setattr(ecofreq, "_queue_groups_vectorised", spy)
    actual = queue_groups(snapshot, 8192, 1.8)
    assert calls and calls[0] == len(actual) > 1000
    assert actual == _by_loop(monkeypatch, snapshot, 8192, 1.8)


def test_sums_that_could_round_fall_back_to_the_loop() -> None:
    # 64 prompts of 2**24 tokens: the sum of squares, 2**54, is past float64's exact integers.
    assert ecofreq._queue_groups_vectorised([2**24] * 64, [0.0] * 64, 8192, 2**30, 0.0) is None
