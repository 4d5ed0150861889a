"""Seeding EcoPred from the simulated GPU, and building a ready ``FrequencyController`` from config.

This is the hardware-facing half of EcoFreq (``voltana.core`` must not import ``voltana.hardware``): it
profiles a :class:`~voltana.hardware.simulated.PerformanceModel` on a grid, as ``voltana profile`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from voltana.core.config import ClockConfig, PolicyConfig, VoltanaConfig
from voltana.core.contexts import ALL_MODELS, ModelKind
from voltana.core.controller import FrequencyController
from voltana.core.predictor import EnergyPredictor, LatencyPredictor, prefill_attention_work
from voltana.core.profile import Profile, Sample, fit_phase, load_profile
from voltana.core.rls import AdaptationSettings
from voltana.core.types import Phase, Slo
from voltana.hardware.simulated import PerformanceModel
from voltana.plugins.ecofreq import POLICY_NAME as ECOFREQ_POLICY
from voltana.plugins.ecofreq import EcoFreqOptions
from voltana.plugins.static_clock import StaticClockOptions

PREFILL_SEGMENT_ENDS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
"""Prefill token-count segments: the roofline bends below ~256 tokens and attention grows beyond ~4k."""
ALLOWED_SNAP_MHZ = 30
"""An allowed clock this close to a supported one is snapped to it (steps are 15 MHz on A100/H100)."""
DEFAULT_CLOCK_LEVELS = 8
"""Allowed clocks when config names none: this many, evenly spread over the device's supported range."""
_PREFILL_CONTEXTS = (0, 2048, 8192)
_PREFILL_BATCH_SIZES = (1, 4)
_DECODE_KV_PER_REQUEST = (16, 256, 1024, 4096)
_PROFILE_CACHE: dict[tuple[str, tuple[int, ...]], Profile] = {}
"""Profiles are pure functions of (model, clocks): the simulator builds many controllers on one model."""


def resolve_allowed_clocks(
    clocks: ClockConfig, supported_mhz: Sequence[int], levels: int = DEFAULT_CLOCK_LEVELS
) -> tuple[int, ...]:
    """The controller's clock set (ascending MHz); raises ValueError with one line.

    ``clocks.allowed_mhz`` snapped to supported clocks (at most ``ALLOWED_SNAP_MHZ`` away), else ``levels``
    clocks evenly spread over the supported clocks within ``[min_mhz, max_mhz]``.
    """
    supported = sorted(set(int(c) for c in supported_mhz))
    if not supported:
        raise ValueError("the device reports no supported clocks")
    if clocks.allowed_mhz:
        snapped = {c: _nearest(supported, c) for c in clocks.allowed_mhz}
        far = [c for c, s in snapped.items() if abs(s - c) > ALLOWED_SNAP_MHZ]
        if far:
            raise ValueError(
                f"clocks.allowed_mhz {far} not supported by the device "
                f"(supported: {supported[0]}..{supported[-1]} MHz)"
            )
        return tuple(sorted(set(snapped.values())))
    lo = clocks.min_mhz if clocks.min_mhz is not None else supported[0]
    hi = clocks.max_mhz if clocks.max_mhz is not None else supported[-1]
    window = [c for c in supported if lo <= c <= hi]
    if not window:
        raise ValueError(
            f"clocks.min_mhz..max_mhz = {lo}..{hi} MHz contains no supported clock "
            f"(supported: {supported[0]}..{supported[-1]})"
        )
    if len(window) <= levels:
        return tuple(window)
    picks = {window[round(i * (len(window) - 1) / (levels - 1))] for i in range(levels)}
    return tuple(sorted(picks))


def _nearest(supported: Sequence[int], clock_mhz: int) -> int:
    """The supported clock nearest ``clock_mhz`` (the lower one on a tie)."""
    return min(supported, key=lambda s: (abs(s - clock_mhz), s))


def _spread(lo: int, hi: int, count: int) -> list[int]:
    """Up to ``count`` integers evenly spread over ``(lo, hi]``."""
    return sorted({max(lo + 1, round(lo + (hi - lo) * (i + 1) / count)) for i in range(count)})


def prefill_grid(max_tokens: int = PREFILL_SEGMENT_ENDS[-1]) -> Iterator[tuple[int, int, int]]:
    """(batch size, new tokens, context tokens) points covering every prefill segment."""
    previous = 0
    for end in PREFILL_SEGMENT_ENDS:
        if previous >= max_tokens:
            break
        for tokens in _spread(previous, min(end, max_tokens), 4):
            for batch in _PREFILL_BATCH_SIZES:
                if batch <= tokens:
                    for context in _PREFILL_CONTEXTS:
                        yield batch, tokens, context
        previous = end


def decode_grid(capture_sizes: Sequence[int], kv_capacity_tokens: int) -> Iterator[tuple[int, int]]:
    """(batch size, KV tokens) points covering every decode segment (between capture sizes)."""
    previous = 0
    for end in capture_sizes:
        for batch in _spread(previous, end, 2):
            for per_request in _DECODE_KV_PER_REQUEST:
                yield batch, min(batch * per_request, max(kv_capacity_tokens, batch))
        previous = end


def profile_samples(
    model: PerformanceModel,
    clocks_mhz: Sequence[int],
    phase: Phase,
    on_point: Callable[[], None] | None = None,
) -> list[Sample]:
    """Cost of every grid point of ``phase`` at every clock, from the simulated GPU."""
    samples: list[Sample] = []
    if phase is Phase.PREFILL:
        points = [(b, n, c, float(n), prefill_attention_work(n, c, b)) for b, n, c in prefill_grid()]
    else:
        points = [
            (b, b, kv, float(b), float(kv))
            for b, kv in decode_grid(model.capture_sizes, model.kv_capacity_tokens)
        ]
    for batch, new_tokens, context, x0, x1 in points:
        for clock in clocks_mhz:
            cost = model.cost(phase, batch, new_tokens, context, clock)
            samples.append(Sample(x0, x1, clock, cost.latency_s, cost.energy_j))
        if on_point is not None:
            on_point()
    return samples


def grid_size(model: PerformanceModel) -> int:
    """Number of grid points (each profiled at every clock) of both phases, for progress bars."""
    return sum(1 for _ in prefill_grid()) + sum(
        1 for _ in decode_grid(model.capture_sizes, model.kv_capacity_tokens)
    )


def profile_from_model(
    model: PerformanceModel, clocks_mhz: Sequence[int], on_point: Callable[[], None] | None = None
) -> Profile:
    """A predictor profile of ``model`` at ``clocks_mhz`` (decode segments = the model's capture sizes)."""
    clocks = tuple(sorted(set(int(c) for c in clocks_mhz)))
    key = (model.name, clocks)
    if on_point is None and key in _PROFILE_CACHE:
        return _PROFILE_CACHE[key]
    phases = {
        Phase.PREFILL: fit_phase(
            profile_samples(model, clocks, Phase.PREFILL, on_point), clocks, PREFILL_SEGMENT_ENDS
        ),
        Phase.DECODE: fit_phase(
            profile_samples(model, clocks, Phase.DECODE, on_point), clocks, model.capture_sizes
        ),
    }
    meta = {"gpu": model.gpu.name, "model": model.model.name, "tp": model.tp}
    profile = Profile(clocks, phases, f"simulated {model.name}", meta)
    _PROFILE_CACHE[key] = profile
    return profile


def seeded_predictors(
    profile: Profile, phase: Phase, clocks_mhz: Sequence[int], settings: AdaptationSettings | None = None
) -> tuple[LatencyPredictor, EnergyPredictor]:
    """Latency and energy predictors of ``phase`` seeded from ``profile`` on ``clocks_mhz``."""
    return (
        LatencyPredictor.from_profile(profile, phase, clocks_mhz, settings),
        EnergyPredictor.from_profile(profile, phase, clocks_mhz, settings),
    )


def check_clock_options(policy: PolicyConfig) -> None:
    """Raise :class:`~voltana.core.config.ConfigError` (one line) for a bad knob of ``policy.clock`` in
    ``policy.options``: EcoFreq's, or the static clock's (whose bad clock would otherwise fail in every
    decision and fall back to the max clock). Other policies' knobs are not read, so not checked."""
    if policy.clock == ECOFREQ_POLICY:
        EcoFreqOptions.from_mapping(policy.options)
    elif policy.clock == "static":
        StaticClockOptions.from_mapping(policy.options)


def build_controller(
    config: VoltanaConfig,
    phase: Phase,
    instance_id: str,
    model: PerformanceModel | None,
    hook: Any,
    supported_clocks_mhz: Sequence[int] | None = None,
    learn: frozenset[ModelKind] = ALL_MODELS,
) -> FrequencyController:
    """A controller for one instance: clocks from config (within the device's or model's supported clocks),
    predictors seeded from ``config.engine.predictor_profile`` or else from the simulated ``model``, whose
    idle power becomes ``policy.options.idle_power_w`` unless config sets it.

    ``learn``: see ``FrequencyController.learns``. Raises ValueError (or ``ProfileError``) with one line
    when neither seed is available or clocks are bad.
    """
    supported: Sequence[int] | None = supported_clocks_mhz
    if supported is None and model is not None:
        supported = model.supported_clocks_mhz
    profile: Profile | None = None
    if config.engine.predictor_profile:
        profile = load_profile(config.engine.predictor_profile)
        if supported is None:
            supported = profile.clocks_mhz
    if supported is None:
        raise ValueError(
            "no supported clocks: give the device's clocks, a simulated GPU or a predictor profile"
        )
    clocks = resolve_allowed_clocks(config.clocks, supported)
    check_clock_options(config.policy)  # a bad knob is a one-line error now, not later
    if profile is None:
        if model is None:
            raise ValueError("no predictor seed: set engine.predictor_profile (see `voltana profile`)")
        profile = profile_from_model(model, clocks)
    predictor, energy = seeded_predictors(profile, phase, clocks)
    options = dict(config.policy.options)
    if model is not None:  # EcoFreq's objective is energy above idle: the simulated GPU knows its idle power
        options.setdefault("idle_power_w", float(model.idle_power_w()))
    return FrequencyController(
        instance_id=instance_id,
        phase=phase,
        allowed_clocks_mhz=clocks,
        slo=Slo(config.slo.ttft_s, config.slo.itl_s),
        policy=config.policy.clock,
        hook=hook,
        predictor=predictor,
        power_model=energy,
        options=options,
        safety_margin=config.policy.safety_margin,
        learn=learn,
    )


def default_profile_clocks(model: PerformanceModel, levels: int = 12) -> tuple[int, ...]:
    """Clocks ``voltana profile`` fits by default: ``levels`` spread over the supported range."""
    supported = model.supported_clocks_mhz
    count = min(levels, len(supported))
    if count == 1:
        return (supported[-1],)
    return tuple(sorted({supported[round(i * (len(supported) - 1) / (count - 1))] for i in range(count)}))
