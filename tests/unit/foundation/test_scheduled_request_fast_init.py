"""The hand-written __init__ of the per-iteration types (ScheduledRequest, BatchSnapshot, ClockDecision,
IterationRecord, the simulator's IterationCost: a hot-path speed-up) keeps every dataclass behaviour."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest

from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    EnergySource,
    IterationRecord,
    Phase,
    ScheduledRequest,
)
from voltana.hardware.simulated import IterationCost


def test_fields_equality_hash_and_repr_are_the_dataclass_ones() -> None:
    request = ScheduledRequest("a", 3, 40, 1.5)
    by_keyword = ScheduledRequest(request_id="a", new_tokens=3, context_tokens=40, arrival_time_s=1.5)
    assert request == by_keyword and hash(request) == hash(by_keyword)
    assert request != ScheduledRequest("a", 3, 41, 1.5)
    assert (request.request_id, request.new_tokens, request.context_tokens, request.arrival_time_s) == (
        "a",
        3,
        40,
        1.5,
    )
    assert (
        repr(request)
        == "ScheduledRequest(request_id='a', new_tokens=3, context_tokens=40, arrival_time_s=1.5)"
    )
    assert [f.name for f in dataclasses.fields(ScheduledRequest)] == list(ScheduledRequest.__match_args__)
    assert dataclasses.replace(request, new_tokens=1) == ScheduledRequest("a", 1, 40, 1.5)
    assert pickle.loads(pickle.dumps(request)) == request


def test_it_stays_frozen_and_checks_its_arguments() -> None:
    request = ScheduledRequest("a", 1, 0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.new_tokens = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        ScheduledRequest("a", 1, 0)  # type: ignore[call-arg]
    assert not hasattr(request, "__dict__")  # still slotted


_SNAPSHOT = BatchSnapshot(Phase.DECODE, (ScheduledRequest("a", 1, 40, 1.5),), (), 2.0, 1, 40, 7, "decode-0")
_DECISION = ClockDecision(1410, DecisionReason.SLO_BOUND, "ecofreq", 0.02, 3.5)
_HOT_PATH_TYPES = {
    BatchSnapshot: _SNAPSHOT,
    ClockDecision: _DECISION,
    IterationRecord: IterationRecord(_SNAPSHOT, _DECISION, 1410, 2.0, 0.02, 3.5, EnergySource.SIMULATED, 4.0),
    IterationCost: IterationCost(0.02, 3.5, 175.0, 1410),
}


@pytest.mark.parametrize("cls", list(_HOT_PATH_TYPES), ids=lambda cls: cls.__name__)
def test_the_other_hand_written_inits_are_the_dataclass_ones(cls: type) -> None:
    """BatchSnapshot, ClockDecision, IterationRecord and IterationCost (one of each per iteration) set their
    slots directly too: same parameters (names, order, defaults) as the fields, and every dataclass
    behaviour."""
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        assert param.default == (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
    instance = _HOT_PATH_TYPES[cls]
    values = {f.name: getattr(instance, f.name) for f in fields}
    by_keyword = cls(**values)
    assert by_keyword == instance and hash(by_keyword) == hash(instance)
    assert cls(*values.values()) == instance
    assert repr(by_keyword) == repr(instance)
    first = fields[0].name
    assert dataclasses.replace(instance, **{first: values[first]}) == instance
    assert pickle.loads(pickle.dumps(instance)) == instance
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(instance, first, values[first])
    assert not hasattr(instance, "__dict__")
    with pytest.raises(TypeError):
        cls()


def test_defaults_apply() -> None:
    snapshot = BatchSnapshot(Phase.PREFILL, (), (), 0.0, 0, 0)
    assert (snapshot.iteration, snapshot.instance_id) == (0, "")
    decision = ClockDecision(1005, DecisionReason.IDLE, "p")
    assert (decision.predicted_latency_s, decision.predicted_energy_j) == (None, None)
    record = IterationRecord(snapshot, decision, 1005, 0.0, 0.0)
    assert (record.energy_j, record.energy_source, record.counter_energy_j) == (
        None,
        EnergySource.SIMULATED,
        None,
    )
