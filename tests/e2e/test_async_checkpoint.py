"""Checkpoints uploaded in the background (``checkpoint.async_upload``), and every rank
uploading its own files.

The recipe is tests/assets/resume.toml (a tiny Llama with dropout, so lost RNG streams
show) on 24 training and 8 eval pairs, batch 4: 6 optimizer steps per epoch on one
process, 2 epochs, a checkpoint every 2 steps (keep 2), an eval every 3, with background
uploads on. Every resumed run is compared with an uninterrupted one: every tensor of the
export bit for bit and metrics.jsonl byte for byte.

A slow upload is ``slow@checkpoint_upload:STEP=SECONDS`` (rmrun/runtime/faults.py): the rank's
upload sleeps after its first file, so a state is half uploaded for that long while
training goes on.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rmrun.errors import EXIT_PREEMPTED
from tests.helpers import RESUME_RECIPE, child_env, rmrun, slice_recipe

pytestmark = pytest.mark.slow


def async_recipe(tmp_path: Path) -> str:
    body = (
        "[schedule]\nbatch_size = 4\n[checkpoint]\ninterval_steps = 2\nasync_upload = true\n"
        "[eval]\ninterval_steps = 3\n"
    )
    return slice_recipe(tmp_path, base=RESUME_RECIPE, train_pairs=24, eval_pairs=8, body=body, name="async.toml")


def exports_differ(a: Path, b: Path) -> list[str]:
    from rmrun.run.verify import compare_exports

    return compare_exports(str(a), str(b))


def committed(state: Path) -> list[str]:
    from rmrun.store import StateStore

    return StateStore(str(state)).committed_keys("ckpt-")


def steps_logged(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"^step (\d+)/", output, re.M)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run with background uploads: (its folder, its completed process)."""
    tmp = tmp_path_factory.mktemp("reference")
    done = rmrun("run", async_recipe(tmp), "--set", "checkpoint.stop_budget_seconds=0.001")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_background_uploads_give_the_same_bytes_as_blocking_ones(tmp_path, reference):
    ref_dir, ref_run = reference
    blocking = rmrun("run", async_recipe(tmp_path), "--set", "checkpoint.async_upload=false")
    assert blocking.returncode == 0, blocking.stderr[-3000:]
    assert exports_differ(ref_dir / "state" / "export", tmp_path / "state" / "export") == []
    # The budget (0.001 s, far below any real checkpoint) is reported once, not at every checkpoint.
    warnings = re.findall(
        r"^warning: checkpoint ckpt-\d+ took .* more than checkpoint.stop_budget_seconds = 0.001", ref_run.stdout, re.M
    )
    assert len(warnings) == 1, ref_run.stdout
    assert "stop_budget_seconds" not in blocking.stdout  # the default budget (120 s) is not reached here
    status = rmrun("status", str(ref_dir / "state"))
    assert re.search(r"^  ckpt-0000000012: snapshot \d+\.\d{3} s, upload \d+\.\d{3} s$", status.stdout, re.M), (
        status.stdout
    )


def test_a_kill_during_a_background_upload_leaves_the_previous_checkpoint(tmp_path, reference):
    """Checkpoint 4's upload stalls after its first file while training goes on to step 6,
    where the process is killed: checkpoint 2 is the newest committed, the half-uploaded
    attempt of 4 is never read as committed, and the resumed run is bit-identical."""
    from rmrun.store import StateStore

    recipe = async_recipe(tmp_path)
    state = tmp_path / "state"
    # The kill at step 6 waits until the upload of 4 has its first file in the store.
    faults = "slow@checkpoint_upload:4=120,wait@step:6=checkpoint_upload:4,kill@step:6"
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS=faults))
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert steps_logged(killed.stdout) == [1, 2, 3, 4, 5], killed.stdout  # trained on while 4 was uploading
    assert committed(state) == ["ckpt-0000000002"]
    attempts = [p for p in (state / "states" / "ckpt-0000000004").iterdir() if p.is_dir()]
    assert len(attempts) == 1 and any(f.is_file() for f in attempts[0].rglob("*")), "no half-uploaded attempt"
    assert not (state / "states" / "ckpt-0000000004" / "COMMIT").exists()
    assert not (attempts[0] / "MANIFEST.json").exists()
    assert StateStore(str(state)).latest("ckpt-").key == "ckpt-0000000002"

    # Negative control: the same state resumed without restoring the RNG streams differs.
    sabotaged = tmp_path / "sabotaged"
    shutil.copytree(state, sabotaged)
    control = rmrun("run", recipe, "--set", f"run.state={sabotaged}", env=child_env(RMRUN_FAULTS="no-restore=rng"))
    assert control.returncode == 0, control.stderr[-3000:]
    assert "resumed from ckpt-0000000002" in control.stdout
    assert exports_differ(reference[0] / "state" / "export", sabotaged / "export") != []

    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from ckpt-0000000002" in resumed.stdout
    assert exports_differ(reference[0] / "state" / "export", state / "export") == []


def test_sigterm_while_an_upload_is_in_flight_finishes_it_then_takes_the_final_checkpoint(tmp_path, reference):
    recipe = async_recipe(tmp_path)
    state = tmp_path / "state"
    # The stop signal arrives in checkpoint 4's upload, which then takes 2 more seconds; the
    # hooks of step 5 wait until the signal is sent, so they are the ones that handle it.
    faults = "term@checkpoint_upload:4,slow@checkpoint_upload:4=2,wait@step:5=checkpoint_upload:4"
    stopped = rmrun("run", recipe, env=child_env(RMRUN_FAULTS=faults))
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert "waiting for the background upload of checkpoint ckpt-0000000004" in stopped.stdout
    assert "after committing the checkpoint at step 5; exit 75" in stopped.stderr, stopped.stderr[-3000:]
    final_key = "ckpt-0000000005"
    assert committed(state) == ["ckpt-0000000004", final_key]
    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {final_key}" in resumed.stdout
    assert exports_differ(reference[0] / "state" / "export", state / "export") == []


def test_an_upload_failing_on_one_rank_commits_nothing_and_every_rank_says_why(tmp_path):
    """Two ranks under torchrun (3 steps per epoch: batch 4 per rank); rank 1's upload of
    checkpoint 2 fails: both ranks stop with the same one line, exit 3, nothing committed.
    The same run without the fault commits its checkpoints and finishes (the control)."""
    straight_dir, failing_dir = tmp_path / "straight", tmp_path / "failing"
    straight_dir.mkdir(), failing_dir.mkdir()
    straight = rmrun("run", async_recipe(straight_dir), nproc=2)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert committed(straight_dir / "state") == ["ckpt-0000000004", "ckpt-0000000006"]

    recipe = async_recipe(failing_dir)
    failed = rmrun("run", recipe, nproc=2, env=child_env(RMRUN_FAULTS="fail@checkpoint_upload:2:rank1=EIO"))
    assert failed.returncode != 0
    assert "/rmrun/" not in failed.stderr, failed.stderr[-3000:]  # no traceback through rmrun (torchrun prints its own)
    assert "exitcode  : 3" in failed.stderr, failed.stderr[-3000:]  # EXIT_UNUSABLE
    lines = [line for line in failed.stderr.splitlines() if line.startswith("rmrun: ")]
    expected = (
        "rmrun: checkpoint ckpt-0000000002 not committed: rank 1 could not write its part: OSError: "
        "[Errno 5] Input/output error (injected at checkpoint_upload); the last committed checkpoint is intact"
    )
    assert lines == [expected, expected], failed.stderr[-3000:]
    assert committed(failing_dir / "state") == []

    again = rmrun("run", recipe, nproc=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert exports_differ(straight_dir / "state" / "export", failing_dir / "state" / "export") == []
