"""One root for voltana's errors, and the CLI turns any of them into one line."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import voltana
from voltana.core.errors import VoltanaError

# Control-flow signals inside the router that never reach a user (see voltana.core.errors).
NOT_ERRORS = {
    "voltana.router.disconnect.ClientGone",
    "voltana.router.proxy.BackendRejected",
    "voltana.cli.profile.Terminated",  # SIGTERM during a profile run, handled like Ctrl-C
}


# Modules of an optional extra that this environment need not have (the Ray tier has its own virtualenv).
OPTIONAL = {"ray": "voltana.integrations.ray_serve."}


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(voltana.__path__, "voltana."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            # Only a missing optional dependency, and only in that extra's own modules.
            assert exc.name in OPTIONAL and info.name.startswith(OPTIONAL[exc.name]), (info.name, exc.name)
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_voltana_exception_derives_from_voltana_error() -> None:
    classes = _exception_classes()
    assert "voltana.core.config.ConfigError" in classes and "voltana.sim.workload.WorkloadError" in classes
    assert set(classes) >= NOT_ERRORS
    stray = sorted(
        name for name, cls in classes.items() if name not in NOT_ERRORS and not issubclass(cls, VoltanaError)
    )
    assert stray == []


PLUGIN = """
import typer
from voltana.core.profile import ProfileError

def _fail() -> None:
    \"\"\"Fails the way a command does on a bad profile file.\"\"\"
    raise ProfileError("profile old.json has format version 9; this voltana reads version 1")

from voltana.core.hookspecs import hookimpl

@hookimpl
def voltana_register_commands(cli):
    cli.command("fail-profile")(_fail)
"""


def test_any_voltana_error_from_a_plugin_command_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "failing_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "failing_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[voltana]\nfailing = failing_plugin\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    result = subprocess.run(
        [sys.executable, "-m", "voltana.cli", "fail-profile"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: profile old.json has format version 9; this voltana reads version 1"
    ]
    assert "Traceback" not in result.stderr
