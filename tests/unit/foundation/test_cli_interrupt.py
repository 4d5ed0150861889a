"""Ctrl-C at any moment of ``voltana``'s life is one line and exit status 130, never a traceback.

Each test runs the real entry point in a subprocess and delivers a real SIGINT to it at a chosen point: a
``sitecustomize`` module on the child's path (Python imports it at start-up) sends it when the child reaches
that point, so the moment is exact rather than a race with a timer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERRUPT_ON_IMPORT = """
import importlib.abc, os, signal, sys

class _InterruptOn(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C at the terminal: KeyboardInterrupt here
        return None

sys.meta_path.insert(0, _InterruptOn())
"""

INTERRUPT_MID_PROFILE = """
import importlib.abc, importlib.util, os, signal, sys

class _Wrap(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "voltana.plugins.ecofreq.factory":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            real = module.profile_from_model

            def interrupted_after_three_points(perf, clocks, on_point=None):
                seen = [0]

                def point():
                    seen[0] += 1
                    if on_point is not None:
                        on_point()
                    if seen[0] == 3:
                        os.kill(os.getpid(), signal.SIGINT)

                return real(perf, clocks, on_point=point)

            module.profile_from_model = interrupted_after_three_points

        loader.exec_module = exec_and_wrap
        return spec

sys.meta_path.insert(0, _Wrap())
"""


def run_interrupted(tmp_path: Path, hook: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(hook)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "voltana.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("module", ["typer", "voltana.plugins.ecofreq"])
def test_ctrl_c_while_the_app_is_importing_is_one_line(tmp_path: Path, module: str) -> None:
    # typer: the app module itself; voltana.plugins.ecofreq: the built-in plugins, loaded as the app starts
    result = run_interrupted(tmp_path, INTERRUPT_ON_IMPORT.format(module=module), "--help")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["interrupted"]


def test_ctrl_c_in_a_command_that_does_not_handle_it_is_one_line(tmp_path: Path) -> None:
    # simulate imports the simulator when it runs: the interrupt lands inside the command, where typer alone
    # would exit 130 without a word
    hook = INTERRUPT_ON_IMPORT.format(module="voltana.sim.cluster")
    result = run_interrupted(tmp_path, hook, "simulate", "--duration", "2")
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["interrupted"]


def test_ctrl_c_during_a_simulated_profile_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    result = run_interrupted(
        tmp_path, INTERRUPT_MID_PROFILE, "profile", "--simulated", "a100-80gb", "llama-3.1-8b", "-o", str(out)
    )
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == ["interrupted: nothing written"]
    assert not out.exists()
