"""``voltana simulate --workers/--ray`` without a usable Ray: one line naming the fix (no Ray needed here)."""

from __future__ import annotations

import builtins
import sys
from typing import Any

import pytest

from voltana.sim.ray_runner import RayUnavailableError, import_ray
from voltana.sim.runner import SimulationError


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(RayUnavailableError) as caught:
        import_ray()
    assert str(caught.value) == "Ray is not installed: pip install 'voltana[ray]'"
    assert isinstance(caught.value, SimulationError)  # the simulate command prints it as one line


def test_ray_broken_by_a_rocm_less_amdsmi_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def importing(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise KeyError("libamd_smi.so")  # what amdsmi raises inside `import ray` without ROCm
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(builtins, "__import__", importing)
    with pytest.raises(
        RayUnavailableError, match=r"amdsmi package is installed but ROCm's libamd_smi\.so is not"
    ):
        import_ray()
