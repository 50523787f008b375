"""Every crash point survivable: a run killed at any fault point, or failing at one with
a disk or permission error, finishes on the next start bit-identical to a run that never
stopped.

The recipe is tests/assets/resume.toml (a tiny Llama with dropout, so lost RNG streams
show) on 24 training and 8 eval pairs, batch 4: 6 optimizer steps per epoch, 2 epochs,
12 steps, a checkpoint every 2 steps, an eval every 3. A run takes ~6 s on 2 cores.

Every fault point, in run order, is listed in ``EVERY_POINT`` below (and must equal
``rmrun.runtime.faults.FAULT_POINTS``); ``rmrun verify-resume --points all`` kills each one in
turn on one state, checks that each kill was reached, and compares the final export
with an uninterrupted run's: every tensor bit for bit, metrics.jsonl byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import pytest

from rmrun.errors import EXIT_UNUSABLE, EXIT_USAGE
from rmrun.runtime.faults import CONDITIONAL_POINTS, FAULT_POINTS
from tests.helpers import RESUME_RECIPE, child_env, rmrun, slice_recipe

pytestmark = pytest.mark.slow

EVERY_POINT = [
    "tokenize_piece",
    "tokenize_commit",
    "tokenized",
    "boosted",
    "trackers_open",
    "step",
    "eval",
    "eval_piece",
    "checkpoint_write",
    "history_commit",
    "checkpoint_upload",
    "checkpoint_before_commit",
    "retention",
    "epoch_commit",
    "epoch_done",
    "eval_final_commit",
    "eval_final_done",
    "stats_piece",
    "export_upload",
    "export_commit",
    "export_done",
]


def crash_recipe(tmp_path: Path) -> str:
    body = "[schedule]\nbatch_size = 4\n[checkpoint]\ninterval_steps = 2\n[eval]\ninterval_steps = 3\n"
    return slice_recipe(tmp_path, base=RESUME_RECIPE, train_pairs=24, eval_pairs=8, body=body, name="crash.toml")


def exports_equal(a: str, b: str) -> list[str]:
    from rmrun.run.verify import compare_exports

    return compare_exports(a, b)


def one_error_line(done) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("rmrun: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the crash recipe: its export directory."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = crash_recipe(tmp)
    done = rmrun("run", recipe)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(tmp / "state" / "export")


def test_the_list_of_fault_points_is_complete():
    assert EVERY_POINT == list(FAULT_POINTS)


def _verify_every_point(tmp_path, *extra: str) -> None:
    recipe = crash_recipe(tmp_path)
    # Background uploads (the default; the crash recipe blocks): the kill at checkpoint_upload
    # lands in a background upload while training goes on.
    done = rmrun(
        "verify-resume",
        recipe,
        "--points",
        "all",
        "--workdir",
        str(tmp_path / "verify"),
        "--set",
        "checkpoint.async_upload=true",
        *extra,
    )
    for point in EVERY_POINT:
        if point in CONDITIONAL_POINTS:  # the crash recipe names no tracker: not killed there
            assert f"SIGKILL at {point} " not in done.stdout, done.stdout
            continue
        assert f"SIGKILL at {point} (exit -9)" in done.stdout, done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"bit-identical after {len(EVERY_POINT) - len(CONDITIONAL_POINTS)} kill(s)" in done.stdout


def test_a_kill_at_every_fault_point_in_turn_resumes_bit_identical_local(tmp_path):
    _verify_every_point(tmp_path)


def test_a_kill_at_every_fault_point_in_turn_resumes_bit_identical_s3(tmp_path, s3_root):
    _verify_every_point(tmp_path, "--state-root", s3_root("crash-points"))


@pytest.mark.parametrize("piece", ["position", "rng"])
def test_negative_control_a_sabotaged_resume_is_reported_as_different(tmp_path, piece):
    """The same verification with one piece of the resume state dropped must fail."""
    recipe = crash_recipe(tmp_path)
    done = rmrun(
        "verify-resume",
        recipe,
        "--points",
        "step:3",
        "--workdir",
        str(tmp_path / "verify"),
        env=child_env(RMRUN_FAULTS=f"no-restore={piece}"),
    )
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "NOT identical: metrics.jsonl differs" in done.stdout


def test_kill_after_final_eval_then_rerun_finishes(tmp_path, reference):
    recipe = crash_recipe(tmp_path)
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@eval_final_done"))
    assert killed.returncode == -9 and "final eval:" in killed.stdout
    again = rmrun("run", recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "final eval:" in again.stdout  # adopted from the committed eval-final, not staged again
    assert exports_equal(reference, str(tmp_path / "state" / "export")) == []


def test_failing_export_then_fixed_finishes_and_status_is_not_running(tmp_path, reference):
    recipe = crash_recipe(tmp_path)
    failed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="fail@export_upload=EROFS"))
    assert failed.returncode == EXIT_UNUSABLE, failed.stderr[-3000:]
    assert "read-only file system" in one_error_line(failed)
    status = rmrun("status", recipe)
    assert re.search(r"^  save +failed", status.stdout, re.M), status.stdout
    assert "running" not in status.stdout
    # The output location itself fails the preflight (a file where a folder must be): exit 2, one line.
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    refused = rmrun("run", recipe, "--set", f"output.dir={blocker}/export")
    assert refused.returncode == EXIT_USAGE
    assert "[output].dir: " in one_error_line(refused)
    fixed = rmrun("run", recipe, "--set", f"output.dir={tmp_path}/export")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert exports_equal(reference, str(tmp_path / "export")) == []


def test_disk_full_while_checkpointing_is_one_line_and_resumes(tmp_path, reference):
    recipe = crash_recipe(tmp_path)
    full = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="fail@checkpoint_before_commit:4=ENOSPC"))
    assert full.returncode == EXIT_UNUSABLE
    assert "disk full" in one_error_line(full)
    status = rmrun("status", recipe)
    assert re.search(r"^  train/epoch-0 +failed", status.stdout, re.M), status.stdout
    fixed = rmrun("run", recipe)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert exports_equal(reference, str(tmp_path / "state" / "export")) == []


# ------------------------------------------------------------------ load failure = corruption


class Payload:
    """A pickle that would run a command when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_in_checkpoint(state: Path, key: str, name: str, data: bytes) -> None:
    """Replace file ``name`` of a committed checkpoint so that it still verifies: the
    manifest gets the new hash and COMMIT the manifest's."""
    key_dir = state / "states" / key
    commit = json.loads((key_dir / "COMMIT").read_text())
    attempt = key_dir / commit["attempt"]
    (attempt / name).write_bytes(data)
    manifest = json.loads((attempt / "MANIFEST.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    raw = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (attempt / "MANIFEST.json").write_bytes(raw)
    commit["manifest_sha256"] = hashlib.sha256(raw).hexdigest()
    (key_dir / "COMMIT").write_text(json.dumps(commit, indent=2, sort_keys=True) + "\n")


def test_a_hostile_pickle_in_a_verified_checkpoint_is_quarantined(tmp_path, reference):
    recipe = crash_recipe(tmp_path)
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode == -9
    state = tmp_path / "state"
    marker = tmp_path / "pwned"
    plant_in_checkpoint(state, "ckpt-0000000004", "optimizer.pt", pickle.dumps(Payload(str(marker))))
    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists()
    assert re.search(r"quarantined checkpoint ckpt-0000000004: does not load: \w+", resumed.stdout), resumed.stdout
    assert "resumed from ckpt-0000000002" in resumed.stdout
    assert exports_equal(reference, str(state / "export")) == []
    status = rmrun("status", recipe)
    assert "quarantined: ckpt-0000000004" in status.stdout and "does not load" in status.stdout


def test_when_no_checkpoint_loads_the_run_stops_with_one_line_and_exit_3(tmp_path):
    recipe = crash_recipe(tmp_path)
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode == -9
    state = tmp_path / "state"
    for key in ("ckpt-0000000002", "ckpt-0000000004"):
        plant_in_checkpoint(state, key, "scheduler.pt", b"not a pickle at all")
    for _ in range(2):  # and the same on a rerun: never a fresh start over the quarantined states
        stuck = rmrun("run", recipe)
        assert stuck.returncode == EXIT_UNUSABLE, stuck.stderr[-3000:]
        line = one_error_line(stuck)
        assert "state unusable, needs a human" in line and "ckpt-0000000004" in line


def test_corrupt_tokenized_data_found_on_its_one_read_is_quarantined_and_tokenized_again(tmp_path, reference):
    """The done-check looks at the manifest and sizes only; the read that loads the data
    hashes it, and a mismatch there is quarantined like any corrupt state."""
    recipe = crash_recipe(tmp_path)
    killed = rmrun("run", recipe, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode == -9
    [key_dir] = (tmp_path / "state" / "states").glob("tokenize-*")
    attempt = json.loads((key_dir / "COMMIT").read_text())["attempt"]
    target = key_dir / attempt / "train.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    resumed = rmrun("run", recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"quarantined {key_dir.name} ({attempt}): state {key_dir.name} ({attempt}): sha256 mismatch for "
        "train.safetensors; tokenizing again" in resumed.stdout
    ), resumed.stdout
    assert "resumed from ckpt-0000000004" in resumed.stdout
    assert exports_equal(reference, str(tmp_path / "state" / "export")) == []
    status = rmrun("status", recipe)
    assert f"quarantined: {key_dir.name} attempt {attempt}: state {key_dir.name} ({attempt}): sha256 mismatch" in (
        status.stdout
    ), status.stdout


# ------------------------------------------------------------------ status of unreachable stores


def test_status_of_an_unknown_protocol_and_of_a_missing_bucket(s3_root):
    unknown = rmrun("status", "foo://x")
    assert unknown.returncode == EXIT_USAGE
    assert 'unknown URL protocol "foo://"' in one_error_line(unknown)
    missing = rmrun("status", "s3://no-such-bucket-rmrun/x")
    assert missing.returncode == EXIT_USAGE, missing.stdout + missing.stderr
    assert "no such bucket 'no-such-bucket-rmrun'" in one_error_line(missing)
    fresh = rmrun("status", s3_root("status-fresh"))
    assert fresh.returncode == 0 and "fresh" in fresh.stdout


def test_check_probes_an_s3_state_and_names_a_missing_bucket(tmp_path, s3_root):
    import fsspec

    recipe = crash_recipe(tmp_path)
    root = s3_root("probe")
    ok = rmrun("check", recipe, "--set", f"run.state={root}")
    assert ok.returncode == 0, ok.stderr
    fs, path = fsspec.core.url_to_fs(root)
    fs.invalidate_cache()
    assert not fs.exists(path) or fs.ls(path) == []  # the probe left nothing behind
    missing = rmrun("check", recipe, "--set", "run.state=s3://no-such-bucket-rmrun/x")
    assert missing.returncode == EXIT_USAGE
    assert "[run].state: cannot write to s3://no-such-bucket-rmrun/x: no such bucket 'no-such-bucket-rmrun'" in (
        one_error_line(missing)
    )
