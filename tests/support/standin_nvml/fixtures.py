"""pytest fixtures for the stand-in NVML; import them into a conftest (``from ... import standin_nvml``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.standin_nvml import StandinBuildError, StandinNvml, build_standin_nvml


@pytest.fixture(scope="session")
def standin_nvml_dir() -> Path:
    """The directory with the compiled ``libnvidia-ml.so.1`` (a missing compiler fails, never skips)."""
    try:
        return build_standin_nvml()
    except StandinBuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def standin_nvml(
    standin_nvml_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StandinNvml]:
    """The stand-in loaded into this process's ``pynvml`` with the default script (one A100-like GPU)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    standin = StandinNvml(standin_nvml_dir, tmp_path).script()
    standin.activate(monkeypatch)
    yield standin
