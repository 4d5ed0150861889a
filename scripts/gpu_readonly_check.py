"""Read-only NVIDIA GPU check: counter refresh periods and the cost of each NVML read voltana makes.

Only NVML *read* calls are made (init, handle, name, driver version, energy, power, SM clock): no clock is
locked and no setting is changed. Prints a Markdown table; ``--json`` prints the numbers instead.
Run through ``scripts/gpu_readonly_check.sh``, which also runs ``voltana doctor`` (without ``--try-lock``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def refresh_period_ms(read: Callable[[], int], seconds: float) -> dict[str, Any]:
    """Poll ``read`` for ``seconds``; the intervals between value changes are the refresh period."""
    changes: list[float] = []
    last = read()
    reads = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = read()
        reads += 1
        if value != last:
            changes.append(time.monotonic())
            last = value
    intervals = [(b - a) * 1e3 for a, b in itertools.pairwise(changes)]
    if not intervals:
        return {"changes": len(changes), "reads": reads, "median_ms": None, "p10_ms": None, "p90_ms": None}
    return {
        "changes": len(changes),
        "reads": reads,
        "median_ms": statistics.median(intervals),
        "p10_ms": _percentile(intervals, 0.1),
        "p90_ms": _percentile(intervals, 0.9),
    }


def call_cost_us(call: Callable[[], object], repeats: int) -> dict[str, float]:
    """Wall time of one ``call`` (µs): median and p90 over ``repeats`` calls."""
    costs = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        costs.append((time.perf_counter() - start) * 1e6)
    return {"median_us": statistics.median(costs), "p90_us": _percentile(costs, 0.9)}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def measure(device_index: int, seconds: float, repeats: int) -> dict[str, Any]:
    """All the read-only measurements for one GPU."""
    import pynvml  # noqa: PLC0415 - the optional [nvidia] extra, needed only on a GPU machine

    pynvml.nvmlInit()
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        if not 0 <= device_index < count:
            raise ValueError(f"--device {device_index}: NVML sees {count} GPU(s), indices 0..{count - 1}")
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        result: dict[str, Any] = {
            "gpu": _text(pynvml.nvmlDeviceGetName(handle)),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
            "device_index": device_index,
            "sm_clock_mhz": int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        }
        reads: dict[str, Callable[[], Any]] = {
            "nvmlDeviceGetTotalEnergyConsumption": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
            "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
            "nvmlDeviceGetClockInfo(SM)": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        }
        result["cost"] = {}
        for name, call in reads.items():
            try:
                result["cost"][name] = call_cost_us(call, repeats)
            except pynvml.NVMLError as exc:
                result["cost"][name] = {"error": str(exc)}
        for key, name in (
            ("energy_refresh", "nvmlDeviceGetTotalEnergyConsumption"),
            ("power_refresh", "nvmlDeviceGetPowerUsage"),
        ):
            try:
                result[key] = refresh_period_ms(reads[name], seconds)
            except pynvml.NVMLError as exc:
                result[key] = {"error": str(exc)}
        return result
    finally:
        pynvml.nvmlShutdown()


def _refresh_cell(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"unavailable: {row['error']}"
    if row["median_ms"] is None:
        return f"no change seen in {row['reads']} reads (idle GPU or a frozen counter)"
    return (
        f"{row['median_ms']:.1f} ms median (p10 {row['p10_ms']:.1f}, p90 {row['p90_ms']:.1f}; "
        f"{row['changes']} changes in {row['reads']} reads)"
    )


def _cost_cell(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"unavailable: {row['error']}"
    return f"{row['median_us']:.1f} µs median (p90 {row['p90_us']:.1f} µs)"


def table(result: dict[str, Any]) -> str:
    """The Markdown table for the README."""
    rows = [
        ("GPU", f"{result['device_index']}: {result['gpu']} (driver {result['driver']})"),
        ("SM clock now", f"{result['sm_clock_mhz']} MHz"),
        ("energy counter refresh period", _refresh_cell(result["energy_refresh"])),
        ("power reading refresh period", _refresh_cell(result["power_refresh"])),
    ]
    rows += [(f"cost of {name}", _cost_cell(row)) for name, row in result["cost"].items()]
    lines = ["| check | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, help="NVML device index (default 0)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to poll each counter (s)")
    parser.add_argument("--repeats", type=int, default=2000, help="calls timed per NVML read")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1:
        parser.error("--seconds must be > 0 and --repeats >= 1 (a median needs at least one measurement)")
    try:
        result = measure(args.device, args.seconds, args.repeats)
    except ImportError:
        print("error: pynvml is not installed: pip install 'voltana[nvidia]'", file=sys.stderr)
        return 2
    except ValueError as exc:  # no such device
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an NVML error: no driver
        print(f"error: NVML: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
