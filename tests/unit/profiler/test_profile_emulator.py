"""``voltana profile --engine`` end to end against ``voltana emulate``, whose iteration times and energies
come from the simulated A100 at the pinned clock: the profile recovers that GPU, seeds an instance that
predicts as well as one seeded from the simulator itself, and a resumed run equals a run in one go."""

from __future__ import annotations

import _thread
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.profiling import (
    TOKEN,
    profile_command,
    run_profile,
    running_emulator,
    voltana_env,
    wait_for,
)
from voltana.core.config import VoltanaConfig
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.predictor import features
from voltana.core.profile import Profile, load_profile
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.simulated import PerformanceModel, performance_model
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecofreq.factory import build_controller
from voltana.profiler.client import EngineClient
from voltana.profiler.fit import predict
from voltana.profiler.run import ProfileRequest
from voltana.profiler.run import run_profile as run_profile_in_process

pytestmark = pytest.mark.slow
TOKEN_ENV = {"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}
CLOCKS = (210, 720, 1065, 1410)
GRID_ARGS = ("--clocks", ",".join(map(str, CLOCKS)), "--max-batch", "8", "--max-prompt-tokens", "1024")
MAPE_LIMIT = 0.05  # the bar: 5% per clock


def held_out_batches(profile: Profile, phase: Phase) -> list[BatchSnapshot]:
    """Batches the profiler never sent (other sizes), within the profiled range of ``phase``."""
    fit = profile.phases[phase]
    snaps = []
    if phase is Phase.PREFILL:
        for tokens in np.linspace(40, fit.max_x0, 25).astype(int):
            for batch in (1, 3):
                requests = [ScheduledRequest(f"r{i}", int(tokens) // batch, 0, 0.0) for i in range(batch)]
                snaps.append(BatchSnapshot.build(Phase.PREFILL, requests, 0.0))
    else:
        for batch in range(1, int(fit.max_x0) + 1):
            for per_request in (40, 300, 700):
                requests = [ScheduledRequest(f"r{i}", 1, per_request, 0.0) for i in range(batch)]
                snaps.append(BatchSnapshot.build(Phase.DECODE, requests, 0.0))
    return snaps


def truth(model: PerformanceModel, snap: BatchSnapshot, clock: int) -> tuple[float, float]:
    cost = model.cost(snap.phase, snap.batch_size, snap.num_new_tokens, snap.num_context_tokens, clock)
    return cost.latency_s, cost.energy_j


def mape(pairs: list[tuple[float, float]]) -> float:
    return float(np.mean([abs(p - m) / m for p, m in pairs]))


def test_one_command_recovers_the_simulated_gpu_and_seeds_an_instance(tmp_path: Path) -> None:
    out = tmp_path / "a100.json"
    with running_emulator(TOKEN_ENV) as emu:
        result = run_profile(
            [emu.prefill_url, emu.decode_url], out, *GRID_ARGS, "--plot", str(tmp_path / "u.png")
        )
    assert result.returncode == 0, result.stderr
    assert f'engine.predictor_profile = "{out.resolve()}"' in result.stdout
    assert (tmp_path / "u.png").stat().st_size > 10_000
    assert not out.with_name("a100.json.partial").exists()
    profile = load_profile(out)
    assert profile.clocks_mhz == CLOCKS and set(profile.phases) == {Phase.PREFILL, Phase.DECODE}
    assert profile.metadata["complete"] is True
    for phase_quality in profile.metadata["fit_quality"].values():  # the profiler's own held-out report
        for q in phase_quality:
            assert q["samples"] > 0 and q["latency_mape"] <= MAPE_LIMIT and q["energy_mape"] <= MAPE_LIMIT

    # Recovered: the fits against the simulated GPU itself, per phase and clock, on batches never sent.
    model = performance_model("a100-80gb", "llama-3.1-8b")
    for phase, fit in profile.phases.items():
        snaps = held_out_batches(profile, phase)
        for index, clock in enumerate(CLOCKS):
            for k, target in enumerate(("latency_s", "energy_j")):
                pairs = [
                    (predict(fit, target, index, *features(s)), truth(model, s, clock)[k]) for s in snaps
                ]
                assert mape(pairs) <= MAPE_LIMIT, (phase, clock, target, mape(pairs))

    # An instance started with this profile (engine.predictor_profile) predicts as well as a simulated-seeded
    # one (the controller the runtime builds at start).
    seeded = VoltanaConfig(clocks={"allowed_mhz": list(CLOCKS)})
    profiled = VoltanaConfig(clocks={"allowed_mhz": list(CLOCKS)}, engine={"predictor_profile": str(out)})
    hook = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False).hook  # built-in policies only
    for phase in (Phase.PREFILL, Phase.DECODE):
        ours = build_controller(profiled, phase, "p", None, hook, model.supported_clocks_mhz).predictor
        base = build_controller(seeded, phase, "s", model, hook, model.supported_clocks_mhz).predictor
        snaps = held_out_batches(profile, phase)
        for clock in CLOCKS:
            want = [truth(model, s, clock)[0] for s in snaps]
            ours_mape = mape(
                [(ours.predict_latency_s(s, clock), w) for s, w in zip(snaps, want, strict=True)]
            )
            base_mape = mape(
                [(base.predict_latency_s(s, clock), w) for s, w in zip(snaps, want, strict=True)]
            )
            assert ours_mape <= MAPE_LIMIT and ours_mape <= base_mape + 0.02, (
                phase,
                clock,
                ours_mape,
                base_mape,
            )


def test_interrupted_and_resumed_run_equals_a_run_in_one_go(tmp_path: Path) -> None:
    resumed, one_go = tmp_path / "resumed.json", tmp_path / "one-go.json"
    partial = resumed.with_name("resumed.json.partial")
    with running_emulator(TOKEN_ENV) as emu:
        engines = [emu.prefill_url, emu.decode_url]
        cmd = profile_command(engines, resumed, *GRID_ARGS)
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=voltana_env(TOKEN_ENV)
        )
        try:
            wait_for(
                lambda: partial.exists() and len(json.loads(partial.read_text())["units"]) >= 2,
                300,
                "2 units",
            )
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        done_before = len(json.loads(partial.read_text())["units"])
        assert done_before < 2 * len(CLOCKS)  # it really stopped part-way
        again = run_profile(engines, resumed, *GRID_ARGS)
        assert again.returncode == 0, again.stderr
        assert f"resuming from {partial}: {done_before} unit(s) done" in again.stderr
        fresh = run_profile(engines, one_go, *GRID_ARGS)
        assert fresh.returncode == 0, fresh.stderr
    assert json.loads(resumed.read_text()) == json.loads(one_go.read_text())
    assert not partial.exists()


class _InterruptAtLastShape(EngineClient):
    """The real client of the decode engine, which presses Ctrl-C (``interrupt_main``) just before the last
    shape of the second decode unit and sends that shape only once the interrupt has unpinned the engine:
    the race where a unit's last iterations run unpinned."""

    def __init__(self, url: str, checkpoint: Path) -> None:
        super().__init__(url, TOKEN)
        self.checkpoint = checkpoint
        self.calls = 0
        self.interrupted_unit = ""

    def complete(self, prompts: list[list[int]], max_tokens: int, model_id: str) -> None:
        self.calls += 1
        if self.checkpoint.exists() and not self.interrupted_unit:
            shapes = len(json.loads(self.checkpoint.read_text())["grid"]["shapes"]["decode"])
            warm_up = len({0, shapes // 2, shapes - 1})
            if self.calls == warm_up + 2 * shapes:
                self.interrupted_unit = f"{self.url}|decode|{CLOCKS[1]}"
                _thread.interrupt_main()
                wait_for(lambda: self.clock_status().get("engine_pinned_mhz") is None, 30, "the unpin")
        super().complete(prompts, max_tokens, model_id)


class _Quiet:
    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def test_a_unit_interrupted_in_its_last_shape_is_not_kept_and_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    partial = out.with_name("p.json.partial")
    with running_emulator(TOKEN_ENV) as emu:
        decode = _InterruptAtLastShape(emu.decode_url, partial)
        factory = lambda url: decode if url == emu.decode_url else EngineClient(url, TOKEN)  # noqa: E731
        request = ProfileRequest(
            (emu.prefill_url, emu.decode_url), out, clocks_mhz=CLOCKS, max_batch=8, max_prompt_tokens=1024
        )
        with pytest.raises(KeyboardInterrupt):
            run_profile_in_process(request, _Quiet(), factory)
        assert decode.interrupted_unit, "the interrupt never fired"
        units = json.loads(partial.read_text())["units"]
        assert f"{emu.decode_url}|decode|{CLOCKS[0]}" in units  # the unit before it is kept
        assert decode.interrupted_unit not in units  # its last shape ran unpinned: not a finished unit
        again = run_profile([emu.prefill_url, emu.decode_url], out, *GRID_ARGS)
        assert again.returncode == 0, again.stderr
    decode_fit = load_profile(out).metadata["fit_quality"]["decode"]
    assert [q["samples"] > 0 for q in decode_fit] == [True] * len(CLOCKS)
