"""Telemetry names: OpenTelemetry semantic conventions where one exists, else the ``voltana.*`` namespace.

GenAI conventions (status Development): https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/
Hardware conventions: https://opentelemetry.io/docs/specs/semconv/hardware/common/ (``hw.energy`` J counter,
``hw.power`` W gauge, attributes ``hw.id`` and ``hw.type``). No convention covers energy per request: those
attributes live under ``voltana.*``.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions ---------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
OPERATION_TEXT_COMPLETION: Final = "text_completion"
"""Inside the engine every request is a completion of a token prompt (chat templates are applied upstream)."""

TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN: Final = "gen_ai.server.time_per_output_token"
REQUEST_DURATION: Final = "gen_ai.server.request.duration"

# Bucket boundaries (s) the GenAI metric conventions specify as ExplicitBucketBoundaries advice.
TTFT_BUCKETS_S: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS_S: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# --- Hardware semantic conventions ------------------------------------------------------------------------
HW_ENERGY: Final = "hw.energy"
HW_POWER: Final = "hw.power"
HW_ID: Final = "hw.id"
HW_TYPE: Final = "hw.type"
HW_TYPE_GPU: Final = "gpu"

# --- voltana attributes -----------------------------------------------------------------------------------
REQUEST_ID: Final = "voltana.request.id"
PHASE: Final = "voltana.phase"
INSTANCE_ID: Final = "voltana.instance.id"
ENERGY_J: Final = "voltana.energy.joules"
ENERGY_SOURCE: Final = "voltana.energy.source"
"""``measured`` (GPU counter), ``power-integrated``, ``simulated`` or ``unknown``: on every span, metric."""
ENERGY_PER_OUTPUT_TOKEN_J: Final = "voltana.energy.joules_per_output_token"
CLOCK_RESIDENCY_MHZ: Final = "voltana.clock.residency.mhz"
CLOCK_RESIDENCY_S: Final = "voltana.clock.residency.seconds"
CLOCK_MEAN_MHZ: Final = "voltana.clock.mean_mhz"
TTFT_OBSERVED_S: Final = "voltana.ttft.observed_s"
TTFT_SLO_S: Final = "voltana.ttft.slo_s"
TTFT_SLO_MET: Final = "voltana.ttft.slo_met"
ITL_OBSERVED_S: Final = "voltana.itl.observed_s"
ITL_SLO_S: Final = "voltana.itl.slo_s"
ITL_SLO_MET: Final = "voltana.itl.slo_met"
DECISION_REASON: Final = "voltana.decision.reason"
POLICY: Final = "voltana.policy"
CLOCK_MHZ: Final = "voltana.clock.mhz"
SLO_NAME: Final = "voltana.slo.name"
SLO_MET: Final = "voltana.slo.met"
FIRST_TOKEN_EVENT: Final = "gen_ai.first_token"


def phase_energy_attribute(phase: str) -> str:
    """The per-phase joules attribute of a request span: ``voltana.energy.prefill.joules`` (or decode)."""
    return f"voltana.energy.{phase}.joules"


# --- voltana metrics --------------------------------------------------------------------------------------
SM_CLOCK: Final = "voltana.gpu.sm_clock"
CLOCK_CHANGES: Final = "voltana.clock.changes"
CLOCK_RESIDENCY: Final = "voltana.clock.residency"
DECISIONS: Final = "voltana.clock.decisions"
PREDICTOR_ABS_ERROR: Final = "voltana.predictor.abs_error"
PREDICTOR_PREDICTIONS: Final = "voltana.predictor.predictions"
PREDICTOR_RELATIVE_ERROR: Final = "voltana.predictor.relative_error"
SLO_REQUESTS: Final = "voltana.slo.requests"
REQUEST_ENERGY: Final = "voltana.request.energy"
ITERATIONS: Final = "voltana.iterations"

# Energy per request phase (J): geometric from 0.1 J to ~13 kJ (a long decode on a TP group at ~1 kW).
REQUEST_ENERGY_BUCKETS_J: Final = tuple(round(0.1 * 2**k, 4) for k in range(18))
