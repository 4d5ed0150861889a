"""The simulated GPU: a calibrated physics model of one engine iteration, and a ``GpuDevice`` on top of it.

Latency (per iteration, all TP GPUs in lock-step) is a roofline per transformer layer:
``max(weight streaming, padded GEMM compute * f_max/f) + partial-tile compute * f_max/f`` for the linear
layers (fitted to Vidur, padded to 128-token GEMM tiles), element-wise ops as memory traffic, attention from
its FLOPs and KV-cache bytes (Vidur does not profile the attention kernel, so it is modelled, not fitted),
ring all-reduce over NVLink for TP > 1, the LM head, and a fixed engine overhead. Decode batches are padded
to the engine's CUDA-graph capture sizes. Memory-bound parts are flat in the SM clock; compute parts scale
with 1/f.

Power per GPU = idle + (clock tree + SM x compute utilisation) x f x V(f)^2 + HBM x memory utilisation, with
a voltage floor, capped at the power limit (TDP, or a lower limit set with ``set_power_limit_w``): when the
cap binds the effective clock drops one step at a time until the power fits, as NVIDIA's power capping does
("the clocks have been optimized to ensure not to exceed currently set power limits", NVML's
``nvmlClocksEventReasonSwPowerCap``; nvidia-smi reports it as the ``SW Power Cap`` clock event reason).
Constants and their sources live in :mod:`voltana.hardware.profiles`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

from voltana.core.files import write_text_atomically
from voltana.core.types import Phase, slot_setters
from voltana.hardware.device import DeviceCapabilities, EnergySource, GpuDevice, GpuGroup, PowerLimits
from voltana.hardware.errors import InvalidArgumentError, UnknownProfileError
from voltana.hardware.profiles import (
    ACTIVATION_RESERVE_BYTES,
    CAPTURE_SIZES,
    DECODE_OVERHEAD_S,
    GPU_MEMORY_UTILIZATION,
    GPUS,
    MODELS,
    PREFILL_OVERHEAD_S,
    GpuSpec,
    ModelSpec,
    known_gpus,
    known_models,
)

__all__ = [
    "IterationCost",
    "PerformanceModel",
    "SimulatedGpu",
    "known_gpus",
    "known_models",
    "open_simulated",
    "performance_model",
    "record_iteration",
    "simulated_power_cap_w",
]


@dataclass(frozen=True, slots=True, init=False)
class IterationCost:
    """Cost of one iteration on one instance (all its TP GPUs).

    ``effective_clock_mhz`` is below the requested clock when the power cap binds (H100 under heavy prefill).
    """

    latency_s: float
    energy_j: float
    avg_power_w: float
    effective_clock_mhz: int

    def __init__(
        self, latency_s: float, energy_j: float, avg_power_w: float, effective_clock_mhz: int
    ) -> None:
        _cost_set[0](self, latency_s)  # one per simulated iteration: slot setters, as in ScheduledRequest
        _cost_set[1](self, energy_j)
        _cost_set[2](self, avg_power_w)
        _cost_set[3](self, effective_clock_mhz)


_cost_set = slot_setters(IterationCost, "latency_s", "energy_j", "avg_power_w", "effective_clock_mhz")


def voltage_ratio(gpu: GpuSpec, clock_mhz: float) -> float:
    """V(f)/V_max: flat at the floor below ``voltage_floor_mhz``, linear up to 1.0 at the max clock."""
    floor_mhz = gpu.voltage_floor_mhz
    if clock_mhz <= floor_mhz:
        return gpu.voltage_floor_ratio
    span = (clock_mhz - floor_mhz) / (gpu.max_clock_mhz - floor_mhz)
    return gpu.voltage_floor_ratio + (1.0 - gpu.voltage_floor_ratio) * span


class PerformanceModel:
    """Stateless physics of one GPU type x model x tensor-parallel degree.

    Invariants: ``supported_clocks_mhz`` is ascending; ``cost`` is pure float math (a few µs) and never raises
    for non-negative inputs; a clock that is not supported is snapped to the nearest supported one.
    """

    def __init__(self, gpu: GpuSpec, model: ModelSpec, tp: int) -> None:
        if tp < 1:
            raise ValueError(f"tensor-parallel degree must be >= 1, got {tp}")
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.name = f"{gpu.name}/{model.name}/tp{tp}"
        self.supported_clocks_mhz: tuple[int, ...] = gpu.clocks_mhz
        self.max_clock_mhz: int = gpu.max_clock_mhz
        self.capture_sizes: tuple[int, ...] = CAPTURE_SIZES
        self._clock_index = {clock: i for i, clock in enumerate(gpu.clocks_mhz)}
        # Per-clock factors: compute slowdown f_max/f and dynamic-power factor (f/f_max) * (V/V_max)^2.
        self._slowdown = tuple(self.max_clock_mhz / f for f in gpu.clocks_mhz)
        self._dynamic = tuple((f / self.max_clock_mhz) * voltage_ratio(gpu, f) ** 2 for f in gpu.clocks_mhz)
        self._precompute_shape()
        self.kv_capacity_tokens: int = self._kv_capacity_tokens()

    def _precompute_shape(self) -> None:
        gpu, model, tp = self.gpu, self.model, self.tp
        layers = model.n_layers
        layer_params_per_gpu = model.layer_params / tp
        lm_params_per_gpu = model.vocab * model.hidden / tp
        peak_gemm = gpu.peak_flop_per_s * gpu.gemm_compute_efficiency
        # Per iteration (all layers), seconds at the max clock.
        stream_rate = gpu.hbm_bytes_per_s * gpu.gemm_memory_efficiency
        self._layer_stream_s = layers * layer_params_per_gpu * model.bytes_per_param / stream_rate
        self._weights_stream_s = (
            self._layer_stream_s + lm_params_per_gpu * model.bytes_per_param / stream_rate
        )
        self._layer_compute_s_per_token = layers * 2.0 * layer_params_per_gpu / peak_gemm
        self._lm_compute_s_per_token = 2.0 * lm_params_per_gpu / peak_gemm
        self._fixed_s = layers * (gpu.gemm_fixed_s + gpu.elementwise_fixed_s)
        self._elementwise_s_per_token = (
            layers * gpu.elementwise_traffic_factor * model.hidden * 2.0 / gpu.hbm_bytes_per_s
        )
        heads_per_gpu = model.n_heads / tp
        kv_heads_per_gpu = max(1.0, model.n_kv_heads / tp)
        self._kv_bytes_per_token_gpu = (
            layers * model.kv_bytes_per_token_layer * kv_heads_per_gpu / model.n_kv_heads
        )
        self._attn_flops_per_token_pair = layers * 4.0 * model.head_dim * heads_per_gpu
        self._attn_compute_rate = gpu.peak_flop_per_s * gpu.attention_compute_efficiency
        self._attn_memory_rate = gpu.hbm_bytes_per_s * gpu.attention_memory_efficiency
        if tp > 1:
            steps = 2 * (tp - 1)
            self._allreduce_fixed_s = layers * 2 * steps * gpu.allreduce_step_latency_s
            self._allreduce_s_per_token = (
                layers * 2 * (steps / tp) * model.hidden * 2.0 / gpu.allreduce_bus_bytes_per_s
            )
        else:
            self._allreduce_fixed_s = 0.0
            self._allreduce_s_per_token = 0.0
        self._tile = gpu.gemm_tile_tokens
        self._partial_share = gpu.gemm_partial_tile_share
        self._max_capture = self.capture_sizes[-1]

    def _kv_capacity_tokens(self) -> int:
        model, gpu = self.model, self.gpu
        weights_per_gpu = (
            (model.n_layers * model.layer_params + 2 * model.vocab * model.hidden)
            * model.bytes_per_param
            / self.tp
        )
        free_bytes = (
            gpu.hbm_capacity_bytes * GPU_MEMORY_UTILIZATION - weights_per_gpu - ACTIVATION_RESERVE_BYTES
        )
        return max(0, int(free_bytes / self._kv_bytes_per_token_gpu))

    def idle_power_w(self) -> float:
        """Power of the idle instance, all TP GPUs (W)."""
        return self.gpu.idle_w * self.tp

    def padded_batch(self, batch_size: int) -> int:
        """Decode batch the engine runs: the next CUDA-graph capture size (eager above the largest)."""
        if batch_size > self._max_capture:
            return batch_size
        return self.capture_sizes[bisect_left(self.capture_sizes, batch_size)]

    def _padded_tokens(self, tokens: float) -> float:
        """GEMM tiles: above one tile the token dimension is padded to whole tiles (Vidur's 128-token steps);
        below one tile cuBLAS picks narrow kernels, so the actual work counts."""
        if tokens <= self._tile:
            return tokens
        return float(math.ceil(tokens / self._tile) * self._tile)

    def layer_linear_s(self, num_tokens: int, clock_mhz: int) -> float:
        """One transformer layer's linear and element-wise time, without attention or all-reduce (s).

        This is exactly the part of ``cost`` that Vidur's ``mlp.csv`` profiles; calibration tests compare it.
        """
        layers = self.model.n_layers
        slowdown = self._slowdown[self._index_of(clock_mhz)]
        tokens = float(num_tokens)
        stream_s = self._layer_stream_s / layers
        compute_s = self._layer_compute_s_per_token * self._padded_tokens(tokens) / layers
        partial_s = self._partial_share * self._layer_compute_s_per_token * tokens / layers
        flat_s = (self._fixed_s + self._elementwise_s_per_token * tokens) / layers
        return max(stream_s, compute_s * slowdown) + partial_s * slowdown + flat_s

    def _index_of(self, clock_mhz: int) -> int:
        index = self._clock_index.get(clock_mhz)
        if index is not None:
            return index
        clocks = self.supported_clocks_mhz
        pos = min(bisect_left(clocks, clock_mhz), len(clocks) - 1)
        if pos > 0 and abs(clocks[pos - 1] - clock_mhz) <= abs(clocks[pos] - clock_mhz):
            pos -= 1
        return pos

    def cost(
        self,
        phase: Phase,
        batch_size: int,
        num_new_tokens: int,
        num_context_tokens: int,
        clock_mhz: int,
        power_cap_w: float | None = None,
    ) -> IterationCost:
        """Latency, energy and power of one iteration at ``clock_mhz`` (whole instance).

        Prefill: ``num_new_tokens`` prompt tokens computed, ``num_context_tokens`` cached before. Decode:
        ``num_new_tokens == batch_size``, ``num_context_tokens`` KV tokens read. ``power_cap_w`` is a
        per-GPU power limit below TDP (None: TDP): while the iteration's power per GPU exceeds the cap the
        clock steps down (``effective_clock_mhz``); at the lowest clock it runs even if still above the
        cap (a driver refuses limits that low: ``gpu.min_power_limit_w``).
        """
        # Hot path (every simulated iteration): the same arithmetic, operation for operation, with the
        # helpers' fast paths inlined and max()/min() of two floats spelt out as the builtins compare.
        index = self._clock_index.get(clock_mhz)
        if index is None:
            index = self._index_of(clock_mhz)
        if batch_size <= 0 or num_new_tokens <= 0:
            idle = self.gpu.idle_w * self.tp
            return IterationCost(0.0, 0.0, idle, self.supported_clocks_mhz[index])
        requests = float(batch_size)
        context = float(num_context_tokens if num_context_tokens > 0 else 0)
        if phase == Phase.DECODE:
            tokens = float(self.padded_batch(batch_size))
            overhead_s = DECODE_OVERHEAD_S
            attn_pairs = context + tokens
        else:
            tokens = float(num_new_tokens)
            overhead_s = PREFILL_OVERHEAD_S
            # Causal attention of each request's new tokens over its context and over themselves.
            attn_pairs = tokens * (context + 0.5 * tokens) / requests
        padded = tokens if tokens <= self._tile else self._padded_tokens(tokens)
        compute_per_token = self._layer_compute_s_per_token
        elementwise_s = self._elementwise_s_per_token * tokens
        gemm_memory_s = self._weights_stream_s
        gemm_compute_s = compute_per_token * padded + self._lm_compute_s_per_token * requests
        partial_s = self._partial_share * compute_per_token * tokens
        attn_memory_s = (context + tokens) * self._kv_bytes_per_token_gpu / self._attn_memory_rate
        attn_compute_s = self._attn_flops_per_token_pair * attn_pairs / self._attn_compute_rate
        flat_s = (
            overhead_s
            + self._fixed_s
            + elementwise_s
            + self._allreduce_fixed_s
            + self._allreduce_s_per_token * tokens
        )
        memory_busy_s = gemm_memory_s + attn_memory_s + elementwise_s
        compute_at_max_s = gemm_compute_s + partial_s + attn_compute_s

        gpu = self.gpu
        cap_w = gpu.tdp_w if power_cap_w is None else min(gpu.tdp_w, power_cap_w)
        slowdowns, dynamic = self._slowdown, self._dynamic
        while True:
            slowdown = slowdowns[index]
            gemm_s = gemm_compute_s * slowdown
            attn_s = attn_compute_s * slowdown
            latency_s = (
                flat_s
                + (gemm_s if gemm_s > gemm_memory_s else gemm_memory_s)
                + (attn_s if attn_s > attn_memory_s else attn_memory_s)
                + partial_s * slowdown
            )
            compute_util = compute_at_max_s * slowdown / latency_s
            compute_util = compute_util if compute_util < 1.0 else 1.0
            memory_util = memory_busy_s / latency_s
            memory_util = memory_util if memory_util < 1.0 else 1.0
            power_w = (
                gpu.idle_w
                + dynamic[index] * (gpu.clock_tree_w + gpu.sm_w * compute_util)
                + gpu.memory_w * memory_util
            )
            if power_w <= cap_w or index == 0:
                break
            index -= 1  # the power cap binds: the GPU runs below the set clock
        instance_power_w = power_w * self.tp
        return IterationCost(
            latency_s, instance_power_w * latency_s, instance_power_w, self.supported_clocks_mhz[index]
        )


def performance_model(
    gpu: str = "a100-80gb", model: str = "llama-3.1-8b", tp: int | None = None
) -> PerformanceModel:
    """Simulated performance of ``model`` on ``gpu`` at tensor-parallel degree ``tp`` (None: model default).

    Raises :class:`UnknownProfileError` naming the known choices.
    """
    gpu_key, model_key = gpu.strip().lower(), model.strip().lower()
    if gpu_key not in GPUS:
        raise UnknownProfileError(f"unknown simulated GPU {gpu!r}; known: {', '.join(known_gpus())}")
    if model_key not in MODELS:
        raise UnknownProfileError(f"unknown simulated model {model!r}; known: {', '.join(known_models())}")
    spec = MODELS[model_key]
    degree = spec.default_tp if tp is None else tp
    if degree < 1:
        raise UnknownProfileError(f"tensor-parallel degree must be >= 1, got {degree}")
    check_tp_degree(spec, degree)
    return PerformanceModel(GPUS[gpu_key], spec, degree)


def check_tp_degree(spec: ModelSpec, tp: int) -> None:
    """Raise :class:`UnknownProfileError` unless ``tp`` splits ``spec``'s heads as an engine would.

    vLLM's rule (``ModelConfig.verify_with_parallel_config`` and ``QKVParallelLinear``): the attention heads
    divide evenly by ``tp``; KV heads divide by ``tp``, or, when ``tp`` exceeds them, ``tp`` is a multiple of
    them (each KV head replicated).
    """

    def splits(degree: int) -> bool:
        kv_heads = spec.n_kv_heads
        kv_split = kv_heads % degree if degree < kv_heads else degree % kv_heads
        return spec.n_heads % degree == 0 and kv_split == 0

    if not splits(tp):
        valid = ", ".join(str(d) for d in range(1, spec.n_heads + 1) if splits(d))
        raise UnknownProfileError(
            f"tensor-parallel degree {tp} does not split {spec.name}'s {spec.n_heads} attention heads "
            f"({spec.n_kv_heads} KV heads) evenly; use one of {valid}"
        )


class SimulatedGpu(GpuDevice):
    """A GPU backed by a :class:`PerformanceModel`: clocks are remembered, energy advances as told.

    Energy advances by :meth:`record_iteration` (this GPU's share of an instance's :class:`IterationCost`) and
    :meth:`advance_idle_s`. The power limit (:meth:`set_power_limit_w`, ``min_power_limit_w``..TDP of the
    profile) is what callers pass to :meth:`PerformanceModel.cost` (:func:`simulated_power_cap_w`). With
    ``state_path`` every clock or power-limit change is written there as JSON (``{"locked_clock_mhz": int |
    null, "power_limit_w": float | null, "events": [...]}``), so another process can observe a restore.
    """

    vendor = "simulated"
    measured_energy_source = EnergySource.SIMULATED

    def __init__(
        self,
        index: int,
        model: PerformanceModel,
        state_path: str | Path | None = None,
        driver_latency_s: float = 0.0,
    ) -> None:
        super().__init__(index, f"Simulated {model.gpu.name}")
        self.model = model
        self.locked_clock_mhz: int | None = None
        self._energy_j = 0.0
        self._lock = threading.Lock()
        self._state_path = Path(state_path) if state_path is not None else None
        self._events: list[str] = []
        self.driver_calls = 0
        self.driver_latency_s = driver_latency_s
        self._power_w = model.gpu.idle_w
        self.power_limit_w: float | None = None  # None: the default (TDP)

    def supported_clocks_mhz(self) -> tuple[int, ...]:
        return self.model.supported_clocks_mhz

    def current_clock_mhz(self) -> int:
        return self.locked_clock_mhz if self.locked_clock_mhz is not None else self.model.max_clock_mhz

    def lock_clock_mhz(self, clock_mhz: int) -> int:
        if clock_mhz not in self.model.supported_clocks_mhz:
            raise InvalidArgumentError(
                f"clock {clock_mhz} MHz is not supported by {self.name}; pick one of supported_clocks_mhz()"
            )
        if self.driver_latency_s > 0:
            time.sleep(self.driver_latency_s)  # a real clock change is a millisecond-scale driver call
        with self._lock:
            self.driver_calls += 1
            self.locked_clock_mhz = clock_mhz
            self._persist(f"lock {clock_mhz}")
        return clock_mhz

    def reset_clocks(self) -> None:
        with self._lock:
            self.driver_calls += 1
            self.locked_clock_mhz = None
            self._persist("reset")

    def power_limits(self) -> PowerLimits:
        gpu = self.model.gpu
        current_w = gpu.tdp_w if self.power_limit_w is None else self.power_limit_w
        return PowerLimits(current_w, gpu.tdp_w, gpu.min_power_limit_w, gpu.tdp_w)

    def set_power_limit_w(self, limit_w: float) -> float:
        self.power_limits().check(limit_w)
        with self._lock:
            self.driver_calls += 1
            self.power_limit_w = float(limit_w)
            self._persist(f"power_limit {limit_w:g}")
        return float(limit_w)

    def reset_power_limit(self) -> None:
        with self._lock:
            self.driver_calls += 1
            self.power_limit_w = None
            self._persist("power_reset")

    def energy_j(self) -> float:
        return self._energy_j

    def power_w(self) -> float | None:
        """Average power of the last recorded iteration (idle power before any, or after idle time)."""
        return self._power_w

    def capabilities(self) -> DeviceCapabilities:
        return DeviceCapabilities(can_lock_clocks=True, has_energy_counter=True, has_power_reading=True)

    def record_iteration(self, cost: IterationCost) -> None:
        """Add this GPU's share (1/TP) of an instance iteration's energy."""
        with self._lock:
            self._energy_j += cost.energy_j / self.model.tp
            self._power_w = cost.avg_power_w / self.model.tp

    def advance_idle_s(self, seconds: float) -> None:
        """Add ``seconds`` at idle power."""
        with self._lock:
            self._energy_j += self.model.gpu.idle_w * max(0.0, seconds)
            self._power_w = self.model.gpu.idle_w

    def _persist(self, event: str) -> None:
        if self._state_path is None:
            return
        self._events.append(event)
        state = {
            "locked_clock_mhz": self.locked_clock_mhz,
            "power_limit_w": self.power_limit_w,
            "events": self._events,
        }
        write_text_atomically(self._state_path, json.dumps(state))


def open_simulated(
    gpu: str = "a100-80gb",
    model: str = "llama-3.1-8b",
    tp: int | None = None,
    state_dir: str | Path | None = None,
    driver_latency_s: float = 0.0,
) -> GpuGroup:
    """A group of ``tp`` simulated GPUs sharing one :class:`PerformanceModel`.

    With ``state_dir``, GPU ``i`` persists its clock state to ``state_dir/gpu{i}.json``.
    """
    perf = performance_model(gpu, model, tp)
    paths = [None if state_dir is None else Path(state_dir) / f"gpu{i}.json" for i in range(perf.tp)]
    return GpuGroup([SimulatedGpu(i, perf, path, driver_latency_s) for i, path in enumerate(paths)])


def simulated_power_cap_w(group: GpuGroup) -> float | None:
    """The per-GPU power cap a simulated group runs under (W): the lowest limit set on a member, None when
    every member runs at its default (TDP). Pass it as ``PerformanceModel.cost(..., power_cap_w=...)``."""
    limits = [d.power_limit_w for d in group.devices if isinstance(d, SimulatedGpu) and d.power_limit_w]
    return min(limits) if limits else None


def record_iteration(group: GpuGroup, cost: IterationCost) -> None:
    """Advance the energy counters of a simulated group by one instance iteration."""
    for device in group.devices:
        if isinstance(device, SimulatedGpu):
            device.record_iteration(cost)
