"""Predictor profiles: fitting, JSON round trip, and one-line errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ecofreq_helpers import a100, a100_profile, default_clocks

from voltana.core.profile import (
    PROFILE_VERSION,
    ProfileError,
    Sample,
    fit_nonnegative,
    fit_phase,
    load_profile,
    save_profile,
)
from voltana.core.types import Phase


def test_fit_nonnegative_recovers_coefficients_and_never_goes_negative() -> None:
    rng = np.random.default_rng(0)
    x0, x1 = rng.uniform(1, 1000, 50), rng.uniform(0, 5000, 50)
    assert fit_nonnegative(x0, x1, 3e-4 * x0 + 2e-5 * x1 + 0.01) == pytest.approx((3e-4, 2e-5, 0.01))
    # A falling trend in x1 would need a negative slope: it is dropped, the rest refitted.
    c0, c1, c2 = fit_nonnegative(x0, x1, 3e-4 * x0 - 1e-6 * x1 + 0.05)
    assert c1 == 0.0 and c0 > 0 and c2 > 0


def test_fit_phase_fills_segments_without_samples_from_a_neighbour() -> None:
    samples = [Sample(float(b), float(b * 100), 1410, 0.01 + 1e-4 * b, 1.0 + b) for b in range(1, 9)]
    fit = fit_phase(samples, (1410,), (8, 16, 32))
    latency = fit.tables["latency_s"]
    assert len(latency) == 3
    assert latency[1] == latency[0] and latency[2] == latency[0]
    assert fit.max_x0 == 8.0 and fit.segment_of(12.0) == 1 and fit.segment_of(1e6) == 2


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = a100_profile()
    path = save_profile(profile, tmp_path / "sub" / "p.json")
    loaded = load_profile(path)
    assert loaded.clocks_mhz == profile.clocks_mhz == default_clocks()
    assert loaded.metadata == {"gpu": "a100-80gb", "model": "llama-3.1-8b", "tp": 1}
    for phase in Phase:
        for target in ("latency_s", "energy_j"):
            ours = np.array(profile.phases[phase].tables[target])
            theirs = np.array(loaded.phases[phase].tables[target])
            np.testing.assert_allclose(theirs, ours, rtol=1e-6)
        assert loaded.phases[phase].segment_ends == profile.phases[phase].segment_ends
    assert path.stat().st_size < 100_000


def test_an_interrupted_save_keeps_the_previous_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a Ctrl-C (or a full disk) in the middle of the write: the file there before stays whole, nothing is
    # left beside it
    path = save_profile(a100_profile(), tmp_path / "p.json")
    before = path.read_bytes()
    real_write = Path.write_text

    def interrupted(self: Path, data: str, *args: object, **kwargs: object) -> int:
        real_write(self, data[: len(data) // 2], encoding="utf-8")  # half written, then the signal
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_profile(a100_profile(), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_profile(path).clocks_mhz == default_clocks()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_profile_at_profiled_clocks_is_the_fit_and_tracks_the_simulated_gpu() -> None:
    profile = a100_profile()
    clocks = default_clocks()
    assert (
        profile.coefficients_on(Phase.DECODE, "latency_s", clocks)
        == profile.phases[Phase.DECODE].tables["latency_s"]
    )
    fit = profile.phases[Phase.DECODE]
    c0, c1, c2 = fit.tables["latency_s"][fit.segment_of(64)][-1]
    truth = a100().cost(Phase.DECODE, 64, 64, 64 * 1000, clocks[-1]).latency_s
    assert c0 * 64 + c1 * 64_000 + c2 == pytest.approx(truth, rel=0.02)


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def good_doc() -> dict:  # type: ignore[type-arg]
    return a100_profile().to_json()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=PROFILE_VERSION + 1), "unsupported profile version"),
        (lambda d: d.update(format="something-else"), "not a voltana predictor profile"),
        (lambda d: d.update(clocks_mhz=[1410, 1005]), "ascending"),
        (lambda d: d["phases"]["decode"].pop("latency_s"), "garbled profile"),
        (lambda d: d["phases"]["decode"]["latency_s"].pop(), "shape"),
        (lambda d: d["phases"]["decode"]["energy_j"][0][0].__setitem__(0, -1.0), "non-negative"),
        (lambda d: d["phases"].update(turbo={}), "garbled profile"),
    ],
)
def test_bad_profiles_fail_with_one_line(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = good_doc()
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("content", "message"), [("{not json", "not valid JSON"), ("[1, 2]", "not a voltana")]
)
def test_garbled_files_fail_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_profile(write(tmp_path, content))


def test_missing_profile_is_named(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.json")
