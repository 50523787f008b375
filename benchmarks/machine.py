"""The machine description lives in ``rmrun.runtime.machine`` (``rmrun bench`` stamps its results with it)."""

from rmrun.runtime.machine import PEAK_BF16_FLOPS, cores, cpu_model, gpus, info, label, peak_bf16_flops, version

__all__ = ["PEAK_BF16_FLOPS", "cores", "cpu_model", "gpus", "info", "label", "peak_bf16_flops", "version"]

if __name__ == "__main__":
    print(label())
