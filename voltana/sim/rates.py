"""How a request rate prints (req/s): the tables, headings, messages and benchmarks' markdown alike."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

RATE_DIGITS = 3
"""Significant digits of a printed rate, unless a sweep needs more to tell its rates apart."""


def significant(value: float, digits: int) -> str:
    """``value`` (>= 0) with ``digits`` significant digits, never in exponent form: whole from 100 up
    (``130``, not ``1.3e+02``; ``130.4`` at 4 digits), else without trailing zeros (``3.4``; ``0.00001``,
    not ``1e-05``)."""
    if value >= 100:  # whole from 100 up: the integer part is never rounded away (123457, not 123000)
        return f"{value:.{max(0, digits - len(f'{value:.0f}'))}f}"
    return np.format_float_positional(value, precision=digits, unique=False, fractional=False, trim="-")


def as_given(value: float) -> str:
    """``value`` as written: its shortest positional form (``3.33``, ``3.332``)."""
    return np.format_float_positional(value, trim="-")


def rate_digits(rates: Iterable[float]) -> int:
    """The fewest significant digits (at least :data:`RATE_DIGITS`) at which the distinct ``rates`` of one
    sweep print distinctly (``--rates 3.331,3.334``: 4)."""
    distinct = set(rates)
    digits = RATE_DIGITS
    while digits < 17 and len({significant(rate, digits) for rate in distinct}) < len(distinct):
        digits += 1
    return digits


def rate_text(rate_rps: float, rates: Iterable[float] = ()) -> str:
    """A request rate as the tables and messages print it: three significant digits, whole from 100 up
    (``3.4``, ``25``, ``12.5``, ``130``); a trace replayed at its own mean rate has one like 3.40119 req/s.
    ``rates``: every rate of the sweep ``rate_rps`` belongs to, which all print with as many digits as it
    takes to tell them apart (:func:`rate_digits`: 3.331 and 3.334 req/s are not both ``3.33``). ``--json``
    keeps every rate exact."""
    return significant(rate_rps, rate_digits([rate_rps, *rates]))
