"""What machine the numbers come from: CPU model, cores, GPU, library versions, date; and the
short label the result files are named after. Imports neither torch nor ColossalAI."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


AVX512_CORE_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")  # what oneDNN's bf16 kernels need at least
# ONEDNN_MAX_CPU_ISA caps the instructions oneDNN uses (torch's bf16 check follows it); ranked low to high.
_ONEDNN_ISA_RANK = {
    "SSE41": 0,
    "AVX": 1,
    "AVX2": 2,
    "AVX2_VNNI": 3,
    "AVX2_VNNI_2": 4,
    "AVX512_CORE": 5,
    "AVX512_CORE_VNNI": 6,
    "AVX512_CORE_BF16": 7,
    "AVX10_1_512": 8,
    "AVX512_CORE_FP16": 8,
    "AVX10_1_512_AMX": 9,
    "AVX512_CORE_AMX": 9,
    "AVX10_1_512_AMX_FP16": 10,
    "AVX512_CORE_AMX_FP16": 10,
}
# (kernels, the flags they need, the lowest ONEDNN_MAX_CPU_ISA that lets oneDNN use them), fastest first;
# the names are the keys of rmrun.recipe.plugins.CPU_BF16_KERNELS.
_BF16_TIERS = (
    ("amx_bf16", ("amx_bf16", "amx_tile", *AVX512_CORE_FLAGS), "AVX512_CORE_AMX"),
    ("avx512_bf16", ("avx512_bf16", *AVX512_CORE_FLAGS), "AVX512_CORE_BF16"),
    ("avx512", AVX512_CORE_FLAGS, "AVX512_CORE"),
)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_kernels(flags: set[str] | None = None, *, max_isa: str | None = None) -> str | None:
    """Which kernels run bf16 matmuls under ``torch.autocast`` on this CPU: ``amx_bf16`` (AMX tiles),
    ``avx512_bf16`` (bf16 dot products), ``avx512`` (oneDNN converts bf16 to fp32 and multiplies in
    fp32: no bf16 units), or None where torch's oneDNN has no bf16 at all (no AVX512: what
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` answers; torch then falls back to reference
    kernels, ~20x slower than fp32). From the CPU's flags and ``max_isa`` (default: the
    ``ONEDNN_MAX_CPU_ISA`` environment variable), without importing torch."""
    flags = cpu_flags() if flags is None else flags
    if max_isa is None:
        max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    cap = _ONEDNN_ISA_RANK.get(max_isa.strip().upper(), len(_ONEDNN_ISA_RANK))  # unset or "ALL": no cap
    for kernels, needs, isa in _BF16_TIERS:
        if flags.issuperset(needs) and cap >= _ONEDNN_ISA_RANK[isa]:
            return kernels
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpus() -> list[str]:
    """GPU names from nvidia-smi, without initialising CUDA in this process; [] when none."""
    if not os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


# Dense bf16 peak per GPU (vendor figures, no sparsity), for MFU.
PEAK_BF16_FLOPS = {
    "h200": 989e12,
    "h100 80gb hbm3": 989e12,
    "h100 nvl": 835e12,
    "h100 pcie": 756e12,
    "h100": 989e12,
    "a100": 312e12,
    "l40s": 362e12,
    "a10g": 70e12,
    "l4": 121e12,
}


def peak_bf16_flops(gpu_name: str) -> float | None:
    name = gpu_name.lower()
    for key, flops in PEAK_BF16_FLOPS.items():  # most specific first
        if key in name:
            return flops
    return None


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def info() -> dict:
    gpu_list = gpus()
    return {
        "cpu_model": cpu_model(),
        "cores": cores(),
        "gpu": ", ".join(gpu_list) if gpu_list else "none",
        "peak_bf16_flops_per_gpu": peak_bf16_flops(gpu_list[0]) if gpu_list else None,
        "cpu_bf16_kernels": cpu_bf16_kernels(),
        "torch": version("torch"),
        "colossalai": version("colossalai"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "label": label(gpu_list),
    }


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    text = re.sub(r"\b(cpu|processor|with|radeon graphics)\b", " ", text)
    text = re.sub(r"@.*", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40] or "cpu"


def label(gpu_list: list[str] | None = None) -> str:
    """e.g. ``intel-xeon-2c-nogpu``; ``BENCH_MACHINE`` overrides it."""
    if os.environ.get("BENCH_MACHINE"):
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", os.environ["BENCH_MACHINE"])
    gpu_list = gpus() if gpu_list is None else gpu_list
    gpu = f"{len(gpu_list)}x{_slug(gpu_list[0])}" if gpu_list else "nogpu"
    return f"{_slug(cpu_model())}-{cores()}c-{gpu}"


if __name__ == "__main__":
    print(label())
