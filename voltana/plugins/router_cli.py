"""``voltana router`` (the OpenAI-compatible P/D proxy) and ``voltana emulate`` (emulated engine instances
for demos and load tests). Flags override the ``[router]`` config section.

The router and emulator are imported when a command runs, so ``voltana --help`` stays fast (and this plugin
module keeps to its layer: it only names the router package at run time).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from voltana.core.config import ConfigError, RouterConfig
from voltana.core.extras import require_extra
from voltana.core.hookspecs import hookimpl

console = Console()


def _router_settings(base: RouterConfig, overrides: dict[str, Any]) -> RouterConfig:
    """``base`` with the given flags applied, validated (a bad flag is one ConfigError line)."""
    merged = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    if base.admin_token is not None and overrides.get("admin_token") is None:
        merged["admin_token"] = base.admin_token.get_secret_value()
    try:
        settings = RouterConfig.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in error["loc"])
        raise ConfigError(
            f"invalid router setting: router.{key} = {error.get('input')!r}: {error['msg']}"
        ) from None
    for key in ("prefill", "decode"):
        if not getattr(settings, key):
            raise ConfigError(f"router.{key} is empty: give --{key} URL (repeatable) or set router.{key}")
    return settings


def router(
    ctx: typer.Context,
    prefill: Annotated[
        list[str] | None,
        typer.Option("--prefill", help="Prefill instance URL (repeat); SGLang: 'URL BOOTSTRAP_PORT'."),
    ] = None,
    decode: Annotated[
        list[str] | None, typer.Option("--decode", help="Decode instance URL (repeat).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Engine protocol: vllm or sglang.")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    prefill_policy: Annotated[str | None, typer.Option(help="Prefill routing policy.")] = None,
    decode_policy: Annotated[str | None, typer.Option(help="Decode routing policy.")] = None,
    admin_token: Annotated[
        str | None, typer.Option(help="Bearer token of /admin/* (or VOLTANA_ROUTER__ADMIN_TOKEN).")
    ] = None,
    kv_transfer_params: Annotated[
        bool | None,
        typer.Option(
            "--kv-transfer-params/--no-kv-transfer-params",
            help="vLLM: exchange kv_transfer_params (NIXL); off for connectors that exchange nothing.",
        ),
    ] = None,
) -> None:
    """Run the OpenAI-compatible P/D router in front of vLLM or SGLang prefill and decode instances."""
    require_extra("voltana router")
    import uvicorn

    from voltana.cli import cli_state, validate_policy_names
    from voltana.core.plugin_manager import registered_policies
    from voltana.plugins import get_plugin_manager
    from voltana.plugins.telemetry import configure_telemetry, shutdown_telemetry
    from voltana.router.app import build_router_app
    from voltana.router.serving import DrainingServer, server_config

    loaded = cli_state(ctx).loaded()
    overrides = {
        "prefill": prefill or None,
        "decode": decode or None,
        "backend": backend,
        "host": host,
        "port": port,
        "admin_token": admin_token,
        "kv_transfer_params": kv_transfer_params,
    }
    settings = _router_settings(loaded.config.router, overrides)
    policy_updates = {
        k: v for k, v in (("prefill_route", prefill_policy), ("decode_route", decode_policy)) if v
    }
    config = loaded.config.model_copy(
        update={"router": settings, "policy": loaded.config.policy.model_copy(update=policy_updates)}
    )
    sources = dict(loaded.sources)
    sources.update({f"policy.{key}": "flag" for key in policy_updates})
    validate_policy_names(type(loaded)(config=config, sources=sources, path=loaded.path))
    pm = get_plugin_manager()
    known: dict[str, set[str]] = {}
    for info in registered_policies(pm):
        known.setdefault(info.kind, set()).add(info.name)
    telemetry = configure_telemetry(config)
    try:
        app = build_router_app(
            config,
            pm.hook,
            tracer_provider=telemetry.tracer_provider if telemetry else None,
            known_policies=known,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid router setting: {exc}") from None
    state = app.state.router

    def drain() -> None:
        if not state.draining:
            console.print(
                f"draining: {state.inflight} request(s) in flight get {settings.drain_timeout_s:g} s"
            )
        state.draining = True

    uv_config: uvicorn.Config = server_config(app, drain_timeout_s=settings.drain_timeout_s)
    uv_config.host, uv_config.port = settings.host, settings.port
    console.print(
        f"voltana router on http://{settings.host}:{settings.port} ({settings.backend}): "
        f"{len(settings.prefill)} prefill, {len(settings.decode)} decode; policies "
        f"{config.policy.prefill_route} / {config.policy.decode_route}"
        + ("; admin API on" if settings.admin_token else ""),
        highlight=False,
    )
    try:
        DrainingServer(uv_config, on_drain=drain).run()
    finally:
        shutdown_telemetry()


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

    ``engine.clock_token`` (config) turns on ``POST /voltana/clock`` (for ``voltana profile --engine``);
    ``clocks`` sets the clocks it may pin."""
    require_extra("voltana emulate")
    from voltana.cli import cli_state
    from voltana.hardware.errors import UnknownProfileError
    from voltana.router.emulator import EmulatorCluster

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
    cli.command("router")(router)
    cli.command("emulate")(emulate)
