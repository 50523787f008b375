#!/usr/bin/env bash
# A separate virtualenv with TRL's current release, for the side-by-side comparison with
# TRL's RewardTrainer (benchmarks/trl_reward.py). Kept apart from rmrun's own environment:
# TRL asks for newer transformers than the ColossalAI pin allows.
#
#   benchmarks/trl_venv.sh            creates .venv-trl (PYTHON: the interpreter, default python3.11)
#
# torch is pinned to 2.13.0, a CPU build: pip takes it from the local wheel cache where a
# machine has one, and a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
VENV="${TRL_VENV:-.venv-trl}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet trl
"$VENV/bin/python" -c "import torch, transformers, trl; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
