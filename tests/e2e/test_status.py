"""`rmrun status` for a running (killed) run and for a run with a quarantined checkpoint."""

from __future__ import annotations

import glob
import os
import re

from tests.helpers import child_env, rmrun, small_recipe


def test_status_of_a_killed_run_and_of_a_quarantined_checkpoint(tmp_path):
    # Blocking checkpoints: checkpoint 4 is committed before step 5 (a background upload
    # would be committed at a later step boundary).
    recipe = small_recipe(
        tmp_path,
        extra="[checkpoint]\ninterval_steps = 2\nasync_upload = false\n[schedule]\nmax_epochs = 1\nbatch_size = 8\n",
    )
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode == -9

    status = rmrun("status", recipe)
    assert status.returncode == 0, status.stderr
    # The killed process no longer holds the lease lock: its step is not "running" any more.
    assert "train/epoch-0    stopped  attempts 1" in status.stdout
    assert "tokenize         done" in status.stdout
    assert "evaluate         pending  attempts 0" in status.stdout  # what is left shows too
    assert "save             pending  attempts 0" in status.stdout
    assert "latest checkpoint: ckpt-0000000004 (step 4, epoch 0, 32 pairs of the epoch consumed)" in status.stdout
    assert "run: not complete" in status.stdout
    assert "lease: generation 1" in status.stdout

    # Flip a byte of the newest checkpoint: the next run quarantines it and status shows why.
    newest = sorted(glob.glob(str(tmp_path / "state" / "states" / "ckpt-*")))[-1]
    weights = glob.glob(os.path.join(newest, "*", "model.safetensors"))[0]
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from ckpt-0000000002" in resumed.stdout
    # The resumed run itself says what it quarantined, and why.
    assert re.search(r"quarantined ckpt-0000000004 \(g\S+\): state ckpt-0000000004 .*(sha256|size)", resumed.stdout)
    status = rmrun("status", recipe)
    assert "quarantined: ckpt-0000000004" in status.stdout
    assert "sha256" in status.stdout or "size" in status.stdout
    assert "run: complete" in status.stdout


def test_verify_resume_reports_bit_identical_runs(tmp_path):
    recipe = small_recipe(
        tmp_path, extra="[checkpoint]\ninterval_steps = 3\n[schedule]\nmax_epochs = 1\nbatch_size = 8\n"
    )
    result = rmrun("verify-resume", recipe, "--kills", "2", "--workdir", str(tmp_path / "verify"))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "bit-identical after 2 kill(s)" in result.stdout
    assert result.stdout.count("SIGKILL at step") == 2


def test_interval_seconds_commits_checkpoints_without_a_step_interval(tmp_path):
    recipe = small_recipe(
        tmp_path,
        extra="[checkpoint]\ninterval_seconds = 0.001\nasync_upload = false\n[schedule]\nmax_epochs = 1\nbatch_size = 8\n",
    )
    killed = rmrun(
        "run", recipe, "--set", "checkpoint.interval_steps=1000000", env=child_env(RMRUN_FAULTS="kill@step:6")
    )
    assert killed.returncode == -9
    status = rmrun("status", recipe)
    # Every step is past the interval: the newest checkpoint is the step before the kill.
    assert "latest checkpoint: ckpt-0000000005 (step 5," in status.stdout
