"""Fitted constants of the simulated GPU: GPU types and model shapes, each number with its source.

Sources (public; the subsets the calibration tests read ship under ``tests/data``, see its README):
- [VIDUR]  microsoft/vidur ``data/profiling/compute/{a100,h100}/<model>/mlp.csv`` @ 7d475133: per-operator GPU
  times at default (max) clocks vs num_tokens and TP. They cover the linear layers and the element-wise ops,
  *not* the attention kernel: attention is modelled from its FLOPs and bytes (see ``simulated.py``).
  GEMM/element-wise constants below are a least-squares fit (log error) over every row of those files.
- [SPLITWISE-PERF] Mutinifni/splitwise-sim ``data/perf_model.csv`` @ 8f99e7dc: Llama2-70B prompt and token
  iteration times on A100/H100 at TP 2/4/8 (whole iterations, engine overhead included).
- [SPLITWISE-POWER] same repo ``configs/power_model/constant.yaml``: per-GPU idle/prompt/token power
  A100 63/400/250 W, H100 75/700/380 W.
- [A100-DS] NVIDIA A100 datasheet (SXM4 80GB): 312 TFLOPS dense FP16/BF16 tensor, 2039 GB/s HBM2e, 400 W TDP,
  SM clock 210..1410 MHz in 15 MHz steps (``nvidia-smi -q -d SUPPORTED_CLOCKS``), NVLink3 600 GB/s.
- [H100-DS] NVIDIA H100 datasheet (SXM5 80GB): 989.4 TFLOPS dense FP16/BF16 tensor, 3350 GB/s HBM3, 700 W TDP,
  SM clock up to 1980 MHz, NVLink4 900 GB/s.
- [A100-PL] `nvidia-smi -q` of an A100-SXM4 (400 W board) in NVIDIA/nvidia-docker issue #1648: Power Limit,
  Default Power Limit and Max Power Limit 400.00 W, Min Power Limit 100.00 W.
- [H100-PL] NVIDIA DGX user guide, "Managing Power Capping": the Redfish power limit of an SXM GPU reads
  AllowableMin 200 W, AllowableMax 700 W, DefaultSetPoint 700 W (the H100 SXM5's 700 W board power).
- [NCCL] nccl-tests all_reduce published results: bus bandwidth ~230 GB/s on A100 NVLink3, ~360 GB/s on H100
  NVLink4 (about 75-80% of the unidirectional link rate).
- [HF-CONFIG] the models' public ``config.json`` (layers, hidden size, heads, KV heads, FFN size, vocabulary).
- [VLLM-GRAPHS] vLLM V1 default CUDA-graph capture sizes: 1, 2, 4, then 8..248 step 8, then 256..512 step 16.
- [MINISTRAL-CONFIG] the public ``config.json`` of ``bn22/Ministral-3b-instruct-uncensored``, a fine-tune
  whose ``_name_or_path`` is ``ministral/Ministral-3b-instruct`` (the community checkpoint VoltanaLLM's
  scripts name, ``voltana-llm-scripts/demo/d_server.sh``); a fine-tune keeps its base's shape: a Mistral-7B
  cut to 14 layers.
- [ASSUMPTION] stated where no public measurement exists; see the voltage-floor note in ``GpuSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Datasheet facts and fitted constants of one GPU type (per GPU).

    Power model (per GPU, W): ``idle_w + clock_tree_w*g(f) + sm_w*g(f)*u_compute + memory_w*u_memory`` with
    ``g(f) = (f/f_max) * (V(f)/V_max)**2`` and ``V`` flat at ``voltage_floor_ratio*V_max`` below
    ``voltage_floor_mhz``, linear from there to ``V_max`` at ``f_max``. Capped at the power limit (``tdp_w``
    unless a lower limit down to ``min_power_limit_w`` is set): the effective clock drops until the power
    fits (H100 under heavy prefill).

    Voltage floor [ASSUMPTION, DESIGN.md section 4]: the A100/H100 voltage-frequency curves are not public.
    GPUs keep a minimum operating voltage, so below some clock dynamic power falls only linearly with f and
    compute-bound work stops saving energy (it just runs longer at idle power). A floor near 1050 MHz on A100,
    with V_min/V_max = 0.70 (typical of 7 nm parts), puts the energy minimum of prefill at ~1.0-1.1 GHz and
    1410 MHz at ~1.5x that minimum, matching the VoltanaLLM paper's U-curve (minimum inside 1005..1410 MHz)
    and throttLL'eM's ~1050 MHz at maximum batch. H100 uses the same relative floor (1470/1980 = 0.74 of max).
    """

    name: str
    clocks_mhz: tuple[int, ...]
    peak_flop_per_s: float
    hbm_bytes_per_s: float
    hbm_capacity_bytes: float
    allreduce_bus_bytes_per_s: float
    tdp_w: float
    idle_w: float
    min_power_limit_w: float  # the lowest power limit the driver accepts (the default and maximum is tdp_w)
    # Latency, fitted to [VIDUR] linear and element-wise operators (per transformer layer, per GPU).
    gemm_memory_efficiency: float
    gemm_compute_efficiency: float
    gemm_tile_tokens: int
    gemm_partial_tile_share: float
    gemm_fixed_s: float
    elementwise_fixed_s: float
    elementwise_traffic_factor: float
    # Attention (not in [VIDUR]): FLOPs / bytes over peak times these efficiencies [ASSUMPTION, see each].
    attention_compute_efficiency: float
    attention_memory_efficiency: float
    allreduce_step_latency_s: float
    # Power (per GPU).
    clock_tree_w: float
    sm_w: float
    memory_w: float
    voltage_floor_mhz: int
    voltage_floor_ratio: float

    @property
    def max_clock_mhz(self) -> int:
        """Highest supported SM clock (MHz)."""
        return self.clocks_mhz[-1]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer [HF-CONFIG], its default tensor-parallel degree and its context
    length (tokens, prompt + output: the config's ``max_position_embeddings``, what an engine takes as its
    default ``max_model_len`` / ``context_length``)."""

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    default_tp: int
    context_tokens: int
    bytes_per_param: int = 2  # FP16/BF16 weights and KV cache

    @property
    def layer_params(self) -> int:
        """Weights of the linear layers of one transformer block (q, k, v, o, gate, up, down)."""
        q_and_o = 2 * self.hidden * self.n_heads * self.head_dim
        k_and_v = 2 * self.hidden * self.n_kv_heads * self.head_dim
        return q_and_o + k_and_v + 3 * self.hidden * self.ffn

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """KV-cache bytes one token occupies in one layer (keys and values, all KV heads)."""
        return 2 * self.n_kv_heads * self.head_dim * self.bytes_per_param


A100_CLOCKS_MHZ = tuple(range(210, 1411, 15))  # [A100-DS]
H100_CLOCKS_MHZ = tuple(range(345, 1981, 15))  # [H100-DS]; 345 MHz is the lowest listed H100 SXM clock

GPUS: dict[str, GpuSpec] = {
    "a100-80gb": GpuSpec(
        name="a100-80gb",
        clocks_mhz=A100_CLOCKS_MHZ,
        peak_flop_per_s=312e12,  # [A100-DS]
        hbm_bytes_per_s=2.039e12,  # [A100-DS]
        hbm_capacity_bytes=80e9,  # [A100-DS]
        allreduce_bus_bytes_per_s=230e9,  # [NCCL]
        tdp_w=400.0,  # [A100-DS]; also the default and maximum power limit [A100-PL]
        idle_w=63.0,  # [SPLITWISE-POWER] idle_power a100-80gb
        min_power_limit_w=100.0,  # [A100-PL]
        gemm_memory_efficiency=0.71,  # [VIDUR] fit: weight streaming at 1..128 tokens
        gemm_compute_efficiency=0.82,  # [VIDUR] fit: 2048..4096 tokens
        gemm_tile_tokens=128,  # [VIDUR] the step at 128 -> 136 tokens (e.g. Llama-3-8B TP1: 0.41 -> 0.57 ms)
        gemm_partial_tile_share=0.14,  # [VIDUR] fit: the actual (unpadded) work on top of the roofline
        gemm_fixed_s=20e-6,  # [VIDUR] fit: launch/tail of the four GEMMs per layer
        elementwise_fixed_s=10.9e-6,  # [VIDUR] fit: norms, rope, activation, residual add
        elementwise_traffic_factor=20.9,  # [VIDUR] fit: bytes moved per (token x hidden x 2 B)
        attention_compute_efficiency=0.60,  # [ASSUMPTION] FlashAttention-2 forward reaches ~50-70% of peak
        attention_memory_efficiency=0.70,  # [ASSUMPTION] paged decode attention reaches ~70% of HBM peak
        allreduce_step_latency_s=15e-6,  # [SPLITWISE-PERF] fit: 70B TP2/4/8, prompts 512-2048, batch 1-16
        clock_tree_w=116.0,  # [SPLITWISE-POWER] fit: Llama2-70B TP4 token (decode, batch 16) power 250 W
        sm_w=261.0,  # [SPLITWISE-POWER] fit: Llama2-70B TP4 prompt (2048 tokens) power 400 W = TDP
        memory_w=90.0,  # [ASSUMPTION] HBM2e at full bandwidth (the two fits above take it as given)
        voltage_floor_mhz=1050,  # [ASSUMPTION] see class docstring
        voltage_floor_ratio=0.70,  # [ASSUMPTION] see class docstring
    ),
    "h100-80gb": GpuSpec(
        name="h100-80gb",
        clocks_mhz=H100_CLOCKS_MHZ,
        peak_flop_per_s=989.4e12,  # [H100-DS]
        hbm_bytes_per_s=3.35e12,  # [H100-DS]
        hbm_capacity_bytes=80e9,  # [H100-DS]
        allreduce_bus_bytes_per_s=360e9,  # [NCCL]
        tdp_w=700.0,  # [H100-DS]; also the default and maximum power limit [H100-PL]
        idle_w=75.0,  # [SPLITWISE-POWER] idle_power h100-80gb
        min_power_limit_w=200.0,  # [H100-PL]
        gemm_memory_efficiency=0.79,  # [VIDUR] fit
        gemm_compute_efficiency=0.79,  # [VIDUR] fit
        gemm_tile_tokens=128,  # [VIDUR] same 128-token steps as on A100
        gemm_partial_tile_share=0.18,  # [VIDUR] fit
        gemm_fixed_s=20e-6,  # [VIDUR] fit
        elementwise_fixed_s=10.6e-6,  # [VIDUR] fit
        elementwise_traffic_factor=18.7,  # [VIDUR] fit
        attention_compute_efficiency=0.50,  # [ASSUMPTION] FlashAttention-2 on H100 (FA3 reaches ~75%)
        attention_memory_efficiency=0.70,  # [ASSUMPTION] as A100
        allreduce_step_latency_s=11e-6,  # [SPLITWISE-PERF] fit: as A100
        clock_tree_w=225.0,  # [SPLITWISE-POWER] fit: Llama2-70B TP4 token (batch 16) power 380 W
        sm_w=652.0,  # [SPLITWISE-POWER] fit: 2048-token prompt would draw 760 W at 1980 MHz; capped to 700 W
        memory_w=130.0,  # [ASSUMPTION] HBM3 at full bandwidth
        voltage_floor_mhz=1470,  # [ASSUMPTION] same relative floor as A100
        voltage_floor_ratio=0.70,  # [ASSUMPTION]
    ),
}

MODELS: dict[str, ModelSpec] = {
    # [HF-CONFIG] meta-llama/Llama-3.1-8B: 32 layers, 4096 hidden, 32 heads / 8 KV, 14336 FFN, 128256 vocab,
    # max_position_embeddings 131072.
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 1, 131072),
    # [HF-CONFIG] meta-llama/Llama-2-7b-hf: 32 layers, 4096 hidden, 32 heads (MHA), 11008 FFN, 32000 vocab,
    # max_position_embeddings 4096.
    "llama-2-7b": ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, 1, 4096),
    # [HF-CONFIG] meta-llama/Llama-2-70b-hf: 80 layers, 8192 hidden, 64 heads / 8 KV heads, 28672 FFN, 4096.
    "llama-2-70b": ModelSpec("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 4, 4096),
    # [HF-CONFIG] Qwen/Qwen3-32B: 64 layers, 5120 hidden, 64 heads x 128 / 8 KV, 25600 FFN, 151936 vocab,
    # max_position_embeddings 40960 (the model card: 32,768 native context, 131,072 with YaRN).
    "qwen3-32b": ModelSpec("qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, 2, 40960),
    # [MINISTRAL-CONFIG] ministral/Ministral-3b-instruct: 14 layers, 4096 hidden, 32 heads x 128 / 8 KV,
    # 14336 FFN, 32000 vocab, max_position_embeddings 131072 (sliding window 4096 is not modelled: it only
    # caps attention reads beyond 4096 tokens, which the paper's workloads hardly reach).
    "ministral-3b": ModelSpec("ministral-3b", 14, 4096, 32, 8, 128, 14336, 32000, 1, 131072),
}

# vLLM V1 default CUDA-graph capture sizes [VLLM-GRAPHS]: decode batches are padded up to the next one.
CAPTURE_SIZES: tuple[int, ...] = (1, 2, 4, *range(8, 256, 8), *range(256, 513, 16))

# Per-iteration engine time outside the GPU kernels (scheduling, sampling, Python), s.
# [ASSUMPTION] vLLM V1 with CUDA graphs and async scheduling: ~2 ms per prefill step, ~1 ms per decode step.
# (The older splitwise stack spends more per step; its TP-dependent part is absorbed by the all-reduce fit.)
PREFILL_OVERHEAD_S = 2e-3
DECODE_OVERHEAD_S = 1e-3

GPU_MEMORY_UTILIZATION = 0.90  # vLLM default ``gpu_memory_utilization``
ACTIVATION_RESERVE_BYTES = 4e9  # [ASSUMPTION] activations, CUDA graphs and allocator slack per GPU


def known_gpus() -> tuple[str, ...]:
    """Names accepted as ``gpu`` by :func:`voltana.hardware.simulated.performance_model`."""
    return tuple(GPUS)


def known_models() -> tuple[str, ...]:
    """Names accepted as ``model`` by :func:`voltana.hardware.simulated.performance_model`."""
    return tuple(MODELS)
