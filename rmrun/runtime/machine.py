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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # hardware bf16 matrix multiply, fastest first


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


def cpu_bf16_units(flags: set[str] | None = None) -> str | None:
    """The CPU's bf16 matrix unit (``amx_bf16``, ``avx512_bf16``), or None."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


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
