"""ScheduledRequest's hand-written __init__ (a hot-path speed-up) keeps every dataclass behaviour."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from voltana.core.types import ScheduledRequest


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
