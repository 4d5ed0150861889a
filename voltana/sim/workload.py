"""Workloads for the simulator: request arrivals with prompt and output lengths, from files or generators.

File formats (detected by extension and header):

- Azure LLM inference trace CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (timestamps as
  ``YYYY-MM-DD HH:MM:SS.fffffff``; Patel et al., "Splitwise", ISCA 2024).
- Generic CSV with header ``arrival_s,input_tokens,output_tokens``.
- JSON Lines with objects ``{"arrival_s": ..., "input_tokens": ..., "output_tokens": ...}``.

Arrivals are made relative to the first request (the first arrives at 0 s) and sorted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voltana.core.errors import VoltanaError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


class WorkloadError(VoltanaError, ValueError):
    """A workload file or parameter the user must fix; ``str()`` is one line."""


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival: ``arrival_s`` (s, first at 0), ``input_tokens``/``output_tokens`` >= 1."""

    name: str
    arrival_s: NDArray[np.float64]
    input_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if not (len(self.input_tokens) == n == len(self.output_tokens)):
            raise WorkloadError(f"workload {self.name}: columns have different lengths")
        if n == 0:
            raise WorkloadError(f"workload {self.name}: no requests")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival (s)."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate (requests/s); for a single request, 1/s by convention."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else 1.0

    def scaled(self, factor: float) -> Workload:
        """The same requests replayed at ``factor`` x the arrival rate (inter-arrival times divided by it)."""
        if not factor > 0:
            raise WorkloadError(f"rate scale must be positive, got {factor}")
        return Workload(
            f"{self.name} x{factor:g}", self.arrival_s / factor, self.input_tokens, self.output_tokens
        )

    def at_rate(self, rate_rps: float) -> Workload:
        """Rescaled so that its mean arrival rate is ``rate_rps`` (requests/s)."""
        if not rate_rps > 0:
            raise WorkloadError(f"request rate must be positive, got {rate_rps}")
        return self.scaled(rate_rps / self.rate_rps)

    def truncated(self, duration_s: float) -> Workload:
        """Only the requests arriving within the first ``duration_s`` seconds (at least one)."""
        keep = max(1, int(np.searchsorted(self.arrival_s, duration_s, side="right")))
        return Workload(self.name, self.arrival_s[:keep], self.input_tokens[:keep], self.output_tokens[:keep])


def from_columns(
    name: str, arrival_s: list[float], input_tokens: list[int], output_tokens: list[int]
) -> Workload:
    """A workload from raw columns: validated, sorted by arrival and shifted to start at 0 s."""
    arrivals = np.asarray(arrival_s, dtype=np.float64)
    inputs = np.asarray(input_tokens, dtype=np.int64)
    outputs = np.asarray(output_tokens, dtype=np.int64)
    if len(arrivals) == 0:
        raise WorkloadError(f"workload {name}: no requests")
    if not np.all(np.isfinite(arrivals)):
        raise WorkloadError(f"workload {name}: arrival times must be finite numbers")
    if inputs.min() < 1 or outputs.min() < 1:
        raise WorkloadError(f"workload {name}: token counts must be >= 1")
    order = np.argsort(arrivals, kind="stable")
    arrivals = arrivals[order]
    return Workload(name, arrivals - arrivals[0], inputs[order], outputs[order])


def _parse_azure_timestamp(text: str) -> float:
    # Python's fromisoformat takes at most 6 fractional digits; the trace has 7.
    head, _, frac = text.strip().partition(".")
    seconds = datetime.fromisoformat(head).timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def _int_field(value: str | None, what: str, where: str) -> int:
    try:
        return int(float(value)) if value is not None else _missing(what, where)
    except ValueError:
        raise WorkloadError(f"{where}: {what} {value!r} is not a number") from None


def _missing(what: str, where: str) -> int:
    raise WorkloadError(f"{where}: missing {what}")


def _read_csv(path: Path) -> Workload:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = tuple(reader.fieldnames or ())
        arrivals: list[float] = []
        inputs: list[int] = []
        outputs: list[int] = []
        if all(col in header for col in AZURE_COLUMNS):
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                try:
                    arrivals.append(_parse_azure_timestamp(row["TIMESTAMP"] or ""))
                except ValueError:
                    raise WorkloadError(f"{where}: bad TIMESTAMP {row['TIMESTAMP']!r}") from None
                inputs.append(_int_field(row["ContextTokens"], "ContextTokens", where))
                outputs.append(_int_field(row["GeneratedTokens"], "GeneratedTokens", where))
        elif all(col in header for col in GENERIC_COLUMNS):
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                try:
                    arrivals.append(float(row["arrival_s"]))
                except (TypeError, ValueError):
                    raise WorkloadError(f"{where}: bad arrival_s {row['arrival_s']!r}") from None
                inputs.append(_int_field(row["input_tokens"], "input_tokens", where))
                outputs.append(_int_field(row["output_tokens"], "output_tokens", where))
        else:
            raise WorkloadError(
                f"{path}: unknown CSV header {','.join(header) or '(empty)'}; expected "
                f"{','.join(AZURE_COLUMNS)} (Azure trace) or {','.join(GENERIC_COLUMNS)}"
            )
    if not arrivals:
        raise WorkloadError(f"{path}: no requests in the file")
    return from_columns(path.name, arrivals, inputs, outputs)


def _read_jsonl(path: Path) -> Workload:
    arrivals: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
                arrivals.append(float(obj["arrival_s"]))
                inputs.append(int(obj["input_tokens"]))
                outputs.append(int(obj["output_tokens"]))
            except json.JSONDecodeError:
                raise WorkloadError(f"{where}: not valid JSON") from None
            except (KeyError, TypeError, ValueError):
                raise WorkloadError(
                    f"{where}: each line needs numeric {', '.join(GENERIC_COLUMNS)}"
                ) from None
    if not arrivals:
        raise WorkloadError(f"{path}: no requests in the file")
    return from_columns(path.name, arrivals, inputs, outputs)


def load_workload(path: str | Path) -> Workload:
    """Read a trace file (Azure CSV, generic CSV or JSONL); raises :class:`WorkloadError` with one line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WorkloadError(f"workload file not found: {file}")
    try:
        if file.suffix.lower() in {".jsonl", ".ndjson"}:
            return _read_jsonl(file)
        return _read_csv(file)
    except UnicodeDecodeError:
        raise WorkloadError(f"{file}: not a text file (expected CSV or JSONL)") from None
    except csv.Error as exc:
        raise WorkloadError(f"{file}: malformed CSV: {exc}") from None
    except OSError as exc:
        raise WorkloadError(f"{file}: cannot be read: {exc.strerror}") from None
