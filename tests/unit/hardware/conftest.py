"""Collects the calibration comparison rows and prints them at the end of the run (with or without -s)."""

from __future__ import annotations

from typing import Any

from hardware.calibration_sources import CALIBRATION_ROWS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CALIBRATION_ROWS:
        terminalreporter.section("voltana simulated GPU: fitted vs public source")
        for row in CALIBRATION_ROWS:
            terminalreporter.write_line(row)


from tests.support.standin_nvml.fixtures import standin_nvml, standin_nvml_dir  # noqa: E402,F401
