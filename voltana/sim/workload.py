"""Workloads for the simulator: request arrivals with prompt and output lengths, from files or generators.

File formats (detected by extension and header):

- Azure LLM inference trace CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (Patel et al., "Splitwise",
  ISCA 2024). Timestamps are ISO 8601 dates and times: ``2023-11-16 18:15:46.6805900`` (2023 traces, 7
  fractional digits), ``2024-05-10 00:00:00.009930+00:00`` (2024 traces, with a UTC offset),
  ``2024-05-10T00:00:00Z``. A timestamp without an offset is read as UTC, never in the machine's time zone
  (a local-time reading would add or remove an hour at daylight-saving changes).
- Generic CSV with header ``arrival_s,input_tokens,output_tokens``.
- JSON Lines with objects ``{"arrival_s": ..., "input_tokens": ..., "output_tokens": ...}``; token counts
  must be JSON integers (``12``, not ``12.5``, ``12.0`` or ``"12"``).
- Mooncake's traces (JSON Lines, kvcache-ai/Mooncake ``FAST25-release/README.md``): objects
  ``{"timestamp": ..., "input_length": ..., "output_length": ..., "hash_ids": [...]}`` with ``timestamp`` the
  arrival in milliseconds. ``hash_ids`` (the 512-token prefix blocks a request shares with earlier ones) is
  not read: the simulator does not model prefix caching, so every prompt is prefilled whole. The first line
  decides which of the two JSON Lines formats a file is in; every line must then be in it.

Token counts are whole numbers from 1 to :data:`MAX_TOKENS` in every format; anything else is rejected
with its line number, never rounded. Files may start with a UTF-8 byte order mark (as spreadsheet exports
do); header names are compared without surrounding spaces. Arrivals are made relative to the first request
(the first arrives at 0 s) and sorted.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from voltana.core.errors import VoltanaError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
"""Keys of Mooncake's trace lines: arrival in ms, prompt and output tokens (module docstring)."""
_JSONL_SECONDS_PER_UNIT = {GENERIC_COLUMNS: 1.0, MOONCAKE_KEYS: 1e-3}
"""Each JSON Lines format's keys -> seconds per unit of its arrival key (s for ours, ms for Mooncake's)."""


MAX_TOKENS = 2**31 - 1
"""Largest token count accepted per request: far above any model's context (a few million tokens), and
small enough that token counts times KV bytes per token stay exact in the simulator's int64/float64."""


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
    if any(count > MAX_TOKENS for column in (input_tokens, output_tokens) for count in column):
        raise WorkloadError(f"workload {name}: token counts must be at most {MAX_TOKENS}")
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


_TIMESTAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)(?:[.,](?P<fraction>\d+))?"
    r"\s*(?P<zone>Z|UTC|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
_WHOLE_NUMBER = re.compile(r"\s*[+-]?\d+\s*")


def parse_timestamp_s(text: str) -> float:
    """Seconds since the Unix epoch of an ISO 8601 date and time (``T`` or space between them).

    Any number of fractional digits (Python's ``fromisoformat`` takes at most 6; the Azure 2023 traces have
    7); an optional ``Z``/``UTC`` or ``+hh:mm`` / ``+hhmm`` / ``+hh`` offset. Without an offset the time is
    **UTC**, never the machine's local time. Raises :class:`ValueError` for anything else.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    zone = (match["zone"] or "Z").upper()
    if zone in ("Z", "UTC"):
        tzinfo = UTC
    else:
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tzinfo = timezone(-offset if zone[0] == "-" else offset)
    moment = datetime.fromisoformat(f"{match['date']}T{match['time']}").replace(tzinfo=tzinfo)
    fraction = match["fraction"]
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def _token_count(value: object, what: str, where: str, in_json: bool = False) -> int:
    """A token count from a CSV cell (text) or a JSON value: a whole number >= 1, else one-line error."""
    if value is None or value == "":
        raise WorkloadError(f"{where}: missing {what}")
    if isinstance(value, str) and not in_json:
        if not _WHOLE_NUMBER.fullmatch(value):
            kind = "is not a number" if _float_or_none(value) is None else "is not a whole number"
            raise WorkloadError(f"{where}: {what} {value!r} {kind} (token counts are integers)")
        count = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        count = value
    else:
        raise WorkloadError(
            f"{where}: {what} must be a JSON integer, got {json.dumps(value)} (token counts are integers)"
        )
    if count < 1:
        raise WorkloadError(f"{where}: {what} {count} must be >= 1 (token counts must be >= 1)")
    if count > MAX_TOKENS:
        raise WorkloadError(f"{where}: {what} {count} is too large (at most {MAX_TOKENS} tokens)")
    return count


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _arrival_seconds(
    value: object, where: str, in_json: bool = False, key: str = "arrival_s", seconds_per_unit: float = 1.0
) -> float:
    """An arrival from a CSV cell or a JSON number (``key``, in units of ``seconds_per_unit`` s): finite
    seconds, else one-line error."""
    unit = "seconds" if seconds_per_unit == 1.0 else "milliseconds"
    if value is None or value == "":
        raise WorkloadError(f"{where}: missing {key}")
    allowed = (int, float) if in_json else (str,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise WorkloadError(f"{where}: {key} must be a number of {unit}, got {json.dumps(value)}")
    try:
        number = _float_or_none(value) if isinstance(value, str) else float(value)
    except OverflowError:  # a JSON integer too large for a float (hundreds of digits)
        number = math.inf
    if number is None or not math.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise WorkloadError(f"{where}: bad {key} {shown} (a finite number of {unit})")
    return number * seconds_per_unit


def _csv_header(reader: csv.DictReader[str]) -> tuple[str, ...]:
    """The header with surrounding spaces removed from each name (the reader then uses these names)."""
    names = [name.strip() for name in reader.fieldnames or ()]
    reader.fieldnames = names
    return tuple(names)


def _read_csv(path: Path) -> Workload:
    # utf-8-sig: a leading byte order mark is dropped instead of becoming part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = _csv_header(reader)
        arrivals: list[float] = []
        inputs: list[int] = []
        outputs: list[int] = []
        if all(col in header for col in AZURE_COLUMNS):
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                try:
                    arrivals.append(parse_timestamp_s(row["TIMESTAMP"] or ""))
                except ValueError:
                    raise WorkloadError(
                        f"{where}: bad TIMESTAMP {row['TIMESTAMP']!r} (expected ISO 8601, e.g. "
                        "2024-05-10 00:00:00.009930+00:00; no offset means UTC)"
                    ) from None
                inputs.append(_token_count(row["ContextTokens"], "ContextTokens", where))
                outputs.append(_token_count(row["GeneratedTokens"], "GeneratedTokens", where))
        elif all(col in header for col in GENERIC_COLUMNS):
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                arrivals.append(_arrival_seconds(row["arrival_s"], where))
                inputs.append(_token_count(row["input_tokens"], "input_tokens", where))
                outputs.append(_token_count(row["output_tokens"], "output_tokens", where))
        else:
            # ascii(): a header that differs only by an invisible character must not print identical.
            shown = ",".join(ascii(name)[1:-1] for name in header) or "(empty)"
            if shown.startswith("{"):  # a JSON object per line under another extension
                raise WorkloadError(
                    f"{path}: lines look like JSON, read as CSV by the file's extension; "
                    "name a JSON Lines file *.jsonl or *.ndjson"
                )
            raise WorkloadError(
                f"{path}: unknown CSV header {shown}; expected "
                f"{','.join(AZURE_COLUMNS)} (Azure trace) or {','.join(GENERIC_COLUMNS)}"
            )
    if not arrivals:
        raise WorkloadError(f"{path}: no requests in the file")
    return from_columns(path.name, arrivals, inputs, outputs)


def _read_jsonl(path: Path) -> Workload:
    keys: tuple[str, str, str] | None = None
    first_line = 0
    arrivals: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise WorkloadError(f"{where}: not valid JSON") from None
            if not isinstance(obj, dict):
                raise WorkloadError(
                    f"{where}: each line must be a JSON object with {', '.join(GENERIC_COLUMNS)} "
                    f"(or Mooncake's {', '.join(MOONCAKE_KEYS)})"
                )
            if keys is None:  # the first line decides the format
                mooncake = MOONCAKE_KEYS[0] in obj and GENERIC_COLUMNS[0] not in obj
                keys = MOONCAKE_KEYS if mooncake else GENERIC_COLUMNS
                first_line = line_no
            missing = [key for key in keys if key not in obj]
            if missing:
                if line_no == first_line:
                    raise WorkloadError(
                        f"{where}: missing {', '.join(missing)} (each line needs {', '.join(keys)})"
                    )
                kind = "Mooncake's format" if keys == MOONCAKE_KEYS else f"the {'/'.join(keys)} format"
                raise WorkloadError(
                    f"{where}: missing {', '.join(missing)} (the file's first line is in {kind}: every line "
                    f"needs {', '.join(keys)})"
                )
            arrival, prompt, output = keys
            arrivals.append(
                _arrival_seconds(obj[arrival], where, True, arrival, _JSONL_SECONDS_PER_UNIT[keys])
            )
            inputs.append(_token_count(obj[prompt], prompt, where, in_json=True))
            outputs.append(_token_count(obj[output], output, where, in_json=True))
    if not arrivals:
        raise WorkloadError(f"{path}: no requests in the file")
    return from_columns(path.name, arrivals, inputs, outputs)


def load_workload(path: str | Path) -> Workload:
    """Read a trace file (Azure CSV, generic CSV or JSONL); raises :class:`WorkloadError` with one line."""
    file = Path(path).expanduser()
    if not file.exists():
        raise WorkloadError(f"workload file not found: {file}")
    if file.is_dir():
        raise WorkloadError(f"{file} is a directory, not a workload file (CSV or JSONL)")
    if not file.is_file():
        raise WorkloadError(f"{file} is not a regular file (a device or pipe); give a CSV or JSONL file")
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
