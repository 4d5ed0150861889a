"""The core install (``pip install voltana``, no extras) serves every engine process and ``voltana simulate``:
with the router's server stack made unimportable, the engine-side modules import, a simulation runs, and
the commands that need the stack say in one line which extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from voltana.core.extras import ROUTER_MODULES

# What the `router` extra brings (pyproject.toml) and what comes with it: starlette (fastapi), yarl (aiohttp),
# uvloop (uvicorn[standard]); httpx is the tests' client.
BLOCKED = (*ROUTER_MODULES, "starlette", "yarl", "uvloop", "httpx")
BLOCKER = f"""
import importlib.abc, sys

BLOCKED = {BLOCKED!r}


class RouterStackBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}} (router stack)", name=name)
        return None


sys.meta_path.insert(0, RouterStackBlocker())
"""
# Modules allowed to need the router stack (they are the router, its emulator, the engine profiler's
# client side, or Ray Serve integrations that serve HTTP); everything else is imported by engine processes
# or the simulator.
ROUTER_SIDE = (
    "voltana.router.",
    "voltana.emulator",
    "voltana.integrations.",
    "voltana.profiler.client",
    "voltana.profiler.run",
    "voltana.profiler.passive",
)
IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, voltana
    failed, walked = {}, []
    for info in pkgutil.walk_packages(voltana.__path__, "voltana.", onerror=lambda name: None):
        walked.append(info.name)
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            failed[info.name] = str(exc)
    print(json.dumps({"failed": failed, "walked": walked}))
""")


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a Python whose ``sitecustomize`` makes the router stack unimportable."""
    site = tmp_path_factory.mktemp("no-router-stack")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    repo = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([str(site), repo, *filter(None, [os.environ.get("PYTHONPATH")])])
    env["COLUMNS"] = "200"
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_the_blocker_blocks(blocked_env: dict[str, str]) -> None:
    result = run(blocked_env, "-c", "import aiohttp")
    assert result.returncode != 0
    assert "blocked: aiohttp" in result.stderr


def test_engine_side_modules_import_without_the_router_stack(blocked_env: dict[str, str]) -> None:
    result = run(blocked_env, "-c", IMPORT_ALL)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    engine_side_failures = {
        name: why for name, why in report["failed"].items() if not name.startswith(ROUTER_SIDE)
    }
    assert engine_side_failures == {}
    for needed in (
        "voltana.cli",
        "voltana.adapters.runtime",
        "voltana.adapters.vllm.plugin",
        "voltana.adapters.vllm.state",
        "voltana.adapters.sglang.plugin",
        "voltana.plugins.telemetry",
        "voltana.hardware.select",
        "voltana.sim.runner",
    ):
        assert needed in report["walked"] and needed not in report["failed"], needed
    # the router side really needed what was blocked (so the walk above was a real check)
    assert "blocked: aiohttp" in report["failed"]["voltana.router.proxy"]


def test_simulate_runs_without_the_router_stack(blocked_env: dict[str, str]) -> None:
    result = run(blocked_env, "-m", "voltana.cli", "simulate", "--duration", "5", "--rates", "3",
                 "--policies", "static-max,ecofreq+ecoroute", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "blocked" not in result.stderr


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        (["router", "--prefill", "http://127.0.0.1:9", "--decode", "http://127.0.0.1:9"], "fastapi"),
        (["emulate"], "uvicorn"),
        (["profile", "--engine", "http://127.0.0.1:9", "-o", "profile.json"], "aiohttp"),
    ],
)
def test_router_commands_name_the_extra_in_one_line(
    blocked_env: dict[str, str], command: list[str], needs: str, tmp_path: Path
) -> None:
    env = dict(blocked_env)
    result = subprocess.run(
        [sys.executable, "-m", "voltana.cli", *command],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert needs in lines[0]
    assert "pip install 'voltana[router]'" in lines[0]
