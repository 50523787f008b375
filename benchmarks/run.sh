#!/usr/bin/env bash
# The one command for rmrun's throughput benchmarks.
#
#   benchmarks/run.sh              full run (~10 min on 2 cores), results in benchmarks/results/
#   benchmarks/run.sh --smoke      one short iteration of each benchmark (< 2 min), for CI;
#                                  results in ${TMPDIR:-/tmp}/rmrun-bench-smoke unless --out
#   benchmarks/run.sh --out DIR    write the results to DIR instead
#   benchmarks/run.sh -- ARGS       extra pytest arguments (e.g. -- -k test_train: the GPU run)
#
# Writes <machine>.json (pytest-benchmark), <machine>.md (tables, goals MET / MISSED) and
# <machine>.png (pairs/s per plugin and config); <machine> is e.g. intel-xeon-2c-nogpu
# (override with BENCH_MACHINE). Environment: PYTHON (default .venv/bin/python, else python3),
# BENCH_THREADS (intra-op threads per rank, default 1).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
out=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; extra=("$@"); break ;;
        --smoke) smoke=1 ;;
        --out) out="${2:?--out needs a directory}"; shift ;;
        --out=*) out="${1#--out=}" ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "$out" ]; then
    if [ "$smoke" = 1 ]; then out="${TMPDIR:-/tmp}/rmrun-bench-smoke"; else out="benchmarks/results"; fi
fi
mkdir -p "$out"

export BENCH_SMOKE="$smoke"
export TOKENIZERS_PARALLELISM=false
machine="$("$PYTHON" -m benchmarks.machine)"
json="$out/$machine.json"

started=$(date +%s)
# -p no:cacheprovider: nothing written beside the sources; --benchmark-disable-gc is left off
# on purpose: the workers manage the collector themselves around each timed step.
"$PYTHON" -m pytest benchmarks -p no:cacheprovider -q -rs \
    --benchmark-json="$json" --benchmark-columns=min,median,max,rounds --benchmark-sort=name "${extra[@]}"
"$PYTHON" -m benchmarks.report "$json" --out-dir "$out"
echo "run.sh: done in $(( $(date +%s) - started )) s; results: $out/$machine.{json,md,png}"
