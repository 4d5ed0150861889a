"""``voltana emulate``: emulated vLLM/SGLang prefill and decode instances (one process) for demos and load
tests, timed by the simulated GPU.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from voltana.cli.state import cli_state
from voltana.core.config import ConfigError
from voltana.core.extras import require_extra
from voltana.core.hookspecs import hookimpl
from voltana.hardware.errors import UnknownProfileError

console = Console()


def emulate(
    ctx: typer.Context,
    backend: Annotated[str, typer.Option(help="Protocol to speak: vllm or sglang.")] = "vllm",
    prefill: Annotated[int, typer.Option("--prefill", min=0, help="Prefill instances.")] = 1,
    decode: Annotated[int, typer.Option("--decode", min=1, help="Decode instances.")] = 2,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    base_port: Annotated[int, typer.Option(help="First port (0: free ports).", min=0, max=65535)] = 0,
    gpu: Annotated[str, typer.Option(help="Simulated GPU timing the emulator.")] = "a100-80gb",
    model: Annotated[str, typer.Option(help="Model profile timing the emulator.")] = "llama-3.1-8b",
    model_name: Annotated[str, typer.Option(help="Model id served on /v1/models.")] = "emulated-model",
    time_scale: Annotated[
        float, typer.Option(min=0.0, help="Emulated time per simulated second (0: as fast as possible).")
    ] = 1.0,
    connector: Annotated[str, typer.Option(help="vLLM KV connector: nixl or shared-storage.")] = "nixl",
) -> None:
    """Start emulated vLLM/SGLang prefill and decode instances (one process) for demos and load tests.

    engine.clock_token (config) turns on POST /voltana/clock (for voltana profile --engine);
    the clocks section sets the clocks it may pin."""
    require_extra("voltana emulate")
    # the emulator's server stack is imported when the command runs: `voltana --help` stays fast
    from voltana.emulator.cluster import EmulatorCluster

    config = cli_state(ctx).loaded().config
    token = config.engine.clock_token.get_secret_value() if config.engine.clock_token else None

    if backend not in {"vllm", "sglang"}:
        raise ConfigError(f"--backend must be vllm or sglang, got {backend!r}")
    if connector not in {"nixl", "shared-storage"}:
        raise ConfigError(f"--connector must be nixl or shared-storage, got {connector!r}")
    try:
        cluster = EmulatorCluster(
            backend,  # type: ignore[arg-type]
            prefill,
            decode,
            gpu=gpu,
            model=model,
            model_name=model_name,
            time_scale=time_scale,
            connector=connector,  # type: ignore[arg-type]
            host=host,
            clock_token=token,
            clocks=config.clocks,
        )
    except UnknownProfileError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:  # clocks not supported by the simulated GPU
        raise ConfigError(f"invalid config: {exc}") from None
    ports = [base_port + i for i in range(prefill + decode)] if base_port else None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start(ports)
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror} (try another --base-port)") from None
        table = Table(title=f"emulated {backend} instances ({gpu}, {model}, time x{time_scale:g})")
        for column in ("role", "url", "bootstrap port"):
            table.add_column(column)
        for inst in cluster.instances:
            table.add_row(inst.role, inst.url, str(inst.bootstrap_port or ""))
        console.print(table)
        prefill_urls, decode_urls = cluster.router_lists()
        flags = (
            " ".join(f"--prefill '{u}'" for u in prefill_urls)
            + " "
            + " ".join(f"--decode {u}" for u in decode_urls)
        )
        console.print(
            f"route with: voltana router --backend {backend} {flags}", highlight=False, soft_wrap=True
        )
        await stop.wait()
        await cluster.stop()

    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (uvicorn[standard]); plain asyncio works, a little slower
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("emulate")(emulate)
