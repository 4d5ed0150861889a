"""The router under load: 16 emulated decode + 4 prefill instances, on loopback, measured in one run.

Run: ``.venv/bin/python benchmarks/bench_router.py`` (``--requests 2000 --concurrency 256`` by default).
Three processes: the emulated engines (``voltana emulate``), the router (``voltana router``) and this client.

1. Added latency: the same P/D exchange done by the client itself against the instances (prefill with
   ``max_tokens=1`` + ``kv_transfer_params``, then decode with the returned params) vs through the router,
   interleaved, sequential; p50 of each and their difference/ratio (target: router adds <= 1 ms at p50).
   Also the router's own ``voltana_router_added_latency_seconds`` (time not spent waiting on engines).
2. Load: N requests (half streamed) at high concurrency; every answer is checked against the emulator's
   deterministic text and every decode instance reports which request ids it served: 0 lost, 0 duplicated.
3. Routing decision cost (in process): ``InstanceChooser.choose`` over 16 decode candidates with each
   built-in policy through the plugin hook (target: median <= 50 us).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
from bench_report import (
    MOST_CONCURRENCY,
    MOST_INSTANCES,
    MOST_REQUESTS,
    argument_parser,
    concurrency,
    instance_count,
    request_count,
)

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase, RouteRequest, Slo
from voltana.emulator.responses import expected_text
from voltana.plugins import get_plugin_manager
from voltana.router.choice import InstanceChooser
from voltana.router.instances import InstanceRegistry, parse_endpoint
from voltana.router.load_parsing import LoadReport
from voltana.router.predictors import route_predictors

ROOT = Path(__file__).resolve().parents[1]
VOLTANA = [sys.executable, "-m", "voltana.cli"]
MODEL = "emulated-model"
ROUNDS = 5


def free_port_block(count: int) -> int:
    """A first port such that ``count`` consecutive ports look free."""
    for base in range(20000, 60000, 97):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_added_latency(
    router: str, prefill: list[str], decode: list[str], n: int
) -> dict[str, float]:
    """Interleaved sequential requests: the client runs the P/D exchange itself vs asks the router (seconds).

    Both paths use the same HTTP client (aiohttp, as the router does for its engine calls). On a shared
    machine other load inflates whole stretches of samples, so besides the overall p50 the samples are cut
    into ``ROUNDS`` consecutive rounds and the quietest round's p50 (the minimum over rounds) is reported.
    """
    direct_s: list[float] = []
    routed_s: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def post(url: str, body: dict[str, object]) -> dict[str, object]:
            async with client.post(url + "/v1/completions", json=body) as response:
                answer: dict[str, object] = json.loads(await response.read())
                return answer

        for i in range(n + 50):
            body = {"model": MODEL, "prompt": f"latency probe {i}", "max_tokens": 4}
            start = time.perf_counter()
            pre = dict(body, max_tokens=1, kv_transfer_params={"do_remote_decode": True})
            params = (await post(prefill[i % len(prefill)], pre))["kv_transfer_params"]
            answer = await post(decode[i % len(decode)], dict(body, kv_transfer_params=params))
            direct = time.perf_counter() - start
            assert answer["choices"][0]["text"] == expected_text(body["prompt"], 4)  # type: ignore[index]
            start = time.perf_counter()
            answer = await post(router, body)
            routed = time.perf_counter() - start
            assert answer["choices"][0]["text"] == expected_text(body["prompt"], 4)  # type: ignore[index]
            if i >= 50:  # warm-up: connections, caches
                direct_s.append(direct)
                routed_s.append(routed)
    size = max(1, len(direct_s) // ROUNDS)
    rounds = [(direct_s[k : k + size], routed_s[k : k + size]) for k in range(0, len(direct_s), size)]
    return {"direct_p50_s": statistics.median(direct_s), "routed_p50_s": statistics.median(routed_s),
            "direct_p90_s": percentile(direct_s, 0.9), "routed_p90_s": percentile(routed_s, 0.9),
            "direct_quiet_p50_s": min(statistics.median(d) for d, _ in rounds),
            "routed_quiet_p50_s": min(statistics.median(r) for _, r in rounds)}  # fmt: skip


async def run_load(router: str, total: int, concurrency: int) -> dict[str, float]:
    """``total`` requests, ``concurrency`` at a time; returns counts of ok / wrong / failed and the rate."""
    gate = asyncio.Semaphore(concurrency)
    ok = wrong = failed = 0
    # aiohttp drives the load: httpx's connection pool costs O(connections) per request at this concurrency.
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(router, connector=connector, timeout=timeout) as client:

        async def one(i: int) -> None:
            nonlocal ok, wrong, failed
            prompt, max_tokens, stream = f"load {i}", 4 + i % 8, i % 2 == 0
            body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
            async with gate:
                try:
                    headers = {"x-request-id": f"bench-{i}"}
                    async with client.post("/v1/completions", json=body, headers=headers) as response:
                        status, payload = response.status, await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1
                    return
            if status != 200:
                failed += 1
                return
            if stream:
                events = [line[6:] for line in payload.splitlines() if line.startswith("data: {")]
                text = "".join(json.loads(event)["choices"][0]["text"] for event in events)
            else:
                text = json.loads(payload)["choices"][0]["text"]
            if text == expected_text(prompt, max_tokens):
                ok += 1
            else:
                wrong += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    return {"ok": ok, "wrong": wrong, "failed": failed, "rate": total / elapsed, "elapsed_s": elapsed}


def served_counts(decode: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for url in decode:
        counts.update(httpx.get(url + "/emulator/stats", timeout=10, trust_env=False).json()["served_ids"])
    return counts


def router_added_latency_p50_s(router: str) -> float:
    """Median of the router's own ``voltana_router_added_latency_seconds`` (upper bound of its bucket)."""
    text = httpx.get(router + "/metrics", timeout=10, trust_env=False).text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("voltana_router_added_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    return next((bound for bound, count in buckets if count >= total / 2), float("nan"))


def decision_cost_us(policy: str, decisions: int = 20000, clock_aware: bool = False) -> float:
    """Median cost of one routing decision (us) over 16 decode instances with polled state.

    ``clock_aware``: the policy gets latency predictors (seeded from the simulated A100), as in the router
    when ``hardware.vendor = "simulated"`` or ``engine.predictor_profile`` is set.
    """
    decode = [parse_endpoint(f"http://127.0.0.1:{9000 + i}") for i in range(16)]
    registry = InstanceRegistry([], decode, max_inflight_per_instance=10**9)
    for i, inst in enumerate(registry.by_phase[Phase.DECODE]):
        registry.record_poll(inst, LoadReport(i * 3, i % 2, 1000 * i, 400000))
        inst.capture_sizes = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128)
        inst.sm_clock_mhz = 1410
    predictors = route_predictors(VoltanaConfig(hardware={"vendor": "simulated"})) if clock_aware else None
    chooser = InstanceChooser(
        get_plugin_manager().hook,
        registry,
        predictors=predictors,
        prefill_policy="random",
        decode_policy=policy,
        slo=Slo(0.8, 0.05),
        seed=0,
    )
    samples = []
    for i in range(decisions):
        request = RouteRequest(str(i), 100 + i % 500, 200)
        chosen = chooser.choose(Phase.DECODE, request)
        samples.append(chooser.last_decision_ns / 1000.0)
        registry.acquire(chosen)  # the load changes as a router's would (requests come and go)
        if i % 8 != 0:
            registry.release(chosen)
    assert chooser.fallbacks == 0, f"policy {policy!r} gave no usable answer"
    return statistics.median(samples)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--requests", type=request_count, default=2000, help=f"1 to {MOST_REQUESTS:,}")
    parser.add_argument("--concurrency", type=concurrency, default=256, help=f"1 to {MOST_CONCURRENCY}")
    parser.add_argument("--latency-samples", type=request_count, default=300, help=f"1 to {MOST_REQUESTS:,}")
    parser.add_argument("--prefill", type=instance_count, default=4, help=f"1 to {MOST_INSTANCES}")
    parser.add_argument("--decode", type=instance_count, default=16, help=f"1 to {MOST_INSTANCES}")
    args = parser.parse_args()

    n_instances = args.prefill + args.decode
    base = free_port_block(n_instances + 1)
    router_port = base + n_instances
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [*VOLTANA, "emulate", "--prefill", str(args.prefill), "--decode", str(args.decode),
             "--base-port", str(base), "--time-scale", "0"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        ))  # fmt: skip
        prefill = [f"http://127.0.0.1:{base + i}" for i in range(args.prefill)]
        decode = [f"http://127.0.0.1:{base + args.prefill + i}" for i in range(args.decode)]
        wait_http(decode[-1] + "/health")
        flags = [f for u in prefill for f in ("--prefill", u)] + [f for u in decode for f in ("--decode", u)]
        router_cmd = [*VOLTANA, "router", "--port", str(router_port), *flags]
        procs.append(subprocess.Popen(router_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
        router = f"http://127.0.0.1:{router_port}"
        wait_http(router + "/health")

        latency = asyncio.run(measure_added_latency(router, prefill, decode, args.latency_samples))
        self_p50_s = router_added_latency_p50_s(router)
        before = served_counts(decode)
        load = asyncio.run(run_load(router, args.requests, args.concurrency))
        served = served_counts(decode) - before
        bench_ids = Counter({k: v for k, v in served.items() if k.startswith("bench-")})
        lost = sum(1 for i in range(args.requests) if bench_ids[f"bench-{i}"] == 0)
        duplicated = sum(v - 1 for v in bench_ids.values() if v > 1)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    costs = {
        p: decision_cost_us(p)
        for p in ("ecoroute", "ecoroute-paper", "least-loaded", "round-robin", "random")
    }
    costs["ecoroute + clock predictors"] = decision_cost_us("ecoroute", 5000, clock_aware=True)
    costs["ecoroute-paper + clock predictors"] = decision_cost_us("ecoroute-paper", 5000, clock_aware=True)
    added_ms = (latency["routed_p50_s"] - latency["direct_p50_s"]) * 1000
    quiet_added_ms = (latency["routed_quiet_p50_s"] - latency["direct_quiet_p50_s"]) * 1000
    quiet_ratio = latency["routed_quiet_p50_s"] / latency["direct_quiet_p50_s"]
    print(f"\nrouter benchmark: {args.prefill} prefill + {args.decode} decode emulated instances (time x0)")
    print(f"{'measure':<66}{'value':>10}{'target':>10}")
    rows = [
        ("p50 client-driven P/D (ms)", f"{latency['direct_p50_s'] * 1000:.2f}", ""),
        ("p50 through the router (ms)", f"{latency['routed_p50_s'] * 1000:.2f}", ""),
        ("p50 added by the router (ms)", f"{added_ms:.2f}", "<= 1.00"),
        ("p50 ratio routed / client-driven", f"{latency['routed_p50_s'] / latency['direct_p50_s']:.2f}", ""),
        ("p90 ratio routed / client-driven", f"{latency['routed_p90_s'] / latency['direct_p90_s']:.2f}", ""),
        ("quietest round: p50 added by the router (ms)", f"{quiet_added_ms:.2f}", "<= 1.00"),
        ("quietest round: p50 ratio routed / client-driven", f"{quiet_ratio:.2f}", ""),
        ("router's own added-latency metric, p50 bucket (ms)", f"<= {self_p50_s * 1000:.2f}", "<= 1.00"),
        (f"load: requests (concurrency {args.concurrency})", str(args.requests), ""),
        ("load: correct answers", str(load["ok"]), str(args.requests)),
        ("load: wrong text / failed", f"{load['wrong']} / {load['failed']}", "0 / 0"),
        ("load: lost (never decoded)", str(lost), "0"),
        ("load: duplicated (decoded twice)", str(duplicated), "0"),
        ("load: throughput (req/s)", f"{load['rate']:.0f}", ""),
    ]
    rows += [(f"decision p50 over 16 decode (us): {p}", f"{c:.1f}", "<= 50") for p, c in costs.items()]
    for name, value, target in rows:
        print(f"{name:<66}{value:>10}{target:>10}")


if __name__ == "__main__":
    main()
