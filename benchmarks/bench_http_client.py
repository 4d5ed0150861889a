"""Which HTTP client the router keeps: aiohttp vs httpx proxying P/D exchanges to a loopback engine, one run.

Run: ``.venv/bin/python benchmarks/bench_http_client.py [--requests 1000] [--concurrency 256] [--json PATH]``.

A real HTTP server (a small Starlette app under uvicorn, in its own process so its CPU is not the client's)
plays the engine: ``POST /v1/completions`` answers a prefill (``max_tokens=1``, one JSON object) or streams
``--events`` server-sent events for a decode. This process does what the router's proxy does for each
request, with each client in turn: the prefill call, then the decode call read chunk by chunk to its end,
``--concurrency`` requests at a time (the router's default load in ``bench_router.py``), over an unbounded
pool of kept-alive connections (as the router's). Rounds alternate between the clients so that load from
other processes on a shared machine hits both alike.

Reported per client: this process's CPU time per request (what the router spends in its client: the number
that decides), wall time per request and throughput; then their ratios httpx / aiohttp from the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
from bench_report import (
    MOST_CONCURRENCY,
    MOST_REQUESTS,
    add_json_option,
    argument_parser,
    concurrency,
    count,
    emit,
    request_count,
)
from bench_router import wait_http
from rich.table import Table

SERVER = """
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

EVENTS = int(sys.argv[2])
CHUNK = {"id": "cmpl-1", "object": "text_completion", "model": "m",
         "choices": [{"index": 0, "text": " tok", "finish_reason": None}]}
EVENT = b"data: " + json.dumps(CHUNK).encode() + b"\\n\\n"
PREFILL = json.dumps({"id": "cmpl-1", "choices": [{"text": " tok"}], "kv_transfer_params": {"x": 1}}).encode()

async def stream():
    for _ in range(EVENTS):
        yield EVENT
    yield b"data: [DONE]\\n\\n"

async def completions(request):
    body = json.loads(await request.body())
    if not body.get("stream"):
        return Response(PREFILL, media_type="application/json")
    return StreamingResponse(stream(), media_type="text/event-stream")

async def health(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop",
            http="httptools", timeout_keep_alive=30)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PREFILL_BODY = json.dumps({"model": "m", "prompt": "hello", "max_tokens": 1, "stream": False}).encode()
DECODE_BODY = json.dumps({"model": "m", "prompt": "hello", "max_tokens": 16, "stream": True}).encode()
HEADERS = {"content-type": "application/json", "x-request-id": "bench"}

Exchange = Callable[[], Awaitable[int]]


async def aiohttp_rounds(url: str, rounds: list[Callable[[Exchange], Awaitable[None]]]) -> None:
    """Run each round with an aiohttp session configured as the router's (unbounded pool, no decompress)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, connect=5.0, sock_read=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def exchange() -> int:
            async with session.post(url, data=PREFILL_BODY, headers=HEADERS) as answer:
                json.loads(await answer.read())
            events = 0
            async with session.post(url, data=DECODE_BODY, headers=HEADERS) as answer:
                async for chunk in answer.content.iter_any():
                    events += chunk.count(b"\n\n")
            return events

        for run in rounds:
            await run(exchange)


async def httpx_rounds(url: str, rounds: list[Callable[[Exchange], Awaitable[None]]]) -> None:
    """Run each round with an httpx client configured alike (unbounded pool, 4 s idle expiry)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=4.0)
    timeout = httpx.Timeout(60.0, connect=5.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

        async def exchange() -> int:
            answer = await client.post(url, content=PREFILL_BODY, headers=HEADERS)
            json.loads(answer.content)
            events = 0
            async with client.stream("POST", url, content=DECODE_BODY, headers=HEADERS) as streamed:
                async for chunk in streamed.aiter_raw():
                    events += chunk.count(b"\n\n")
            return events

        for run in rounds:
            await run(exchange)


class Tally:
    """CPU and wall seconds and requests per client, summed over its rounds."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.requests = 0


def round_runner(
    tally: Tally, requests: int, concurrency: int, events: int
) -> Callable[[Exchange], Awaitable[None]]:
    """A timed round: a warm-up wave (not counted), then ``requests`` exchanges, ``concurrency`` at a time."""

    async def run(exchange: Exchange) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                got = await exchange()
            if got != events + 1:
                raise RuntimeError(f"expected {events + 1} events, read {got}")

        await asyncio.gather(*(one() for _ in range(concurrency)))  # warm the pool: not counted
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        tally.cpu_s += time.process_time() - cpu
        tally.wall_s += time.perf_counter() - wall
        tally.requests += requests

    return run


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--requests",
        type=request_count,
        default=1000,
        help=f"requests per round and client (1 to {MOST_REQUESTS:,})",
    )
    parser.add_argument("--concurrency", type=concurrency, default=256, help=f"1 to {MOST_CONCURRENCY}")
    parser.add_argument("--events", type=count, default=16, help="streamed decode events per request")
    parser.add_argument("--rounds", type=count, default=3, help="rounds per client (alternating)")
    add_json_option(parser)
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()  # the router runs on uvloop (voltana router)
    except ImportError:
        pass
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(args.events)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    url = f"http://127.0.0.1:{port}/v1/completions"
    tallies = {"aiohttp": Tally(), "httpx": Tally()}
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        for _ in range(args.rounds):
            for name, runner in (("aiohttp", aiohttp_rounds), ("httpx", httpx_rounds)):
                run = round_runner(tallies[name], args.requests, args.concurrency, args.events)
                asyncio.run(runner(url, [run]))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()

    table = Table(
        title=f"HTTP client proxying a prefill + streamed decode ({args.events} events), "
        f"concurrency {args.concurrency}, {args.rounds} x {args.requests} requests each"
    )
    for column in ("client", "CPU us / request", "wall us / request", "requests / s"):
        table.add_column(column, justify="right" if column != "client" else "left")
    per = {
        name: (t.cpu_s / t.requests * 1e6, t.wall_s / t.requests * 1e6, t.requests / t.wall_s)
        for name, t in tallies.items()
    }
    for name, (cpu_us, wall_us, rate) in per.items():
        table.add_row(name, f"{cpu_us:.0f}", f"{wall_us:.0f}", f"{rate:.0f}")
    a, h = per["aiohttp"], per["httpx"]
    table.add_row("ratio httpx / aiohttp", f"{h[0] / a[0]:.2f}", f"{h[1] / a[1]:.2f}", f"{h[2] / a[2]:.2f}")
    table.caption = "client CPU is this process's (the engine runs in another); lower is better but req/s"
    emit(table, benchmark=Path(__file__).stem, json_path=args.json)


if __name__ == "__main__":
    main()
