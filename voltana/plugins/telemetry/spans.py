"""What a finished request phase says about itself: span attributes and metric attributes (pure functions).

TTFT is a prefill quantity (arrival to first token on the prefill instance); ITL is a decode quantity (mean
time per output token after the first, on the decode instance). A phase reports only its own.
"""

from __future__ import annotations

from typing import Any

from voltana.core.types import Phase, RequestRecord, Slo
from voltana.plugins.telemetry import names


def observed_ttft_s(record: RequestRecord) -> float | None:
    """Time to first token of a prefill record (s); None for decode or without a first token."""
    if record.phase is not Phase.PREFILL or record.first_token_time_s is None:
        return None
    return max(record.first_token_time_s - record.arrival_time_s, 0.0)


def observed_itl_s(record: RequestRecord) -> float | None:
    """Mean inter-token latency of a decode record (s): (finish - first token) / (output tokens - 1)."""
    if record.phase is not Phase.DECODE or record.first_token_time_s is None or record.output_tokens < 2:
        return None
    return max(record.finish_time_s - record.first_token_time_s, 0.0) / (record.output_tokens - 1)


def request_metric_attributes(record: RequestRecord) -> dict[str, Any]:
    """Low-cardinality attributes of the request metrics (no request id)."""
    attributes: dict[str, Any] = {
        names.GEN_AI_OPERATION_NAME: names.OPERATION_TEXT_COMPLETION,
        names.PHASE: record.phase.value,
        names.INSTANCE_ID: record.instance_id,
        names.ENERGY_SOURCE: record.energy_source.value,
    }
    if record.model:
        attributes[names.GEN_AI_REQUEST_MODEL] = record.model
    return attributes


def request_span_attributes(record: RequestRecord, slo: Slo) -> dict[str, Any]:
    """The attributes of a request phase's span: GenAI usage, joules, clock residency, latency vs SLO.

    Invariant: ``voltana.energy.joules == voltana.energy.<phase>.joules == record.energy_j``; clock
    residency is two parallel arrays sorted by clock (MHz, s).
    """
    attributes = request_metric_attributes(record)
    attributes.update(
        {
            names.REQUEST_ID: record.request_id,
            names.GEN_AI_USAGE_INPUT_TOKENS: record.input_tokens,
            names.GEN_AI_USAGE_OUTPUT_TOKENS: record.output_tokens,
            names.ENERGY_J: record.energy_j,
            names.phase_energy_attribute(record.phase.value): record.energy_j,
        }
    )
    if record.phase is Phase.DECODE and record.output_tokens > 0:
        attributes[names.ENERGY_PER_OUTPUT_TOKEN_J] = record.energy_j / record.output_tokens
    residency = sorted(record.clock_residency_s.items())
    if residency:
        attributes[names.CLOCK_RESIDENCY_MHZ] = [int(mhz) for mhz, _ in residency]
        attributes[names.CLOCK_RESIDENCY_S] = [float(s) for _, s in residency]
        total_s = sum(s for _, s in residency)
        if total_s > 0:
            attributes[names.CLOCK_MEAN_MHZ] = sum(mhz * s for mhz, s in residency) / total_s
    ttft_s = observed_ttft_s(record)
    if ttft_s is not None:
        attributes[names.TTFT_OBSERVED_S] = ttft_s
        attributes[names.TTFT_SLO_S] = slo.ttft_s
        attributes[names.TTFT_SLO_MET] = ttft_s <= slo.ttft_s
    itl_s = observed_itl_s(record)
    if itl_s is not None:
        attributes[names.ITL_OBSERVED_S] = itl_s
        attributes[names.ITL_SLO_S] = slo.itl_s
        attributes[names.ITL_SLO_MET] = itl_s <= slo.itl_s
    return attributes
