"""Model x hardware profiles for the time model, with the source of every constant.

Numbers are derived roofline-style: a step takes the longer of its FLOPs over
the usable compute and its bytes (weights + KV read) over the usable HBM
bandwidth, plus a fixed per-step overhead. Efficiencies (MFU/MBU) and overheads
are estimates, stated as such, chosen to land on published vLLM throughputs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_params: float
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, every KV head (whole model, summed over TP ranks)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    peak_flops: float  # dense BF16 FLOP/s per device
    hbm_bytes_per_s: float  # per device
    kv_link_bytes_per_s: float  # per device, prefill -> decode KV transfer
    kv_link_latency_s: float


@dataclass(frozen=True)
class Profile:
    name: str
    model: ModelSpec
    hardware: HardwareSpec
    tensor_parallel: int = 1
    mfu: float = 0.5  # fraction of peak FLOP/s reached in prefill-heavy steps
    mbu: float = 0.75  # fraction of peak HBM bandwidth reached in decode steps
    step_overhead_s: float = 0.002
    lora_load_s: float = 0.02  # an adapter into a GPU slot (host -> device), per batch
    # /v1/load_lora_adapter: vLLM runs add_lora in the engine core between steps, reading the
    # adapter from disk into host memory; every request on the replica waits meanwhile
    lora_add_s: float = 0.05
    kv_blocks: int = 1024
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192

    @property
    def usable_flops(self) -> float:
        return self.hardware.peak_flops * self.mfu * self.tensor_parallel

    @property
    def usable_bytes_per_s(self) -> float:
        return self.hardware.hbm_bytes_per_s * self.mbu * self.tensor_parallel

    @property
    def kv_link_bytes_per_s(self) -> float:
        return self.hardware.kv_link_bytes_per_s * self.tensor_parallel


# NVIDIA H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100): 989.4 TFLOPS dense
# BF16 (the 1,979 figure is with 2:4 sparsity), 3.35 TB/s HBM3, 80 GB.
# KV transfer: one ConnectX-7 NDR InfiniBand port per GPU, 400 Gb/s = 50 GB/s
# (DGX H100 user guide); ~10 us RDMA setup + NIXL handshake, rounded up to 1 ms.
H100_SXM = HardwareSpec(
    name="h100-sxm",
    peak_flops=989.4e12,
    hbm_bytes_per_s=3.35e12,
    kv_link_bytes_per_s=50e9,
    kv_link_latency_s=0.001,
)

# meta-llama/Llama-3.1-8B config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads,
# head_dim 128; 8.03e9 parameters (model card). KV per token in BF16:
# 2 * 32 * 8 * 128 * 2 B = 131,072 B (128 KiB).
LLAMA_3_1_8B = ModelSpec(
    name="meta-llama/Llama-3.1-8B-Instruct",
    num_params=8.03e9,
    num_layers=32,
    hidden_size=4096,
    num_kv_heads=8,
    head_dim=128,
)

# meta-llama/Llama-3.1-70B config.json: 80 layers, hidden 8192, 64 heads, 8 KV heads,
# head_dim 128; 70.6e9 parameters (model card). KV per token in BF16:
# 2 * 80 * 8 * 128 * 2 B = 327,680 B (320 KiB).
LLAMA_3_1_70B = ModelSpec(
    name="meta-llama/Llama-3.1-70B-Instruct",
    num_params=70.6e9,
    num_layers=80,
    hidden_size=8192,
    num_kv_heads=8,
    head_dim=128,
)

# A made-up tiny model on a made-up device: about 1 ms per step, for tests.
TINY_MODEL = ModelSpec(
    name="tiny",
    num_params=1e6,
    num_layers=2,
    hidden_size=64,
    num_kv_heads=2,
    head_dim=32,
)
TINY_DEVICE = HardwareSpec(
    name="tiny-cpu",
    peak_flops=1e12,
    hbm_bytes_per_s=1e11,
    kv_link_bytes_per_s=1e9,
    kv_link_latency_s=0.0005,
)

PROFILES: dict[str, Profile] = {
    "tiny-cpu": Profile(
        name="tiny-cpu",
        model=TINY_MODEL,
        hardware=TINY_DEVICE,
        mfu=1.0,
        mbu=1.0,
        step_overhead_s=0.001,
        lora_load_s=0.005,
        lora_add_s=0.01,
        kv_blocks=1024,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
    ),
    # Decode at batch 1: (16.06 GB weights) / (3.35 TB/s * 0.75) = 6.4 ms + 2 ms overhead
    # ~ 8.4 ms/token ~ 120 tok/s, in line with vLLM's single-stream Llama-3-8B numbers
    # on H100 (vLLM v0.6 perf blog, 2024-09: ~100-150 tok/s per stream at low load).
    # Prefill: 2 * 8.03e9 FLOP/token / (989.4 TFLOPS * 0.5 MFU) = 32 us/token, i.e.
    # ~30k prompt tok/s, matching published H100 prefill throughput for 8B models.
    # mfu 0.5 and mbu 0.75 are estimates (Databricks "LLM Inference Performance
    # Engineering", 2023, reports MBU 60-80% for well-tuned decode kernels).
    # kv_blocks: 80 GB * 0.9 (vLLM gpu_memory_utilization) - 16 GB weights - ~4 GB
    # activations = ~52 GB / (16 tokens * 128 KiB) = ~24,800 blocks of 16 tokens.
    # LoRA load: rank-16 adapter (~40 MB) over PCIe Gen5 (~50 GB/s) + setup, ~20 ms.
    # LoRA add (/v1/load_lora_adapter): a rank-16 adapter on all 7 linear layers of
    # Llama-3.1-8B has 32 * 16 * (2*(4096+4096) + 2*(4096+1024) + 3*(4096+14336)) = 42M
    # parameters, 84 MB in bf16; read from local NVMe (~2 GB/s) and set up, ~50 ms. An
    # estimate from the shapes and the disk's bandwidth, not a measurement.
    "llama-3.1-8b-h100": Profile(
        name="llama-3.1-8b-h100",
        model=LLAMA_3_1_8B,
        hardware=H100_SXM,
        tensor_parallel=1,
        mfu=0.5,
        mbu=0.75,
        step_overhead_s=0.002,
        lora_load_s=0.02,
        lora_add_s=0.05,
        kv_blocks=24_000,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
    ),
    # TP4: compute and bandwidth scale by 4; two all-reduces per layer (80 layers) at
    # ~10-15 us each on NVLink 4 (900 GB/s) add ~2 ms, so overhead is 4 ms.
    # Decode at batch 1: 141.2 GB / (4 * 3.35 TB/s * 0.7) = 15.1 ms + 4 ms ~ 19 ms/token
    # ~ 52 tok/s per stream, as published for Llama-3-70B TP4 on H100 with vLLM.
    # kv_blocks: 4 * 80 GB * 0.9 - 141 GB - ~8 GB = ~139 GB / (16 * 320 KiB) = ~26,500.
    # LoRA load: rank-16 adapter for 70B is ~200 MB, ~50 ms.
    # LoRA add: 80 * 16 * (2*(8192+8192) + 2*(8192+1024) + 3*(8192+28672)) = 207M
    # parameters, 414 MB in bf16, from NVMe (~2 GB/s): ~200 ms (estimate, as for 8B).
    "llama-3.1-70b-tp4-h100": Profile(
        name="llama-3.1-70b-tp4-h100",
        model=LLAMA_3_1_70B,
        hardware=H100_SXM,
        tensor_parallel=4,
        mfu=0.45,
        mbu=0.7,
        step_overhead_s=0.004,
        lora_load_s=0.05,
        lora_add_s=0.2,
        kv_blocks=26_500,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
    ),
}

DEFAULT_PROFILE = "tiny-cpu"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown profile {name!r}; known: {known}") from None
