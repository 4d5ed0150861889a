"""SGLang general plugin (entry point ``voltana`` in group ``sglang.srt.plugins``).

SGLang's loader (``sglang.srt.plugins.load_plugins``, filtered by ``SGLANG_PLUGINS``) calls :func:`register`
once in every SGLang process — the HTTP server, each TP-rank scheduler, the detokenizer — and then applies
the hooks registered with its ``HookRegistry``. Unless voltana is enabled (``VOLTANA_ENABLED=1`` or
``enabled = true`` in ``VOLTANA_CONFIG``), ``register`` returns at once and changes nothing.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
from functools import partial
from typing import Any

from voltana.adapters.engine_control import EngineControlChannel, configured_clock_token
from voltana.adapters.runtime import InstanceRuntime
from voltana.adapters.sglang.binding import (
    PROCESS_RESULT_TARGET,
    RUN_BATCH_TARGET,
    SchedulerBinding,
    around_process_batch_result,
    around_run_batch,
    capture_sizes_of,
    disaggregation_mode_of,
    placement_of,
    runtime_phase,
    set_binding_factory,
)
from voltana.adapters.sglang.state import (
    StatePublisher,
    add_control_routes_for_port,
    add_state_route,
    binding_state,
    control_dirs,
    state_path,
)
from voltana.core.config import ConfigError, VoltanaConfig, load_config

log = logging.getLogger("voltana.sglang")

SUPPORTED_SGLANG = ">=0.5.23,<0.6"
"""SGLang releases whose scheduler this adapter was checked against (keep equal to the ``sglang`` extra)."""

HTTP_LAUNCH_TARGET = "sglang.srt.entrypoints.http_server.launch_server"
HOOKED_METHODS = ("run_batch", "process_batch_result")

_registered = False


def register() -> None:
    """Install voltana's scheduler hooks when enabled; idempotent; never raises into SGLang."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        config = load_config().config
    except ConfigError as exc:
        log.error("voltana: %s; SGLang runs without voltana", exc)
        return
    if not config.enabled:
        return
    problem = sglang_problem()
    if problem:
        log.error("voltana: %s; SGLang runs without voltana", problem)
        return
    install(config, serve_state=multiprocessing.parent_process() is None)


def sglang_problem() -> str:
    """Why the installed SGLang cannot take voltana's hooks ("" when it can): version or missing target."""
    try:
        import sglang
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        version = str(sglang.__version__)
        if Version(version) not in SpecifierSet(SUPPORTED_SGLANG):
            return f"SGLang {version} is not supported (voltana supports sglang{SUPPORTED_SGLANG})"
        from sglang.srt.managers.scheduler import Scheduler
        from sglang.srt.plugins.hook_registry import HookRegistry  # noqa: F401
    except Exception as exc:
        return f"SGLang's scheduler cannot be imported ({type(exc).__name__}: {exc})"
    missing = [name for name in HOOKED_METHODS if not callable(getattr(Scheduler, name, None))]
    if missing:
        return f"SGLang {version} has no Scheduler.{missing[0]} to hook (supported: sglang{SUPPORTED_SGLANG})"
    return ""


def install(config: VoltanaConfig, *, serve_state: bool = False) -> None:
    """Register the scheduler hooks (and, in the HTTP server process, the state route) with SGLang."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    set_binding_factory(partial(make_binding, config))
    HookRegistry.register(RUN_BATCH_TARGET, around_run_batch, HookType.AROUND)
    HookRegistry.register(PROCESS_RESULT_TARGET, around_process_batch_result, HookType.AROUND)
    if serve_state:
        HookRegistry.register(HTTP_LAUNCH_TARGET, _before_http_launch, HookType.BEFORE)


def make_binding(config: VoltanaConfig, scheduler: Any) -> SchedulerBinding | None:
    """The binding of a leader scheduler (None on the other ranks): runtime, GPUs, state publisher."""

    placement = placement_of(scheduler)
    if placement.tp_rank < 0:
        log.warning("voltana: cannot tell this SGLang scheduler's TP rank; it stays pass-through")
    if not placement.is_leader:
        return None
    mode = disaggregation_mode_of(scheduler)
    if config.engine.role != "auto":  # the configured role wins over SGLang's mode, for snapshots too
        mode = "null" if config.engine.role == "mixed" else config.engine.role
    if not config.hardware.device_indices:
        hardware = config.hardware.model_copy(update={"device_indices": placement.instance_gpu_ids})
        config = config.model_copy(update={"hardware": hardware})
    args = getattr(scheduler, "server_args", None)
    model_name = str(getattr(args, "served_model_name", None) or getattr(args, "model_path", "") or "")
    runtime = InstanceRuntime.start(
        config, runtime_phase(config, mode), placement.instance_id, model_name=model_name
    )
    binding = SchedulerBinding(
        runtime,
        disaggregation_mode=mode,
        instance_id=placement.instance_id,
        capture_sizes=capture_sizes_of(scheduler),
    )
    source = partial(binding_state, binding, placement.dp_rank)
    publisher = StatePublisher(state_path(placement.port, placement.dp_rank), source=source).start()

    control = EngineControlChannel(
        runtime, *control_dirs(placement.port, placement.dp_rank), config.engine.iteration_buffer
    ).start()
    atexit.register(publisher.close)
    atexit.register(runtime.close)
    atexit.register(control.close)  # runs first: unpin before the runtime restores clocks
    return binding


def _before_http_launch(*args: Any, **kwargs: Any) -> None:
    """BEFORE hook on SGLang's ``launch_server``: add ``/voltana/state`` and the profiling routes
    (``/voltana/clock``, ``/voltana/iterations``) to its FastAPI app."""
    try:
        from sglang.srt.entrypoints.http_server import app

        server_args = args[0] if args else kwargs["server_args"]
        add_state_route(app, int(server_args.port))

        add_control_routes_for_port(app, int(server_args.port), configured_clock_token())
    except Exception as exc:
        log.error(
            "voltana: cannot serve /voltana/state (%s: %s); the router sees no clock", type(exc).__name__, exc
        )
