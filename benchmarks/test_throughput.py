"""rmrun throughput benchmarks (pytest-benchmark). Run them with ``benchmarks/run.sh``.

- ``test_tokenize``: ``rmrun.data.tokenize_pairs`` pairs/s; pytest-benchmark times each round.
- ``test_train[plugin-Nproc-size]``: rmrun's training step vs a hand-written PyTorch loop vs
  ColossalChat's batching, interleaved step by step in the same worker processes, plus
  checkpoint save/load. pytest-benchmark's own timing of these entries is the wall time of
  the whole side-by-side measurement (one round); the per-variant numbers are measured per
  optimizer step inside the workers and stored in ``extra_info``.
- ``test_shared_prompt[profile-size]``: rmrun's standard forward vs its shared-prompt forward
  (one sequence per pair), without and with packing, vs the hand-written loop, interleaved, on
  the long-tailed and the prompt-heavy data profiles.
- ``test_startup[size]``: process start to first optimizer step, fresh vs resumed ``rmrun run``.

CUDA-only plugins are skipped with the reason "needs CUDA" where there is no GPU.
Nothing here asserts a timing: the goals are reported (MET / MISSED), not enforced.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import settings
from benchmarks.data import PROFILES
from benchmarks.harness import GPU_MODEL_SIZES, MODEL_SIZES, model_dir
from benchmarks.metrics import summarize_startup, summarize_train
from rmrun.recipe.plugins import CUDA_PLUGINS

# (plugin, processes): ddp with 1 and 2 processes on CPU; the CUDA plugins with one process per GPU.
PLUGIN_CONFIGS = [("ddp", 1), ("ddp", 2)] + [(name, 1) for name in CUDA_PLUGINS]


def peak_flops() -> float | None:
    from benchmarks.machine import gpus, peak_bf16_flops

    found = gpus()
    return peak_bf16_flops(found[0]) if found else None


def _checkpoint_interval() -> int:
    if settings.CHECKPOINT_INTERVAL is not None:
        return settings.CHECKPOINT_INTERVAL
    from rmrun.recipe.schema import CheckpointSection

    return CheckpointSection().interval_steps


def test_tokenize(benchmark):
    from benchmarks.data import load_tokenizer, make_pairs, tokenize

    tokenizer = load_tokenizer()
    pairs = make_pairs(settings.TOKENIZE_PAIRS, seed=2)
    tokenize(pairs[:64], tokenizer)  # template compilation and tokenizer warm-up, untimed
    result = benchmark.pedantic(
        tokenize, args=(pairs, tokenizer), rounds=settings.TOKENIZE_ROUNDS, iterations=1, warmup_rounds=0
    )
    benchmark.group = "tokenize"
    median = benchmark.stats.stats.median
    assert len(result) == len(pairs)
    benchmark.extra_info.update(
        {
            "kind": "tokenize",
            "pairs": len(pairs),
            "tokens": result.stats["tokens"],
            "pairs_per_second": len(pairs) / median,
            "tokens_per_second": result.stats["tokens"] / median,
            "truncated": result.stats["truncated"],
        }
    )


@pytest.mark.parametrize("size", MODEL_SIZES + GPU_MODEL_SIZES)
@pytest.mark.parametrize("plugin,nproc", PLUGIN_CONFIGS, ids=[f"{p}-{n}proc" for p, n in PLUGIN_CONFIGS])
def test_train(benchmark, pools, cuda_available, plugin, nproc, size):
    if plugin in CUDA_PLUGINS and not cuda_available:
        pytest.skip("needs CUDA")
    if size in GPU_MODEL_SIZES and not cuda_available:
        pytest.skip("needs CUDA")
    if cuda_available and size not in GPU_MODEL_SIZES:
        pytest.skip("on a GPU the plugins are timed on the medium model")
    if cuda_available and nproc > cuda_available:
        pytest.skip(f"needs {nproc} GPUs")
    # The side-by-side comparisons are about the CPU path (same fp32 arithmetic as the hand loop).
    variants = ("rmrun", "hand", "colossalchat") if plugin == "ddp" and not cuda_available else ("rmrun",)
    pool = pools.get(nproc)
    interval = _checkpoint_interval()
    checkpoint_rounds = settings.GPU_CHECKPOINT_ROUNDS if size in GPU_MODEL_SIZES else settings.CHECKPOINT_ROUNDS

    def measure():
        return pool.run(
            "train",
            size=size,
            plugin=plugin,
            variants=variants,
            num_pairs=settings.TRAIN_PAIRS,
            batch_size=settings.BATCH_SIZE,
            max_length=settings.MAX_LENGTH,
            checkpoint_rounds=checkpoint_rounds,
            **settings.TRAIN_ROUNDS[size],
        )

    raw = benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "train"
    summary = summarize_train(raw, checkpoint_interval=interval, peak_flops=peak_flops())
    benchmark.extra_info.update({"kind": "train", "plugin": plugin, "nproc": nproc, "model": size, **summary})

    for name, v in summary["variants"].items():
        assert v["steps"] >= 1 and v["pairs_per_second"] > 0, name
    if "rmrun_vs_hand" in summary:
        # Same init, same batches, same arithmetic: the losses must agree step for step (bit for
        # bit with one process; the 2-process mean over ranks is taken in a different order), or
        # the comparison would not be like for like.
        diff = summary["rmrun_vs_hand"]["loss_max_abs_diff"]
        assert diff is not None and math.isfinite(diff) and diff < 1e-5, diff


@pytest.mark.parametrize("size", MODEL_SIZES + GPU_MODEL_SIZES)
@pytest.mark.parametrize("profile", PROFILES)
def test_shared_prompt(benchmark, pools, cuda_available, profile, size):
    if cuda_available and size not in GPU_MODEL_SIZES:
        pytest.skip("on a GPU the shared-prompt forward is timed on the medium model")
    if size in GPU_MODEL_SIZES and not cuda_available:
        pytest.skip("needs CUDA")
    pool = pools.get(1)
    # On CUDA (bf16): the pair attention against the dense block mask; on CPU (fp32) they are
    # the same forward, and the hand-written loop checks the standard one.
    variants = ("rmrun", "dense", "shared", "packed") if cuda_available else ("rmrun", "shared", "packed", "hand")

    def measure():
        return pool.run(
            "train",
            size=size,
            variants=variants,
            num_pairs=settings.TRAIN_PAIRS,
            profile=profile,
            batch_size=settings.BATCH_SIZE,
            max_length=settings.MAX_LENGTH,
            **settings.SHARED_ROUNDS[size],
        )

    raw = benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "shared_prompt"
    summary = summarize_train(raw, checkpoint_interval=_checkpoint_interval())
    benchmark.extra_info.update({"kind": "shared_prompt", "plugin": "ddp", "nproc": 1, "model": size, **summary})
    for name, v in summary["variants"].items():
        assert v["steps"] >= 1 and v["pairs_per_second"] > 0, name
    if "rmrun_vs_hand" in summary:
        assert summary["rmrun_vs_hand"]["loss_max_abs_diff"] < 1e-5  # the standard forward is the hand loop's


@pytest.mark.parametrize("size", settings.STARTUP_SIZES)
def test_startup(benchmark, pools, size):
    from benchmarks.startup import measure_startup

    pools.close()  # no idle worker processes beside the runs being timed

    def measure():
        return measure_startup(
            model_dir=model_dir(size),
            rounds=settings.STARTUP_ROUNDS,
            num_pairs=settings.STARTUP_PAIRS,
            batch_size=settings.BATCH_SIZE,
            threads=settings.THREADS_PER_RANK,
        )

    raw = benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.group = "startup"
    summary = summarize_startup(raw)
    benchmark.extra_info.update({"kind": "startup", "plugin": "ddp", "nproc": 1, "model": size, **summary, "raw": raw})
    assert summary["resumed_first_step_number"] > 1  # it really continued from a checkpoint
