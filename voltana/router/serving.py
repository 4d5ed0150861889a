"""Running ASGI apps with uvicorn: several servers on one event loop (emulated clusters), in a background
thread (tests, benchmarks), or in the foreground with a graceful drain on SIGTERM (``voltana router``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn

LOOPBACK = "127.0.0.1"


def bind_socket(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A listening TCP socket (``port=0``: a free one; read it from ``getsockname()[1]``)."""
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP
    # (with 0, a response's header and body writes meet Nagle + delayed ACK: +40 ms per request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def server_config(app: Any, *, drain_timeout_s: float = 5.0, access_log: bool = False) -> uvicorn.Config:
    """uvicorn settings shared by the router and the emulator (quiet, fast event loop when installed)."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=max(1, round(drain_timeout_s)),
        timeout_keep_alive=30,
        backlog=2048,
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner (several can share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def kill_connections(self) -> None:
        """Drop every open connection at once (a crash, as a client sees it)."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


class DrainingServer(uvicorn.Server):
    """The foreground server: on SIGTERM/SIGINT it calls ``on_drain`` (router refuses new requests), stops
    accepting connections and gives in-flight requests ``timeout_graceful_shutdown`` seconds to finish."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_drain = on_drain

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Like uvicorn's, minus re-raising the signal afterwards: a drained router exits with status 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class BackgroundLoop:
    """An event loop in a daemon thread: run coroutines on it from synchronous code (tests, benchmarks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="voltana-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_rest(), timeout_s=10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def start_server(
    app: Any, sock: socket.socket, **kwargs: Any
) -> tuple[EmbeddedServer, asyncio.Task[None]]:
    """Serve ``app`` on ``sock`` in the running loop; returns once it accepts connections."""
    server = EmbeddedServer(server_config(app, **kwargs))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.01)
    return server, task


async def stop_server(server: EmbeddedServer, task: asyncio.Task[None], *, crash: bool = False) -> None:
    """Stop ``server``: gracefully, or as a crash (connections dropped mid-response)."""
    if crash:
        server.kill_connections()
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
