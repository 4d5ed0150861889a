"""vLLM general plugin entry point (``vllm.general_plugins``): installs voltana's scheduler hook.

vLLM calls :func:`register` in every process (API server, EngineCore, workers). It is idempotent, and with
voltana disabled (the default) it returns before importing anything of vLLM: zero effect. Enabled
(``VOLTANA_ENABLED=1`` or ``enabled = true`` in ``VOLTANA_CONFIG``), it checks that the installed vLLM has
what the hook reads (an ERROR naming what is missing otherwise, and vLLM serves without voltana), wraps the
V1 scheduler (:mod:`voltana.adapters.vllm.scheduler_hook`), adds ``voltana:*`` samples to ``/metrics`` and
serves ``GET /voltana/state`` (:mod:`voltana.adapters.vllm.state`).
"""

from __future__ import annotations

import logging
import os

from voltana.adapters.vllm.compat import (
    VllmIncompatibleError,
    check_vllm,
    supported_range_text,
    version_is_supported,
)
from voltana.core.config import ConfigError, load_config

log = logging.getLogger("voltana.adapters.vllm")

_registered = False
_FALSE_WORDS = {"0", "false", "no", "off", ""}


def voltana_wanted() -> bool:
    """Whether voltana should hook this vLLM: ``enabled`` from config; an invalid config counts as wanted
    (the engine then runs monitor-only and says why) unless ``VOLTANA_ENABLED`` is explicitly false."""
    try:
        return load_config().config.enabled
    except ConfigError:
        return os.environ.get("VOLTANA_ENABLED", "1").strip().lower() not in _FALSE_WORDS


def _share_vllm_log_handlers() -> None:
    """Let voltana's log lines appear through vLLM's handlers (same format, same stream)."""
    ours, theirs = logging.getLogger("voltana"), logging.getLogger("vllm")
    if ours.handlers or not theirs.handlers:
        return
    for handler in theirs.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def register() -> None:
    """Install voltana into this vLLM process when enabled; idempotent; never raises into vLLM."""
    global _registered
    if _registered:
        return
    _registered = True
    if not voltana_wanted():
        return
    _share_vllm_log_handlers()
    try:
        version = check_vllm()
    except VllmIncompatibleError as exc:
        log.error("voltana: %s; voltana is inactive and vLLM serves without it", exc)
        return
    if not version_is_supported(version):
        log.warning(
            "voltana: vLLM %s is untested (supported %s); hooking anyway", version, supported_range_text()
        )
    try:
        # imported only when enabled: a disabled voltana loads nothing more into vLLM's processes
        from voltana.adapters.vllm.scheduler_hook import install_scheduler_hook
        from voltana.adapters.vllm.state import install_state_route, register_collector

        install_scheduler_hook()
        register_collector()
        if not install_state_route():
            log.info("voltana: this vLLM builds its HTTP app differently; state is in /metrics only")
    except Exception as exc:
        log.error(
            "voltana: could not install the vLLM hook (%s: %s); vLLM serves without voltana",
            type(exc).__name__,
            exc,
        )
