"""The cluster power budget on Ray Serve: one ``Budget`` deployment steps the coordinator for the whole app.

:class:`BudgetDeployment` (one replica, added by ``build_pd_app`` when ``cluster.power_budget_w`` is set)
keeps the latest state every prefill and decode replica reported to it and, every ``cluster.budget_period_s``,
runs the same planner as ``voltana router`` (:class:`voltana.router.power_budget.BudgetPlanner`: demands from
the instances' load, clock and measured power, then :class:`voltana.core.power_budget.BudgetCoordinator`).

**The replicas poll**: each time Ray asks a replica for its routing stats
(``request_routing_stats_period_s``), the replica also sends its state to this deployment through its handle
(:meth:`BudgetDeployment.report`) and sets the ceiling it gets back under a lease of
:data:`~voltana.router.power_budget.LEASE_PERIODS` periods (``EmulatedPDReplica.set_clock_ceiling``): a
replica that loses the coordinator goes back to its policy's clocks within one lease. A replica that stops
reporting for a lease drops out of the allocation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase
from voltana.integrations.ray_serve.stats import ReplicaStats, instance_state
from voltana.router.power_budget import BudgetObservation, BudgetPlanner, budget_predictors

log = logging.getLogger("voltana.ray_serve")


class BudgetDeployment:
    """The app's power-budget coordinator (see the module docstring). ``config``: the voltana config dict
    (``cluster.power_budget_w`` set). Raises ``ConfigError`` without predictors for power."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        voltana = VoltanaConfig(**dict(config))
        self.planner = BudgetPlanner(budget_predictors(voltana), voltana.cluster)
        self.stale_after_s = self.planner.lease_s
        self._reports: dict[str, tuple[BudgetObservation, float]] = {}
        self._ceilings: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def report(self, state: Mapping[str, Any], pending_prompt_tokens: int = 0) -> dict[str, Any]:
        """One replica's ``/voltana/state``-shaped state (and its prompt tokens not prefilled yet); answers
        ``{"ceiling_mhz": MHz or None (none allocated yet), "lease_s": s}``."""
        if self._task is None:  # the replica's event loop is running here, not in __init__
            self._task = asyncio.get_running_loop().create_task(self._run())
        stats = ReplicaStats.from_state(state)
        now_s = time.time()
        view = instance_state(stats.instance_id, Phase(stats.role), stats, 0, now_s, self.stale_after_s)
        if view.phase is Phase.PREFILL:
            view = replace(view, pending_prompt_tokens=max(0, pending_prompt_tokens))
        self._reports[stats.instance_id] = (
            BudgetObservation(view, stats.energy_j, stats.updated_at_s),
            now_s,
        )
        return {"ceiling_mhz": self._ceilings.get(stats.instance_id), "lease_s": self.planner.lease_s}

    def step(self) -> None:
        """One period: allocate among the replicas that reported within a lease."""
        now_s = time.time()
        self._reports = {k: v for k, v in self._reports.items() if now_s - v[1] <= self.stale_after_s}
        allocation = self.planner.plan([seen for seen, _ in self._reports.values()])
        self._ceilings = dict(allocation.ceilings_mhz)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.planner.period_s)
            try:
                self.step()
            except Exception:
                log.exception("power budget step failed")

    async def status(self) -> dict[str, Any]:
        """The planner's status (budget, last allocation, measured power) and the reporting replicas."""
        return {**self.planner.status(), "replicas": sorted(self._reports)}
