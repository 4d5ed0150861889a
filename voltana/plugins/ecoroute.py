"""EcoRoute: boundary- and clock-aware decode routing, registered as the routing policies ``ecoroute`` and
``ecoroute-paper``.

``ecoroute-paper`` follows VoltanaLLM (arXiv 2509.04827, released code tag voltanallm-v0.1): batch-size
boundaries every 128 requests (one GEMM tile); while every instance is below one tile, the lowest current
clock then the fewest requests wins; otherwise prefer instances where one more request crosses no boundary,
then (clock-aware) those that need no clock step-up, filling faster instances first.

``ecoroute`` (ours) is first capacity-aware: a request never goes where it would wait for admission (no
free batch slot behind the requests already waiting or in transfer: ``InstanceState.max_running``; or its
prompt + expected output would not fit the free KV cache: ``kv_committed_tokens``, ``kv_capacity_tokens``)
while another instance can admit it at once; when every instance makes it wait, it goes where the fewest
requests are ahead of it. Among the instances that admit it, the energy choice below runs only over those
with headroom (at most ``(1 - ecoroute_headroom) x max_running`` requests after adding it, default half the
cap: packing an instance up to its cap makes its clock carry a load at the edge of what it can, and turns
the next burst into admission waits); when none has headroom, an instance where one more request crosses no
capture-size or 128-request tile boundary first (crossing one pads the batch a whole step), then
join-shortest-queue by expected drain time (:func:`drain_key`: the least predicted ITL with the request at
the max clock, else the fewest requests).
Within the energy choice, instances that could not meet the ITL even at the highest clock come last.
Boundaries are the engine's CUDA-graph capture sizes (``InstanceState.capture_sizes``: a decode batch is
padded up to the next one, so a request that fits in the padding costs almost nothing).
With an energy model (``ctx.power_model``) the key is the predicted *marginal energy* of one more token
iteration with the request: ``E(n+1, clock needed after) - E(n, clock needed now)`` on a busy instance,
``E(1)`` on an idle one, each less idle power x iteration time (``options["idle_power_w"]``: an idle GPU
draws it anyway). Without an
energy model the key is the lowest SLO-feasible clock after adding the request. Ties: no boundary crossing,
then packing onto the busier instance (consolidation: decode is memory-bound, so one batch of 2n reads the
weights once where two batches of n read them twice); ``options["ecoroute_fill"] = "spread"`` fills the
least-loaded instance instead; ``options["ecoroute_energy"] = False`` ignores the energy model.

Clock awareness needs ``ctx.predictor`` (a latency model or a mapping instance id -> model) and
``ctx.options["allowed_clocks_mhz"]`` (ascending); without them both variants fall back to boundaries
and load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from voltana.core.contexts import LATENCY_MODEL, PolicyInfo, RouteContext
from voltana.core.hookspecs import hookimpl
from voltana.core.types import BatchSnapshot, InstanceState, Phase, RouteRequest, ScheduledRequest
from voltana.plugins.routing import model_for, predictor_for, route_policy_of

ECOROUTE_POLICIES = ("ecoroute", "ecoroute-paper")
DEFAULT_HEADROOM = 0.5
"""Share of an instance's running cap EcoRoute keeps free while another instance has room
(``options["ecoroute_headroom"]``)."""
PAPER_TILE_REQUESTS = 128
"""The paper's routing boundary: one 128-row GEMM tile of decode requests."""


def padded_batch_size(n: int, capture_sizes: Sequence[int], tile: int = PAPER_TILE_REQUESTS) -> int:
    """The batch size the engine actually runs for ``n`` requests: the next capture size, else whole tiles."""
    if n <= 0:
        return 0
    for size in capture_sizes:
        if size >= n:
            return size
    return -(-n // tile) * tile


def crosses_boundary(n: int, capture_sizes: Sequence[int], tile: int = PAPER_TILE_REQUESTS) -> bool:
    """True when going from ``n`` to ``n + 1`` requests grows the padded batch (a latency step)."""
    return padded_batch_size(n + 1, capture_sizes, tile) > padded_batch_size(n, capture_sizes, tile)


def decode_snapshot(batch_size: int, kv_tokens: int) -> BatchSnapshot:
    """A hypothetical decode batch of ``batch_size`` requests reading ``kv_tokens`` KV tokens in total."""
    if batch_size <= 0:
        return BatchSnapshot(Phase.DECODE, (), (), 0.0, 0, 0)
    share, extra = divmod(kv_tokens, batch_size)
    rest = ScheduledRequest("route", 1, share, 0.0)
    first = ScheduledRequest("route", 1, share + extra, 0.0)
    return BatchSnapshot(Phase.DECODE, (first,) + (rest,) * (batch_size - 1), (), 0.0, batch_size, kv_tokens)


def needed_clock_mhz(
    predictor: Any, batch_size: int, kv_tokens: int, clocks_mhz: Sequence[int], budget_s: float
) -> int:
    """Lowest clock whose predicted decode iteration fits ``budget_s``; one past the highest if none."""
    if batch_size <= 0:
        return clocks_mhz[0]
    snapshot = decode_snapshot(batch_size, kv_tokens)
    for clock in clocks_mhz:
        if predictor.predict_latency_s(snapshot, clock) <= budget_s:
            return clock
    return clocks_mhz[-1] + 1


def _clock_needs(state: InstanceState, request: RouteRequest, ctx: RouteContext) -> tuple[int, int] | None:
    """(clock needed now, clock needed with the request) in MHz, or None without predictor or clocks."""
    predictor = predictor_for(ctx, state.instance_id)
    clocks = ctx.options.get("allowed_clocks_mhz")
    if predictor is None or not clocks:
        return None
    budget_s = ctx.slo.itl_s * (1.0 - float(ctx.options.get("safety_margin", 0.1)))
    n = state.num_running + state.num_waiting
    now = needed_clock_mhz(predictor, n, state.kv_tokens, clocks, budget_s)
    after = needed_clock_mhz(predictor, n + 1, state.kv_tokens + request.input_tokens, clocks, budget_s)
    return now, after


def _fits_kv(state: InstanceState, request: RouteRequest) -> bool:
    needed = state.kv_tokens + request.input_tokens + request.max_output_tokens
    return state.kv_capacity_tokens <= 0 or needed <= state.kv_capacity_tokens


def admits_now(state: InstanceState, request: RouteRequest) -> bool:
    """True when ``state`` would run ``request`` at once: a batch slot is free behind the requests already
    waiting or in transfer, and its prompt + expected output fit the KV cache (committed and in use)."""
    return state.can_admit(request.input_tokens + request.max_output_tokens) and _fits_kv(state, request)


def has_headroom(state: InstanceState, headroom: float, pack_limit: int = PAPER_TILE_REQUESTS) -> bool:
    """True when one more request leaves the instance within ``(1 - headroom)`` of its running cap and at
    most ``pack_limit`` requests (one 128-row GEMM tile: beyond it a decode batch is compute-bound at the
    paper's clocks, so consolidating saves little and makes one instance's clock carry the load)."""
    n = state.num_running + state.num_waiting + 1
    if n > pack_limit:
        return False
    return state.max_running <= 0 or n <= (1.0 - headroom) * state.max_running


def requests_ahead(state: InstanceState) -> int:
    """Requests a newcomer would wait behind before a batch slot frees (0 when one is free)."""
    if state.max_running <= 0:
        return state.num_admission_waiting
    return max(0, state.num_running + state.num_waiting + 1 - state.max_running)


def drain_key(state: InstanceState, request: RouteRequest, ctx: RouteContext) -> float:
    """Join-shortest-queue by expected drain time: the predicted ITL (s) of ``state``'s batch with
    ``request`` at the max clock, the pace at which its requests, the newcomer's included, get their tokens
    once the instances are loaded past packing (it counts the requests and the KV each reads); without a
    latency model or clocks, the number of requests."""
    predictor = predictor_for(ctx, state.instance_id)
    clocks = ctx.options.get("allowed_clocks_mhz")
    n = state.num_running + state.num_waiting + 1
    if predictor is None or not clocks:
        return float(n)
    snapshot = decode_snapshot(n, state.kv_tokens + request.input_tokens)
    return float(predictor.predict_latency_s(snapshot, clocks[-1]))


def _clock_of(state: InstanceState) -> int:
    return state.sm_clock_mhz if state.sm_clock_mhz is not None else 0


def choose_ecoroute_paper(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """The paper's rule (see module docstring)."""
    load = {c.instance_id: c.num_running + c.num_waiting for c in candidates}
    if all(n < PAPER_TILE_REQUESTS for n in load.values()):
        return min(candidates, key=lambda c: (_clock_of(c), load[c.instance_id])).instance_id

    def key(c: InstanceState) -> tuple[int, int, int, int]:
        n = load[c.instance_id]
        crosses = n > 0 and n % PAPER_TILE_REQUESTS == 0
        needs = _clock_needs(c, request, ctx)
        step_up = needs is not None and needs[1] > max(needs[0], _clock_of(c))
        return (int(crosses), int(step_up), -_clock_of(c), n)

    return min(candidates, key=key).instance_id


def marginal_energy_j(
    state: InstanceState, request: RouteRequest, ctx: RouteContext, needs: tuple[int, int]
) -> float | None:
    """Predicted extra energy of one decode iteration if ``request`` joins ``state`` (J, above idle power)."""
    if not ctx.options.get("ecoroute_energy", True):
        return None
    energy = model_for(ctx.power_model, state.instance_id)
    latency = predictor_for(ctx, state.instance_id)
    clocks = ctx.options.get("allowed_clocks_mhz")
    if energy is None or latency is None or not clocks:
        return None
    idle_w = float(ctx.options.get("idle_power_w", 0.0))
    top = clocks[-1]

    def above_idle_j(batch_size: int, kv_tokens: int, clock_mhz: int) -> float:
        snapshot = decode_snapshot(batch_size, kv_tokens)
        clock = min(clock_mhz, top)
        joules = float(energy.predict_energy_j(snapshot, clock))
        return joules - idle_w * float(latency.predict_latency_s(snapshot, clock))

    n = state.num_running + state.num_waiting
    after = above_idle_j(n + 1, state.kv_tokens + request.input_tokens, needs[1])
    return after if n == 0 else after - above_idle_j(n, state.kv_tokens, needs[0])


def choose_ecoroute(request: RouteRequest, candidates: list[InstanceState], ctx: RouteContext) -> str:
    """Ours: admitted at once (with headroom first), then least marginal energy (else lowest clock needed)
    keeping the ITL, then boundaries, then fill (see module docstring)."""
    spread = ctx.options.get("ecoroute_fill", "pack") == "spread"
    admitting = [c for c in candidates if admits_now(c, request)]
    if not admitting:
        return min(
            candidates,
            key=lambda c: (requests_ahead(c), c.kv_committed_tokens + c.kv_tokens, c.instance_id),
        ).instance_id
    headroom = float(ctx.options.get("ecoroute_headroom", DEFAULT_HEADROOM))
    pack_limit = int(ctx.options.get("ecoroute_pack_limit", PAPER_TILE_REQUESTS))
    fitting = [c for c in admitting if has_headroom(c, headroom, pack_limit)]
    if not fitting:  # every instance is past its headroom: balance, so none runs into its cap

        def balance(c: InstanceState) -> tuple[bool, float, str]:
            n = c.num_running + c.num_waiting
            return (crosses_boundary(n, c.capture_sizes), drain_key(c, request, ctx), c.instance_id)

        return min(admitting, key=balance).instance_id

    def key(c: InstanceState) -> tuple[bool, float, int, int, str]:
        n = c.num_running + c.num_waiting
        needs = _clock_needs(c, request, ctx)
        infeasible = False
        cost = 0.0
        if needs is not None:
            clocks = ctx.options["allowed_clocks_mhz"]
            infeasible = needs[1] > clocks[-1]
            marginal = marginal_energy_j(c, request, ctx, needs)
            cost = float(needs[1]) if marginal is None else marginal
        crosses = crosses_boundary(n, c.capture_sizes)
        return (infeasible, cost, int(crosses), n if spread else -n, c.instance_id)

    return min(fitting, key=key).instance_id


@hookimpl
def voltana_register_policies(register: Callable[[PolicyInfo], None]) -> None:
    register(
        PolicyInfo(
            "route",
            "ecoroute",
            "decode: admitted at once first, then least marginal energy, capture-size aware, packs load",
            route_policy_of(choose_ecoroute),
        )
    )
    register(
        PolicyInfo(
            "route",
            "ecoroute-paper",
            "decode: VoltanaLLM's 128-tile, clock-aware routing",
            route_policy_of(choose_ecoroute_paper),
            reads_models=LATENCY_MODEL,
        )
    )
