"""How much each benchmark measures: the full run (``benchmarks/run.sh``, about 10 minutes on
2 cores) or the smoke (``benchmarks/run.sh --smoke`` / ``BENCH_SMOKE=1``, one short
iteration of everything, well under 2 minutes)."""

from __future__ import annotations

import os

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")

# Intra-op threads per rank. 1 keeps 1 process vs 2 processes a clean data-parallel
# comparison on a 2-core machine, and keeps timings usable when other work shares the
# cores (with 2 OpenMP threads per process a step waits for whichever thread was descheduled).
THREADS_PER_RANK = int(os.environ.get("BENCH_THREADS", "1"))

MAX_LENGTH = 512
BATCH_SIZE = 8  # pairs per rank per optimizer step (the schema default)
CHECKPOINT_INTERVAL = None  # None: the schema default (checkpoint.interval_steps), read at run time

if SMOKE:
    TOKENIZE_PAIRS, TOKENIZE_ROUNDS = 300, 1
    TRAIN_PAIRS = 200
    TRAIN_ROUNDS = {  # per model size: rounds after the warm-up round
        "tiny": {
            "max_rounds": 1,
            "min_rounds": 1,
            "budget_seconds": 0,
            "colossalchat_every": 1,
            "warmup": False,
            "memory_probe": False,
        },
        "small": {
            "max_rounds": 1,
            "min_rounds": 1,
            "budget_seconds": 0,
            "colossalchat_every": 1,
            "warmup": False,
            "memory_probe": False,
        },
    }
    TRAIN_ROUNDS["medium"] = TRAIN_ROUNDS["small"]
    CHECKPOINT_ROUNDS = GPU_CHECKPOINT_ROUNDS = 1
    SHARED_ROUNDS = {size: dict(rounds) for size, rounds in TRAIN_ROUNDS.items()}
    STARTUP_SIZES, STARTUP_ROUNDS, STARTUP_PAIRS = ("tiny",), 1, 200
    # Checkpoint stall: steps per run, checkpoint interval, rounds, store bandwidth (bytes/s).
    STALL_STEPS, STALL_INTERVAL, STALL_ROUNDS, STALL_BYTES_PER_SECOND = 9, 4, 1, 64 * 2**20
    MEMORY_PAIRS = 4000  # synthetic tokenized pairs whose arrays are loaded or mapped
else:
    TOKENIZE_PAIRS, TOKENIZE_ROUNDS = 6000, 3
    TRAIN_PAIRS = 2000
    TRAIN_ROUNDS = {
        "tiny": {"max_rounds": 240, "min_rounds": 40, "budget_seconds": 60, "colossalchat_every": 3},
        "small": {"max_rounds": 80, "min_rounds": 16, "budget_seconds": 120, "colossalchat_every": 4},
    }
    # GPU plugins on the ~156M model: steps take tens of ms, so rounds are cheap; checkpoints are GBs.
    TRAIN_ROUNDS["medium"] = {"max_rounds": 60, "min_rounds": 20, "budget_seconds": 20, "colossalchat_every": 1}
    CHECKPOINT_ROUNDS = 5
    GPU_CHECKPOINT_ROUNDS = 2
    # The shared-prompt forward against the standard one (and the hand loop), per data profile.
    SHARED_ROUNDS = {
        "tiny": {"max_rounds": 160, "min_rounds": 30, "budget_seconds": 45},
        "small": {"max_rounds": 60, "min_rounds": 12, "budget_seconds": 75},
        "medium": {"max_rounds": 40, "min_rounds": 15, "budget_seconds": 25},
    }
    STARTUP_SIZES, STARTUP_ROUNDS, STARTUP_PAIRS = ("tiny", "small"), 2, 2000
    # The tiny model's checkpoint (model + AdamW state, ~2.1 MB) takes ~1 s at 2 MiB/s.
    STALL_STEPS, STALL_INTERVAL, STALL_ROUNDS, STALL_BYTES_PER_SECOND = 81, 20, 2, 2 * 2**20
    MEMORY_PAIRS = 40000
