"""Cost of one routing decision inside Ray Serve's request router, next to the HTTP router's, in one run.

Run: ``.venv-ray/bin/python benchmarks/bench_ray_router.py [--decisions 20000] [--json]`` (``make env-ray``
builds ``.venv-ray``: the base ``.venv`` has no Ray). Beside PyPI's ``amdsmi`` without ROCm (the dev extras),
which breaks ``import ray``, prefix ``PYTHONPATH=tests/support/ray_site``.

The same 16 decode candidates with the same load, every built-in decode policy (the registered policy
looked up once by name):

- ``ray``: ``VoltanaDecodeRouter.choose_replicas`` (the real router object, built with the arguments Ray
  Serve gives it) over 16 replicas carrying published ``routing_stats``; it maps them to ``InstanceState``,
  calls the policy, records the decision and ranks the replicas. The replicas are stand-ins with the three
  attributes a router reads (``replica_id``, ``routing_stats``, ``max_ongoing_requests``), as in Ray's own
  router tests: a real ``RunningReplica`` needs a live actor handle. Ray's queue-length probe and the
  request's RPC come on top in both cases and are not measured here.
- ``http``: ``InstanceChooser.choose`` of ``voltana router`` (``benchmarks/bench_router.py``).

Medians in microseconds; the ``ray / http`` column is the ratio measured in this run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_report import argument_parser, count, require_library

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import decision_cost_us

from voltana.integrations.ray_serve.stats import ReplicaStats

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128)
POLICIES = ("ecoroute", "ecoroute-paper", "least-loaded", "round-robin", "random")
CLOCK_AWARE = ("ecoroute", "ecoroute-paper")


@dataclass
class _Metadata:
    request_id: str
    internal_request_id: str
    multiplexed_model_id: str = ""


@dataclass
class _Pending:
    args: list[Any]
    metadata: _Metadata
    kwargs: dict[str, Any] = field(default_factory=dict)


class StandInReplica:
    """What a request router reads of a ``RunningReplica``: id, published routing stats, queue limit."""

    def __init__(self, replica_id: Any, routing_stats: dict[str, Any]) -> None:
        self.replica_id = replica_id
        self.routing_stats = routing_stats
        self.max_ongoing_requests = 10**9


def stand_in_replicas(count: int = 16) -> list[StandInReplica]:
    """``count`` decode replicas with the load ``bench_router.decision_cost_us`` gives its instances."""
    from ray.serve._private.common import DeploymentID, ReplicaID

    deployment = DeploymentID(name="Decode", app_name="bench")
    replicas = []
    for i in range(count):
        stats = ReplicaStats(
            instance_id=f"decode-{i}",
            role="decode",
            sm_clock_mhz=1410,
            capture_sizes=CAPTURE_SIZES,
            num_running=i * 3,
            num_waiting=i % 2,
            kv_tokens=1000 * i,
            kv_capacity_tokens=400000,
            updated_at_s=time.time() + 3600,  # fresh for the whole run
        )
        replicas.append(StandInReplica(ReplicaID(f"decode-{i}", deployment), stats.to_routing_stats()))
    return replicas


def make_router(router_class: Any, **kwargs: Any) -> Any:
    """A request router built the way Ray Serve builds one for a handle, then its ``initialize_state``."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = router_class(
        deployment_id=DeploymentID(name="Decode", app_name="bench"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(**kwargs)
    return router


async def ray_decision_us(router: Any, replicas: list[StandInReplica], decisions: int) -> float:
    """Median time of ``router.choose_replicas`` (us) with each request's routing facts in its payload."""
    samples = []
    for i in range(decisions):
        route = {"request_id": str(i), "input_tokens": 100 + i % 500, "max_output_tokens": 200}
        pending = _Pending([{"voltana_route": route}], _Metadata(str(i), str(i)))
        start = time.perf_counter_ns()
        ranks = await router.choose_replicas(replicas, pending)
        samples.append((time.perf_counter_ns() - start) / 1000.0)
        assert ranks and ranks[0], "the router ranked no replica"
    return statistics.median(samples)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--decisions", type=count, default=20000)
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args()
    require_library(
        parser,
        "ray",
        "run this benchmark with .venv-ray/bin/python (make env-ray builds it) or pip install 'voltana[ray]'",
    )
    from voltana.sim.ray_runner import RayUnavailableError, import_ray

    try:  # installed, but `import ray` fails beside a ROCm-less amdsmi: one line too
        import_ray()
    except RayUnavailableError as exc:
        parser.error(f"{exc}; or put tests/support/ray_site on PYTHONPATH")

    from voltana.integrations.ray_serve.routing import VoltanaDecodeRouter

    replicas = stand_in_replicas()
    config = {"hardware": {"vendor": "simulated"}}
    rows = []
    for policy in POLICIES:
        clock_aware = policy in CLOCK_AWARE
        router = make_router(VoltanaDecodeRouter, policy=policy, config=config if clock_aware else {}, seed=0)
        ray_us = asyncio.run(ray_decision_us(router, replicas, args.decisions))
        assert router.fallbacks == 0, f"policy {policy!r} gave no usable answer"
        http_us = decision_cost_us(policy, args.decisions, clock_aware=clock_aware)
        rows.append({"policy": policy, "ray_us": ray_us, "http_us": http_us, "ratio": ray_us / http_us})

    if args.json:
        print(json.dumps({"decisions": args.decisions, "rows": rows}, indent=2))
        return
    print(f"one decode routing decision, 16 candidates, median of {args.decisions} (us)")
    print(f"{'policy':<16}{'ray':>10}{'http':>10}{'ray / http':>12}")
    for row in rows:
        print(f"{row['policy']:<16}{row['ray_us']:>10.1f}{row['http_us']:>10.1f}{row['ratio']:>12.2f}")


if __name__ == "__main__":
    main()
