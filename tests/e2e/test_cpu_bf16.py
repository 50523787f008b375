"""ddp in bf16 on the CPU, run as users run it: the forward under ``torch.autocast`` (oneDNN's bf16
kernels), fp32 weights and AdamW. A run killed mid-epoch and resumed is bit-identical to an
uninterrupted bf16 run (weights, metrics.jsonl, eval.json), a resume that drops the RNG streams is
not, and bf16 really ran: the run says so and its losses differ from an fp32 run's.

The recipe and the harness are tests/e2e/test_resume.py's (tests/resume_harness.py): 1 process,
local state, 26 steps, a checkpoint every 4, attention dropout 0.1 so the RNG streams matter.
``ONEDNN_MAX_CPU_ISA`` caps what oneDNN (and torch's bf16 check) may use, which lets this machine
play a CPU without bf16 kernels for the refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rmrun.recipe.plugins import cpu_precision_note
from rmrun.recipe.schema import PluginSection
from rmrun.runtime.machine import cpu_bf16_kernels
from tests.helpers import RESUME_RECIPE, child_env, rmrun
from tests.resume_harness import (
    EXIT_OK,
    EXIT_USAGE,
    ONE_LOCAL,
    Harness,
    assert_identical,
    differing_tensors,
    read_export,
)

pytestmark = pytest.mark.skipif(cpu_bf16_kernels() is None, reason="torch has no oneDNN bf16 kernels on this CPU")

BF16 = ("plugin.mixed_precision=bf16",)
NOTE = cpu_precision_note(PluginSection(mixed_precision="bf16"), cpu_bf16=cpu_bf16_kernels())


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return Harness(tmp_path_factory.mktemp("cpu-bf16"))


@pytest.fixture(scope="module")
def uninterrupted(harness):
    run = harness.new_run(ONE_LOCAL, "bf16-uninterrupted")
    result = harness.run(run, sets=BF16, expect=EXIT_OK)
    assert NOTE is not None and NOTE in result.output, result.describe()
    return read_export(run.export)


@pytest.fixture(scope="module")
def killed_mid_epoch(harness):
    run = harness.new_run(ONE_LOCAL, "bf16-killed")
    harness.run(run, sets=BF16, faults="kill@step:6", expect="killed")
    return run


def test_check_says_which_kernels_run_bf16(tmp_path):
    done = rmrun("check", str(RESUME_RECIPE), "--set", "plugin.mixed_precision=bf16")
    assert done.returncode == 0, done.stderr
    assert f"precision: {NOTE}\n" in done.stdout
    assert '"autocast": "bf16"' in done.stdout


def test_check_refuses_bf16_where_torch_has_no_bf16_kernels_in_one_line():
    done = rmrun(
        "check", str(RESUME_RECIPE), "--set", "plugin.mixed_precision=bf16", env=child_env(ONEDNN_MAX_CPU_ISA="AVX2")
    )
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        f"rmrun: {RESUME_RECIPE}: "
        '[plugin].mixed_precision: "bf16" on this CPU: torch has no oneDNN bf16 kernels without AVX512 '
        '(avx512f/bw/vl/dq in /proc/cpuinfo) and its fallback is ~20x slower than fp32; use "fp32"'
    ], done.stderr


@pytest.mark.parametrize("max_isa", ["", "AVX512_CORE", "AVX2"])
def test_the_machine_fact_agrees_with_torch(max_isa):
    """rmrun reads /proc/cpuinfo (``rmrun check`` imports no torch); torch asks oneDNN."""
    code = (
        "import torch; from rmrun.runtime.machine import cpu_bf16_kernels; "
        "print(torch.ops.mkldnn._is_mkldnn_bf16_supported(), cpu_bf16_kernels() is not None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(ONEDNN_MAX_CPU_ISA=max_isa), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    torch_says, rmrun_says = done.stdout.split()
    assert torch_says == rmrun_says, done.stdout


def test_a_bf16_run_killed_mid_epoch_resumes_bit_identical(harness, uninterrupted, killed_mid_epoch):
    run = harness.copy_run(killed_mid_epoch, "bf16-resumed")
    result = harness.run(run, sets=BF16, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert_identical(uninterrupted, read_export(run.export))


def test_a_bf16_resume_without_its_rng_streams_differs(harness, uninterrupted, killed_mid_epoch):
    run = harness.copy_run(killed_mid_epoch, "bf16-no-restore-rng")
    result = harness.run(run, sets=BF16, faults="no-restore=rng", expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    got = read_export(run.export)
    assert differing_tensors(uninterrupted, got), "no-restore=rng: the weights are still bit-identical"
    assert got.metrics != uninterrupted.metrics


def test_bf16_really_ran_its_losses_differ_from_fp32_and_its_weights_stay_fp32(harness, uninterrupted):
    run = harness.new_run(ONE_LOCAL, "fp32")
    result = harness.run(run, sets=("plugin.mixed_precision=fp32",), expect=EXIT_OK)
    assert "bf16 autocast" not in result.output
    fp32 = read_export(run.export)
    first_fp32, first_bf16 = fp32.metric_lines()[0]["loss"], uninterrupted.metric_lines()[0]["loss"]
    # the same weights and batch: only bf16 rounding in the forward separates the first losses
    assert first_fp32 != first_bf16 and abs(first_fp32 - first_bf16) < 0.05, (first_fp32, first_bf16)
    assert {str(t.dtype) for t in uninterrupted.tensors.values()} == {"torch.float32"}
