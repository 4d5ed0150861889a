"""State every command shares: the root's ``--config`` option and the config loaded from it.

The root callback puts a :class:`CliState` on typer's context (``ctx.obj``); a command, built-in or added by a
plugin, reaches it with :func:`cli_state`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from voltana.core.config import ConfigError, LoadedConfig, load_config
from voltana.core.policies import UnknownPolicyError, lookup_policy, policies_of
from voltana.plugins import get_plugin_manager


class CliState:
    """Options of the top-level callback, shared with subcommands through ``ctx.obj``."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._loaded: LoadedConfig | None = None

    def loaded(self) -> LoadedConfig:
        """The validated config (loaded once); raises ConfigError on a user mistake."""
        if self._loaded is None:
            self._loaded = load_config(self.config_path)
        return self._loaded


def cli_state(ctx: typer.Context) -> CliState:
    """The root options for a subcommand (works for plugin commands too)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None)
    return root.obj


def validate_policy_names(loaded: LoadedConfig) -> None:
    """Raise ConfigError when a configured policy name is not provided by any registered plugin: the core's
    lookup (:func:`voltana.core.policies.lookup_policy`) and its wording, after the key and its source. A kind
    no plugin registers (a config check without plugins) is not checked."""
    hook = get_plugin_manager().hook
    kinds = {p.kind for p in policies_of(hook)}
    policy = loaded.config.policy
    for key, kind, name in (
        ("policy.clock", "clock", policy.clock),
        ("policy.prefill_route", "route", policy.prefill_route),
        ("policy.decode_route", "route", policy.decode_route),
    ):
        if kind not in kinds:
            continue
        try:
            lookup_policy(hook, kind, name)
        except UnknownPolicyError as exc:
            raise ConfigError(
                f"invalid config: {key} = {name!r} (from {loaded.source_of(key)}): {exc}"
            ) from None
