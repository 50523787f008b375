#!/usr/bin/env bash
# The plugin comparison on the shipped recipes, as `rmrun bench` invocations: what a user
# runs on their own recipe (see "Which plugin?" in docs/plugins.md).
#
#   benchmarks/recipes.sh [OUT]    results under OUT (default benchmarks/results/recipes/<machine>-*)
#
# On CPU: the quickstart with 1 and 2 processes (the CUDA plugins are listed as skipped), and ddp's
# precision (bf16 where torch has oneDNN bf16 kernels on the CPU; fp16 is listed as needing CUDA).
# With GPUs: also recipes/llama2-7b-zero2.toml over the sharded plugins, batch size and
# gradient checkpointing (it needs the model of that recipe in the local Hugging Face cache).
# Environment: PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
TORCHRUN="$(dirname "$PY")/torchrun"
out=${1:-benchmarks/results/recipes}
label=$("$PY" -m rmrun.runtime.machine)
export PYTHONWARNINGS=ignore

sweep=(--sweep plugin.name=ddp,zero2,gemini --sweep schedule.batch_size=8,32 --sweep plugin.grad_checkpoint=false,true)
"$PY" -m rmrun bench recipes/quickstart.toml "${sweep[@]}" --out "$out/$label-quickstart-1proc"
"$TORCHRUN" --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=localhost:0 \
    -m rmrun bench recipes/quickstart.toml "${sweep[@]}" --out "$out/$label-quickstart-2proc"
"$PY" -m rmrun bench recipes/quickstart.toml --sweep plugin.mixed_precision=fp32,bf16,fp16 \
    --out "$out/$label-quickstart-precision"

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L | wc -l)
    "$TORCHRUN" --nproc_per_node="$gpus" --rdzv-backend=c10d --rdzv-endpoint=localhost:0 \
        -m rmrun bench recipes/llama2-7b-zero2.toml --sweep plugin.name=zero2,zero2_cpu,gemini,3d \
        --sweep schedule.batch_size=4,8 --sweep plugin.grad_checkpoint=false,true --out "$out/$label-llama2-7b"
fi
