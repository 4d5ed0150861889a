"""The profiling API (:mod:`voltana.profiler.engine_api`) for engines whose HTTP server and scheduler are
different processes (vLLM: API server + EngineCore; SGLang: HTTP server + scheduler).

They talk through a small directory:

- ``pin.json``: the clock pin, written by the HTTP process on ``POST /voltana/clock`` (atomically), removed
  on unpin. The engine reads it every :data:`POLL_INTERVAL_S` on a daemon thread and pins its runtime
  (:meth:`InstanceRuntime.pin_clock`, so the pin goes through the clock applier), and unpins as soon as the
  lease lapses: a profiler that dies leaves the clock to the policy within one lease.
- ``ceiling.json``: the power-budget ceiling (:mod:`voltana.profiler.ceiling_api`), written by the HTTP
  process on ``POST /voltana/ceiling``; the engine's thread holds its controllers under it while its lease is
  live and lifts it when the lease lapses (the router stopped renewing it).
- ``<engine>/control.json``: the engine's allowed clocks, the pin it took up and the clock it read back.
- ``<engine>/iterations.jsonl`` and ``iterations.1.jsonl``: the iteration ring. The hot path only appends
  the record to a deque; the thread writes new lines, and rotates when a file holds half the capacity, so
  at most ``capacity`` records are ever on disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from voltana.adapters.state_payload import write_json_atomically
from voltana.core.config import ConfigError, load_config
from voltana.core.types import IterationRecord
from voltana.profiler.engine_api import ClockPin, IterationPage, page_from, record_json

log = logging.getLogger("voltana.engine_control")

POLL_INTERVAL_S = 0.05
HEARTBEAT_S = 1.0
CONTROL_STALE_S = 10.0
PIN_FILE = "pin.json"
CEILING_FILE = "ceiling.json"
CONTROL_FILE = "control.json"
RECORDS_FILE = "iterations.jsonl"
OLD_RECORDS_FILE = "iterations.1.jsonl"


def configured_clock_token() -> str | None:
    """``engine.clock_token`` of this process's config (None when unset or the config is invalid)."""

    try:
        secret = load_config().config.engine.clock_token
    except ConfigError:
        return None
    return secret.get_secret_value() if secret else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class EngineControlChannel:
    """Engine side: takes up pins for ``runtime`` and publishes its iterations (a daemon thread)."""

    def __init__(self, runtime: Any, pin_dir: Path, engine_dir: Path, capacity: int) -> None:
        self.runtime = runtime
        self.pin_path = pin_dir / PIN_FILE
        self.ceiling_path = pin_dir / CEILING_FILE
        self.engine_dir = engine_dir
        self.capacity = max(2, capacity)
        engine_dir.mkdir(parents=True, exist_ok=True)
        for name in (RECORDS_FILE, OLD_RECORDS_FILE):
            (engine_dir / name).unlink(missing_ok=True)
        self._pending: deque[IterationRecord] = deque(maxlen=self.capacity)
        self._seq = 0
        self._lines_in_file = 0
        self._last_control = ""
        self._last_control_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="voltana-engine-control", daemon=True)
        runtime.add_iteration_observer(self._pending.append)

    def start(self) -> EngineControlChannel:
        """Publish once, then keep polling and publishing in the background."""
        self.tick()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and give the clock back to the policy."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        self.runtime.pin_clock(None)

    def tick(self) -> None:
        """One poll: take up (or drop) the pin, write new records, refresh the control file; never raises."""
        try:
            self._sync_pin()
            self._sync_ceiling()
            self._flush_records()
            self._publish_control()
        except Exception as exc:  # best effort: profiling must never disturb serving
            log.warning("voltana: engine control channel: %s: %s", type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            self.tick()

    def _sync_pin(self) -> None:
        pin = _pin_from(_read_json(self.pin_path))
        wanted = pin.clock_mhz if pin is not None and pin.live() else None
        if wanted != self.runtime.pinned_clock_mhz:
            try:
                self.runtime.pin_clock(wanted)
            except ValueError as exc:
                log.warning("voltana: cannot pin the clock: %s", exc)
                self.runtime.pin_clock(None)
            else:
                if wanted is None:
                    log.info("voltana: clock unpinned (lease ended); the policy decides again")
                else:
                    log.info(
                        "voltana: clock pinned at %d MHz by lease %s", wanted, pin.lease_id if pin else ""
                    )

    def _sync_ceiling(self) -> None:
        lease = _pin_from(_read_json(self.ceiling_path))
        wanted = lease.clock_mhz if lease is not None and lease.live() else None
        if wanted != self.runtime.clock_ceiling_mhz:
            self.runtime.set_clock_ceiling(wanted)
            log.info("voltana: power-budget clock ceiling %s", f"{wanted} MHz" if wanted else "lifted")

    def _flush_records(self) -> None:
        if not self._pending:
            return
        lines = []
        while self._pending:
            self._seq += 1
            lines.append(json.dumps(record_json(self._pending.popleft(), self._seq), separators=(",", ":")))
        current = self.engine_dir / RECORDS_FILE
        half = max(1, self.capacity // 2)
        while lines:
            room = half - self._lines_in_file
            if room <= 0:
                os.replace(current, self.engine_dir / OLD_RECORDS_FILE)
                self._lines_in_file = 0
                continue
            chunk, lines = lines[:room], lines[room:]
            with current.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(chunk) + "\n")
            self._lines_in_file += len(chunk)

    def _publish_control(self) -> None:
        status = self.runtime.status()
        doc = {
            "allowed_clocks_mhz": list(self.runtime.allowed_clocks_mhz),
            "problem": f"monitor-only: {status.monitor_only_reason}" if status.monitor_only else "",
            "engine_pinned_mhz": self.runtime.pinned_clock_mhz,
            "clock_ceiling_mhz": self.runtime.clock_ceiling_mhz,
            "applied_clock_mhz": status.sm_clock_mhz,
            "last_seq": self._seq,
            "capacity": self.capacity,
        }
        text = json.dumps(doc, sort_keys=True)
        now = time.time()
        if text != self._last_control or now - self._last_control_s >= HEARTBEAT_S:
            write_json_atomically(self.engine_dir / CONTROL_FILE, {**doc, "updated_at_s": now})
            self._last_control, self._last_control_s = text, now


def _pin_from(doc: dict[str, Any] | None) -> ClockPin | None:
    try:
        return ClockPin.from_json(doc) if doc else None
    except (KeyError, TypeError, ValueError):
        return None


class FileControlBackend:
    """HTTP side: a :class:`~voltana.profiler.engine_api.ControlBackend` (and the ceiling's
    :class:`~voltana.profiler.ceiling_api.CeilingBackend`) over the channel's directory."""

    def __init__(self, pin_dir: Path, engine_dir: Path) -> None:
        self.pin_path = pin_dir / PIN_FILE
        self.ceiling_path = pin_dir / CEILING_FILE
        self.engine_dir = engine_dir

    def current_ceiling(self) -> ClockPin | None:
        return _pin_from(_read_json(self.ceiling_path))

    def set_ceiling(self, lease: ClockPin | None) -> None:
        if lease is None:
            self.ceiling_path.unlink(missing_ok=True)
        else:
            self.ceiling_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.ceiling_path, lease.to_json())

    def _control(self) -> dict[str, Any] | None:
        doc = _read_json(self.engine_dir / CONTROL_FILE)
        if doc is None or time.time() - float(doc.get("updated_at_s", 0.0)) > CONTROL_STALE_S:
            return None
        return doc

    def allowed_clocks_mhz(self) -> tuple[int, ...]:
        doc = self._control()
        return tuple(int(c) for c in doc.get("allowed_clocks_mhz", ())) if doc else ()

    def control_problem(self) -> str:
        doc = self._control()
        if doc is None:
            return "the engine has not published its voltana state yet (starting, or voltana is off)"
        return str(doc.get("problem") or "")

    def current_pin(self) -> ClockPin | None:
        return _pin_from(_read_json(self.pin_path))

    def set_pin(self, pin: ClockPin | None) -> None:
        if pin is None:
            self.pin_path.unlink(missing_ok=True)
        else:
            self.pin_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(self.pin_path, pin.to_json())

    def applied_clock_mhz(self) -> int | None:
        doc = self._control()
        value = doc.get("applied_clock_mhz") if doc else None
        return int(value) if value is not None else None

    def engine_pinned_mhz(self) -> int | None:
        doc = self._control()
        value = doc.get("engine_pinned_mhz") if doc else None
        return int(value) if value is not None else None

    def iterations_since(self, since: int, limit: int) -> IterationPage:
        doc = self._control() or {}
        by_seq: dict[int, dict[str, Any]] = {}
        for name in (RECORDS_FILE, OLD_RECORDS_FILE):  # current first: a rotation in between loses nothing
            try:
                text = (self.engine_dir / name).read_text(encoding="utf-8")
            except OSError:
                continue
            for line in text.splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # being written right now
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                by_seq[int(item["seq"])] = item
        items = [by_seq[s] for s in sorted(by_seq)]
        return page_from(items, since, limit, int(doc.get("capacity", len(items)) or len(items)))
