"""``voltana router``: the OpenAI-compatible P/D proxy. Flags override the ``[router]`` config section.

The router's server stack (fastapi, uvicorn) is imported when the command runs, so ``voltana --help`` stays
fast.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from voltana.cli.state import cli_state, validate_policy_names
from voltana.core.config import ConfigError, RouterConfig
from voltana.core.extras import require_extra
from voltana.core.hookspecs import hookimpl
from voltana.core.plugin_manager import registered_policies
from voltana.plugins import get_plugin_manager
from voltana.plugins.telemetry import configure_telemetry, shutdown_telemetry

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
    # the server stack is imported when the command runs: `voltana --help` stays fast (pyproject: PLC0415)
    import uvicorn

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


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("router")(router)
