"""Per-instance contexts handed to policy hooks: what a policy may read and where it keeps its state."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from voltana.core.types import BatchSnapshot, Phase, Slo


class LatencyModel(Protocol):
    """What clock policies need from a latency predictor (implemented by ``voltana.core.predictor``)."""

    def predict_latency_s(self, snapshot: BatchSnapshot, clock_mhz: int) -> float:
        """Predicted duration of the iteration described by ``snapshot`` at ``clock_mhz`` (s)."""
        ...


@dataclass(slots=True)
class ClockContext:
    """One instance's view for the clock-choice hook.

    ``allowed_clocks_mhz`` is ascending and non-empty; ``state`` is scratch space a stateful policy owns for
    this instance (hysteresis, dwell timers); ``options`` are the policy's settings from config.
    ``clock_ceiling_mhz`` is the power-budget coordinator's ceiling for this instance (None: no budget); the
    controller clamps every decision to it, so a policy may read it but need not.
    """

    policy: str
    instance_id: str
    phase: Phase
    allowed_clocks_mhz: tuple[int, ...]
    slo: Slo
    predictor: Any | None = None
    power_model: Any | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    clock_ceiling_mhz: int | None = None

    @property
    def max_clock_mhz(self) -> int:
        """Highest allowed clock (MHz)."""
        return self.allowed_clocks_mhz[-1]

    @property
    def min_clock_mhz(self) -> int:
        """Lowest allowed clock (MHz)."""
        return self.allowed_clocks_mhz[0]


@dataclass(slots=True)
class RouteContext:
    """The router's view for the instance-choice hook; ``rng`` is seeded for reproducible runs.

    ``predictor`` (latency) and ``power_model`` (energy: ``predict_energy_j(snapshot, clock_mhz)``) are one
    model for every instance or a mapping from instance id to that instance's model.
    """

    policy: str
    phase: Phase
    slo: Slo
    rng: random.Random = field(default_factory=random.Random)
    predictor: Any | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    power_model: Any | None = None


PolicyKind = Literal["clock", "route"]
ModelKind = Literal["latency", "energy"]
"""A model a policy may read: the latency predictor (``ctx.predictor``) or the energy model
(``ctx.power_model``)."""
ALL_MODELS: frozenset[ModelKind] = frozenset({"latency", "energy"})
NO_MODELS: frozenset[ModelKind] = frozenset()
LATENCY_MODEL: frozenset[ModelKind] = frozenset({"latency"})


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """A named policy a plugin registers through ``voltana_register_policies``.

    ``kind``: ``clock`` or ``route``; ``name``: what config selects (``policy.clock``,
    ``policy.prefill_route``, ``policy.decode_route``); ``description``: one line for ``voltana config show``;
    ``choose``: the policy itself, a ``ClockPolicy`` or a ``RoutePolicy`` (contracts in
    ``voltana.core.policies``), looked up once by name and then called on every iteration or decision;
    ``reads_models``: which of the models (EcoPred) ``choose`` reads, ``"latency"`` and ``"energy"``. A model
    no policy reads need not learn (the simulator skips its updates, see ``FrequencyController`` ``learn``);
    both, the default, is always safe. A fixed clock or round-robin reads none.
    """

    kind: PolicyKind
    name: str
    description: str
    choose: Callable[..., Any]
    reads_models: frozenset[ModelKind] = ALL_MODELS


@dataclass(frozen=True, slots=True)
class DoctorCheck:
    """One line of ``voltana doctor``: ``ok`` is None for pure information; ``fix`` says what to do."""

    section: str
    name: str
    ok: bool | None
    detail: str
    fix: str = ""
