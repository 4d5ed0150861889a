"""The routing policies' knobs in ``policy.options``, checked once when a router or a simulation starts.

A bad value is one :class:`~voltana.core.config.ConfigError` line (``policy.options.<key> must be ...``)
instead of a ``ValueError`` from inside a routing decision. Unknown keys belong to other policies (EcoFreq's
:class:`~voltana.plugins.ecofreq.EcoFreqOptions`, a third party's) and are left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass

from voltana.core.config import (
    ConfigBool,
    ConfigError,
    ConfigFloat,
    ConfigInt,
    PolicyConfig,
    read_options,
)
from voltana.core.types import DEFAULT_PREFILL_TOKEN_BUDGET
from voltana.plugins.ecoroute import DEFAULT_HEADROOM, PAPER_TILE_REQUESTS
from voltana.plugins.routing import MIN_JOIN_SAVING


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore", use_attribute_docstrings=True))
class RoutingOptions:
    """The routing policies' knobs (``energy-ttft``, ``ecoroute``; see docs/concepts/policies.md)."""

    safety_margin: ConfigFloat = Field(default=0.1, ge=0.0, lt=1.0, allow_inf_nan=False)
    """Not a knob of its own: the routes, like the clock policies, keep ``policy.safety_margin`` of the SLO in
    reserve, which :func:`route_options` passes. A ``policy.options.safety_margin`` is checked as
    :class:`~voltana.plugins.ecofreq.EcoFreqOptions` checks it, then overridden."""
    min_join_saving: ConfigFloat = Field(default=MIN_JOIN_SAVING, ge=0.0, lt=1.0, allow_inf_nan=False)
    """``energy-ttft``: least share of a prompt's energy alone that joining a busy instance must save."""
    ecoroute_headroom: ConfigFloat = Field(default=DEFAULT_HEADROOM, ge=0.0, lt=1.0, allow_inf_nan=False)
    """``ecoroute``: share of an instance's running cap kept free while another instance has room."""
    ecoroute_pack_limit: ConfigInt = Field(default=PAPER_TILE_REQUESTS, ge=1)
    """``ecoroute``: most requests consolidated on one instance while another has room."""
    ecoroute_fill: Literal["pack", "spread"] = "pack"
    """``ecoroute`` tie-break: ``pack`` (the busier instance first) or ``spread``."""
    ecoroute_energy: ConfigBool = True
    """``ecoroute``: rank by the energy model's marginal energy (else by the lowest clock needed)."""
    prefill_token_budget: ConfigInt = Field(default=DEFAULT_PREFILL_TOKEN_BUDGET, ge=1)
    """Tokens per prefill iteration the engine schedules (the prefill routes' TTFT predictions)."""
    idle_power_w: ConfigFloat = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """Power an instance draws when not computing (W); marginal energies are counted above it."""

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RoutingOptions:
        """The routing knobs of ``options``; raises :class:`~voltana.core.config.ConfigError` (one line
        naming the key, what it must be and what it got)."""
        return read_options(_ADAPTER, options)


_ADAPTER = TypeAdapter(RoutingOptions)


def route_options(policy: PolicyConfig) -> dict[str, Any]:
    """The options every routing context starts from: ``policy.options``, the routing knobs checked
    (:class:`RoutingOptions`; raises ``ConfigError``) and given as read (a ``VOLTANA_POLICY__OPTIONS__*``
    variable arrives as a string: ``"5.0"`` is the pack limit 5, which the routes' ``int()`` could not read),
    and ``safety_margin``: ``policy.safety_margin``, whatever ``policy.options`` says, as the clock
    controllers take it. :data:`INTERNAL_ROUTE_OPTIONS` in ``policy.options`` are a ``ConfigError``. Used by
    the HTTP router, the Ray Serve request routers and the simulator alike."""
    for key, setting in INTERNAL_ROUTE_OPTIONS.items():
        if key in policy.options:
            raise ConfigError(
                f"policy.options.{key} is not an option: the routes get the clock controllers' clocks "
                f"(set {setting}), got {policy.options[key]!r}"
            )
    checked = RoutingOptions.from_mapping(policy.options)
    read = {key: getattr(checked, key) for key in policy.options if key in _KNOBS}
    return {**policy.options, **read, "safety_margin": policy.safety_margin}


INTERNAL_ROUTE_OPTIONS = {"allowed_clocks_mhz": "clocks.allowed_mhz", "max_clock_mhz": "clocks.max_mhz"}
"""Route options the router and the simulator set themselves from the clocks in use (the setting that
chooses them): in ``policy.options`` they would replace the clocks the routes predict with."""
_KNOBS = frozenset(field.name for field in dataclasses.fields(RoutingOptions))
