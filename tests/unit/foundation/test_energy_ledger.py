"""Apportioning counter refresh intervals to iterations, requests and idle time (the pure ledger)."""

from __future__ import annotations

import random

import pytest

from voltana.core.energy_ledger import EnergyLedger
from voltana.core.types import ScheduledRequest


def _reqs(*ids: str) -> list[ScheduledRequest]:
    return [ScheduledRequest(rid, 1, 100, 0.0) for rid in ids]


def test_an_interval_is_split_by_modelled_energy_and_idle_power_and_nothing_is_lost() -> None:
    ledger = EnergyLedger(idle_power_w=50.0)
    ledger.add_sample(0.0, 1000.0)
    ledger.add_iteration(0.0, 0.02, _reqs("a"), modelled_j=6.0, payload="i0")  # 300 W modelled
    ledger.add_iteration(0.02, 0.06, _reqs("a", "b"), modelled_j=12.0, payload="i1")
    # 0.06 .. 0.1 idle: 0.04 s x 50 W = 2 J of weight; weights 6 + 12 + 2 = 20
    ledger.add_sample(0.1, 1040.0)  # 40 J measured over the window
    settled = ledger.advance(0.1)
    assert [(s.payload, s.energy_j) for s in settled.iterations] == [
        ("i0", pytest.approx(12.0)),
        ("i1", pytest.approx(24.0)),
    ]
    assert ledger.idle_j == pytest.approx(4.0)
    assert ledger.total_j == 40.0 and ledger.attributed_j + ledger.idle_j == pytest.approx(40.0)
    ledger.finish_request("a", "record-a")
    ledger.finish_request("b", "record-b")
    released = dict(ledger.advance(0.1).requests)
    assert released == {"record-a": pytest.approx(24.0), "record-b": pytest.approx(12.0)}


def test_an_iteration_spanning_refreshes_collects_its_share_of_each_and_settles_after_its_end() -> None:
    ledger = EnergyLedger(idle_power_w=0.0)
    ledger.add_sample(0.0, 0.0)
    ledger.add_iteration(0.05, 0.15, _reqs("a"), modelled_j=1.0, payload="long")
    ledger.finish_request("a", "ra")
    ledger.add_sample(0.1, 10.0)
    first = ledger.advance(0.1)
    assert first.iterations == [] and first.requests == []  # still running at the sample: not settled
    ledger.add_sample(0.2, 30.0)
    second = ledger.advance(0.2)
    # idle power 0: each window's joules all go to the busy part
    assert [s.energy_j for s in second.iterations] == [pytest.approx(30.0)]
    assert second.requests == [("ra", pytest.approx(30.0))]


def test_samples_wait_until_the_timeline_is_known() -> None:
    ledger = EnergyLedger(idle_power_w=10.0)
    ledger.add_sample(0.0, 0.0)
    ledger.add_sample(0.1, 5.0)
    assert ledger.advance(0.05).iterations == [] and ledger.total_j == 0.0  # an iteration may still come
    ledger.add_iteration(0.04, 0.09, _reqs("a"), modelled_j=1.0)
    assert len(ledger.advance(0.2).iterations) == 1 and ledger.total_j == 5.0


def test_an_unreadable_sample_merges_into_the_next_window() -> None:
    ledger = EnergyLedger(idle_power_w=10.0)
    ledger.add_sample(0.0, 0.0)
    ledger.add_iteration(0.0, 0.2, _reqs("a"), modelled_j=1.0)
    ledger.add_sample(0.1, None)  # a transient read error: skipped, not a 0 J window
    ledger.add_sample(0.2, 8.0)
    settled = ledger.advance(0.2)
    assert [s.energy_j for s in settled.iterations] == [8.0]


def test_short_or_mostly_idle_windows_are_not_learnable() -> None:
    ledger = EnergyLedger(idle_power_w=10.0, min_window_s=0.05, min_busy_share=0.5)
    ledger.add_sample(0.0, 0.0)
    ledger.add_iteration(0.0, 0.08, _reqs("a"), modelled_j=1.0, payload="busy")
    ledger.add_iteration(0.1, 0.11, _reqs("a"), modelled_j=1.0, payload="lonely")
    ledger.add_iteration(0.2, 0.21, _reqs("a"), modelled_j=1.0, payload="short")
    ledger.add_sample(0.1, 5.0)
    ledger.add_sample(0.2, 6.0)  # 0.1 s window, 10% busy
    ledger.add_sample(0.215, 7.0)  # 15 ms window
    learnable = {s.payload: s.learnable for s in ledger.advance(1.0).iterations}
    assert learnable == {"busy": True, "lonely": False, "short": False}


def test_random_streams_conserve_energy_exactly_and_requests_get_their_iterations() -> None:
    rng = random.Random(3)
    ledger = EnergyLedger(idle_power_w=60.0)
    t, counter = 0.0, 0.0
    ledger.add_sample(t, counter)
    next_sample = 0.1
    requests_j: dict[str, float] = {}
    for i in range(300):
        start = t + rng.choice([0.0, 0.0, rng.uniform(0, 0.05)])
        t = start + rng.uniform(0.002, 0.06)
        ids = [f"r{(i + k) % 17}" for k in range(rng.randint(1, 5))]
        ledger.add_iteration(start, t, _reqs(*ids), modelled_j=rng.uniform(1, 10))
        while next_sample <= t:
            counter += rng.uniform(10, 40)
            ledger.add_sample(next_sample, counter)
            next_sample += 0.1
        for s in ledger.advance(t).requests:
            requests_j[s[0]] = requests_j.get(s[0], 0.0) + s[1]
    for rid in {f"r{k}" for k in range(17)}:
        ledger.finish_request(rid, rid)
    for payload, joules in ledger.flush(t).requests:
        requests_j[payload] = joules
    assert ledger.total_j == pytest.approx(counter)
    assert sum(requests_j.values()) + ledger.idle_j == pytest.approx(counter, rel=1e-12)
