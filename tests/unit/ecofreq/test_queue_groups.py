"""EcoFreq's prefill queue grouping: the lazy groups are exactly a plain loop's, and long queues are read only
as far as the clock checks need."""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, islice

from hypothesis import given, settings
from hypothesis import strategies as st

from voltana.core.types import BatchSnapshot, Phase, QueuedRequest
from voltana.plugins import ecofreq
from voltana.plugins.ecofreq import QueueGroups, queue_groups


def _snapshot(prompts: list[int], arrivals: list[float], now_s: float) -> BatchSnapshot:
    waiting = tuple(
        QueuedRequest(f"r{i}", p, a) for i, (p, a) in enumerate(zip(prompts, arrivals, strict=True))
    )
    return BatchSnapshot(Phase.PREFILL, (), waiting, now_s, 0, 0)


def _by_loop(
    prompts: list[int], arrivals: list[float], now_s: float, budget: int, bound_s: float, newcomer: int
) -> list[tuple[int, int, float, float]]:
    """The definition, one group at a time (the code before the lazy grouping, numpy path aside)."""
    tokens, times = list(prompts), list(arrivals)
    total = sum(tokens) + max(newcomer, 0)
    if total == 0:
        return []
    offset = bound_s - now_s
    if total <= budget:
        first = min(times) if times else now_s
        if newcomer > 0 and now_s < first:
            first = now_s
        return [(1, total, 0.5 * (sum(p * p for p in tokens) + max(newcomer, 0) ** 2), first + offset)]
    if newcomer > 0:
        tokens.append(newcomer)
        times.append(now_s)
    cumulative = list(accumulate(tokens))
    groups: list[tuple[int, int, float, float]] = []
    lo, work = 0, 0.0
    while lo < len(cumulative):
        m = -(-cumulative[lo] // budget)
        hi = bisect_right(cumulative, m * budget, lo)
        work += 0.5 * sum(p * p for p in tokens[lo:hi])
        groups.append((m, m * budget if m * budget < total else total, work, min(times[lo:hi]) + offset))
        lo = hi
    return groups


@settings(max_examples=200, deadline=None)
@given(
    prompts=st.lists(st.integers(0, 130_000), min_size=0, max_size=400),
    budget=st.sampled_from([512, 2048, 8192, 16384]),
    spread_s=st.floats(0.0, 500.0),
    newcomer=st.integers(0, 40_000),
)
def test_groups_equal_the_loop(prompts: list[int], budget: int, spread_s: float, newcomer: int) -> None:
    # Arrivals out of order within a group too: the group's deadline is its earliest arrival.
    arrivals = [spread_s * ((i * 7919) % 101) / 101 for i in range(len(prompts))]
    now_s = spread_s + 1.0
    snapshot = _snapshot(prompts, arrivals, now_s)
    expected = _by_loop(prompts, arrivals, now_s, budget, 1.8, newcomer)
    actual = queue_groups(snapshot, budget, 1.8, newcomer_tokens=newcomer)
    assert actual == expected  # exact: same ints, same floats
    assert all(
        type(a) is type(b)
        for got, want in zip(actual, expected, strict=True)
        for a, b in zip(got, want, strict=True)
    )
    lazy = QueueGroups(snapshot, budget, 1.8, newcomer_tokens=newcomer)
    assert bool(lazy) == bool(expected)
    totals = (expected[-1][1], expected[-1][2]) if expected else (0, 0.0)
    assert (lazy.total_tokens, lazy.total_work) == totals
    # Read in pieces (as successive clock checks do), the groups are the same.
    assert list(islice(lazy, 2)) == expected[:2]
    assert list(lazy) == expected


def test_a_mooncake_sized_queue_is_read_only_as_far_as_asked() -> None:
    prompts = [(i * 104_729) % 126_000 + 1 for i in range(3000)]
    arrivals = [0.25 * i for i in range(3000)]
    snapshot = _snapshot(prompts, arrivals, now_s=800.0)
    lazy = QueueGroups(snapshot, 8192, 1.8)
    expected = _by_loop(prompts, arrivals, 800.0, 8192, 1.8, 0)
    assert len(expected) > 1000
    assert (lazy.total_tokens, lazy.total_work) == expected[-1][1:3]
    assert next(iter(lazy)) == expected[0]
    assert len(lazy._groups) == 1  # the other thousand-odd groups were never computed
    assert list(lazy) == expected


def test_sums_past_exact_floats_take_the_running_sum() -> None:
    # 64 prompts of 2**24 tokens: the sum of squares, 2**54, is past float64's exact integers.
    prompts = [2**24 + i for i in range(64)]
    arrivals = [0.0] * 64
    lazy = QueueGroups(_snapshot(prompts, arrivals, 1.0), 8192, 1.8)
    expected = _by_loop(prompts, arrivals, 1.0, 8192, 1.8, 0)
    assert lazy.total_work == expected[-1][2]
    assert list(lazy) == expected
    assert ecofreq.queue_groups(_snapshot(prompts, arrivals, 1.0), 8192, 1.8) == expected
