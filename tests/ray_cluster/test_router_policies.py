"""The Ray Serve request routers look the configured routing policy up once and call only it (no cluster:
the router objects are built the way Ray Serve builds them, over stand-in replicas)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tests.support.policies import registered_plugin
from voltana.core.contexts import PolicyInfo, RouteContext
from voltana.core.hookspecs import hookimpl
from voltana.core.policies import UnknownPolicyError
from voltana.core.types import InstanceState, RouteRequest
from voltana.integrations.ray_serve.stats import ReplicaStats

pytestmark = pytest.mark.ray
Candidates = Sequence[InstanceState]


class CountingPolicies:
    """A plugin with two routing policies that count their calls: "pick-first" and "pick-last"."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def pick_first(
        self, request: RouteRequest, candidates: Sequence[InstanceState], ctx: RouteContext
    ) -> str:
        self.calls["pick-first"] += 1
        return candidates[0].instance_id

    def pick_last(self, request: RouteRequest, candidates: Candidates, ctx: RouteContext) -> str:
        self.calls["pick-last"] += 1
        return candidates[-1].instance_id

    @hookimpl
    def voltana_register_policies(self, register: Callable[[PolicyInfo], None]) -> None:
        register(PolicyInfo("route", "pick-first", "the first candidate", self.pick_first))
        register(PolicyInfo("route", "pick-last", "the last candidate", self.pick_last))


@pytest.fixture
def counting() -> Iterator[CountingPolicies]:
    with registered_plugin(CountingPolicies(), "test-counting-policies") as plugin:
        yield plugin


class Replica:
    """The three attributes a request router reads of a ``RunningReplica``."""

    def __init__(self, index: int) -> None:
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(f"decode-{index}", DeploymentID(name="Decode", app_name="test"))
        stats = ReplicaStats(instance_id=f"decode-{index}", role="decode", updated_at_s=time.time() + 3600)
        self.routing_stats = stats.to_routing_stats()
        self.max_ongoing_requests = 100


def decode_router(policy: str) -> Any:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from voltana.integrations.ray_serve.routing import VoltanaDecodeRouter

    router = VoltanaDecodeRouter(
        deployment_id=DeploymentID(name="Decode", app_name="test"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(policy=policy)
    return router


def test_only_the_configured_policy_is_called_per_decision(counting: CountingPolicies) -> None:
    router = decode_router("pick-last")
    replicas = [Replica(i) for i in range(3)]

    async def decide(times: int) -> list[Any]:
        return [(await router.choose_replicas(replicas))[0][0] for _ in range(times)]

    chosen = asyncio.run(decide(5))
    assert [r.replica_id.unique_id for r in chosen] == ["decode-2"] * 5
    assert counting.calls == Counter({"pick-last": 5}) and router.fallbacks == 0


def test_unknown_policy_is_one_line_error_at_start(counting: CountingPolicies) -> None:
    with pytest.raises(UnknownPolicyError) as caught:
        decode_router("pick-nobody")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("unknown routing policy 'pick-nobody'; registered: ")
    assert {"pick-first", "pick-last", "ecoroute"} <= set(message.split("registered: ")[1].split(", "))
