"""``voltana --help`` lists every command without loading their heavy stacks (what keeps it fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = (
    "fastapi",
    "uvicorn",
    "httpx",
    "matplotlib",
    "voltana.sim.runner",
    "voltana.router.app",
    "voltana.emulator",
    "voltana.profiler.run",
)
"""Modules a command imports when it runs, never to print the help."""

PROBE = """
import json, sys
from voltana.cli.app import build_app, main
sys.argv = ["voltana", "--help"]
try:
    main()
except SystemExit:
    pass
commands = sorted(c.name or "" for c in build_app().registered_commands)
print(json.dumps({"modules": sorted(sys.modules), "commands": commands}))
"""


def test_help_lists_commands_without_importing_their_stacks() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"simulate", "router", "emulate", "profile", "doctor", "clockd"} <= set(probe["commands"])
    loaded = [m for m in probe["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []


COMMAND_MODULES_PROBE = """
import json, sys
import voltana.cli.app  # every built-in command module, before any plugin is loaded
print(json.dumps(sorted(sys.modules)))
"""

NUMERIC = ("numpy", "voltana.core.profile", "voltana.hardware.simulated", "voltana.hardware.clockd")
"""What the command modules (profile, clockd, simulate) load only when their command runs."""


def test_command_modules_do_not_import_numpy_or_the_hardware_stack() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    result = subprocess.run(
        [sys.executable, "-c", COMMAND_MODULES_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    loaded = [m for m in modules if any(m == h or m.startswith(h + ".") for h in NUMERIC)]
    assert loaded == []
