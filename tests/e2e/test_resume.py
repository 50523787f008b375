"""Exact resume: a run killed at any moment and started again with the same command
finishes with bit-identical weights and metrics to a run that never stopped.

Every comparison reads the export of the interrupted-and-resumed run and of an
uninterrupted reference run of the same configuration: every tensor of
``model.safetensors`` must be ``torch.equal`` (same dtype and shape), ``metrics.jsonl``
must be byte-identical, and it must hold every optimizer step exactly once, 1..26;
``eval.json`` must be byte-identical too, except after a run that changed
``eval.batch_size`` (a non-result key that may change eval numbers).

The recipe is tests/assets/resume.toml: the quickstart with a tiny Llama whose
attention dropout is 0.1 (tests/assets/tiny-llama-dropout), so the random streams
matter; 100 training pairs, 8 pairs per optimizer step (batch 8 on 1 process, 4 per
process on 2), i.e. 13 steps per epoch, 2 epochs, 26 steps; a checkpoint every 4 steps
(keep 2) and at the end of each epoch (step 13); an eval every 5 steps and at each
epoch end; 32 eval pairs.

Configurations: 1 process (``python -m rmrun run``) and 2 processes (``torchrun
--nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=localhost:0 -m rmrun run``),
each with a local state and with an ``s3://`` state (moto server, tests/s3server.py).
Each has one uninterrupted reference run, shared by the module.

A kill is ``RMRUN_FAULTS=kill@POINT:N`` (SIGKILL of rank 0 at that point; torchrun then
tears the job down) unless said otherwise. A "chain" is one state driven through
several runs, each with its own kill directive, and a final clean run; each leg checks
where the next one resumed from.

Scenarios per configuration
---------------------------
1 process, local state (the full list):

* one chain, ``test_kills_at_milestones``: step 0 (external SIGKILL of the process
  group as soon as the tokenize step has printed, before the first optimizer step;
  rmrun has no fault point there), step 1 (``kill@step:1``), inside an evaluation
  (``kill@eval:5``), right after a checkpoint (``kill@step:9``, checkpoint 8
  committed), at the epoch boundary (``kill@step:13``, the last step of epoch 0,
  before its epoch-end checkpoint; then ``kill@retention:13``, right after that
  checkpoint's commit), at the last step (``kill@step:26``, then ``kill@retention:26``:
  training over, evaluate and save not done).
* mid-epoch (``kill@step:6``): ``test_mid_epoch_kill_refuses_a_changed_key_then_resumes_exactly``,
  which first checks that resuming with ``--set schedule.lr=...`` exits 2 naming the key.
* twice in the same epoch (``kill@step:6`` then ``kill@step:10``): ``test_two_kills_in_one_epoch``.
* during a checkpoint write (``kill@checkpoint_write:8``, then
  ``kill@checkpoint_before_commit:12``) and during retention deletion
  (``kill@retention:16``): one chain, ``test_kills_during_checkpoint_io``.
* negative controls (``no-restore=rng``, ``no-restore=position`` after the mid-epoch
  kill): the result must differ, ``test_negative_control_differs``.
* SIGTERM mid-step then, on the resumed run, SIGTERM mid-eval: exit 75 each time with
  a committed checkpoint, then an exact resume: ``test_sigterm_mid_step_and_mid_eval``.
* a corrupted newest checkpoint is quarantined, the previous one is used:
  ``test_corrupted_latest_checkpoint_is_quarantined``.
* a finished run started again exits 0 at once: ``test_finished_run_started_again``.

1 process on s3, 2 processes local, 2 processes on s3 (a representative subset, one
chain each, ``test_kills_subset``): mid-epoch (``kill@step:6``), then, in the same
epoch, during a checkpoint write (``kill@checkpoint_write:8``), i.e. also twice in one
epoch; 2 processes local adds a SIGTERM to torchrun mid-step (the workers commit a
checkpoint and exit 75; torchrun itself then exits non-zero, so the test checks rank
0's "exit 75" message and the committed checkpoint instead of torchrun's exit code).

World size 2 -> 1 -> 2 (local, ``test_world_size_change_visits_every_pair_once_per_epoch``;
kills: ``kill@step:6:all`` on 2 processes, ``kill@step:10`` on 1): with
``RMRUN_TRACE_PAIRS``, every pair is trained on exactly once per epoch over the
committed steps. Its export is not compared bitwise: the float trajectory (and the
learning-rate schedule, planned per world size) may differ from a fixed-size run.
``test_world_size_growth_still_trains_every_epoch_fully`` (1 -> 2) is the minimal
reproduction of the step-budget bug both of these tests currently hit: the plan's
total_steps is recomputed for the new world size while the step counter keeps the
steps taken at the old one, so the run stops early in its last epoch.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.resume_harness import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_UNUSABLE,
    EXIT_USAGE,
    ONE_LOCAL,
    ONE_S3,
    STEPS_PER_EPOCH,
    TOTAL_STEPS,
    TRAIN_PAIRS,
    TWO_LOCAL,
    TWO_S3,
    Harness,
    assert_identical,
    assert_metrics_complete,
    committed_checkpoints,
    differing_tensors,
    is_complete,
    merge_traces,
    newest_checkpoint_attempt,
    read_export,
    read_trace,
)

pytestmark = pytest.mark.slow

PREEMPTED_LINE = re.compile(r"after committing the checkpoint at step (\d+); exit 75")


# ----------------------------------------------------------------- fixtures


class Lab:
    """The harness plus the module's uninterrupted reference runs (one per configuration)."""

    def __init__(self, workdir):
        self._s3 = None
        self._references = {}
        self.harness = Harness(workdir, s3_roots=self.s3)

    def s3(self):
        assert self._s3 is not None, "call lab.use(config, request) first"
        return self._s3

    def use(self, config, request) -> None:
        """Start the S3 server when ``config`` needs it (session fixture)."""
        if config.storage == "s3" and self._s3 is None:
            self._s3 = request.getfixturevalue("s3_root")

    def reference(self, config, request):
        self.use(config, request)
        if config not in self._references:
            run = self.harness.new_run(config, "reference")
            result = self.harness.run(run, expect=EXIT_OK)
            assert result.steps_logged() == list(range(1, TOTAL_STEPS + 1)), result.describe()
            export = read_export(run.export)
            assert_metrics_complete(export)
            self._references[config] = (run, export)
        return self._references[config][1]

    def reference_run(self, config, request):
        self.reference(config, request)
        return self._references[config][0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Lab(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def killed_mid_epoch(lab):
    """A 1-process local state killed after step 6 (checkpoint 4 committed), not to be modified."""
    h = lab.harness
    run = h.new_run(ONE_LOCAL, "mid-epoch")
    result = h.run(run, faults="kill@step:6", expect="killed")
    assert result.steps_logged()[-1] == 5, result.describe()  # step 6's hooks (its log line) never ran
    assert committed_checkpoints(run) == [4]
    return run


@pytest.fixture(scope="module")
def killed_twice(lab, killed_mid_epoch):
    """The mid-epoch state, resumed and killed again in epoch 0 after step 10 (checkpoint 8)."""
    h = lab.harness
    run = h.copy_run(killed_mid_epoch, "twice")
    result = h.run(run, faults="kill@step:10", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert committed_checkpoints(run) == [4, 8]
    return run


def finish(lab, run, reference, *, resumed_from_step=None, sets=(), compare_eval=True):
    """The final clean run of a chain: exit 0, then bit-identical to the reference."""
    result = lab.harness.run(run, expect=EXIT_OK, sets=sets)
    if resumed_from_step is not None:
        assert result.resumed_from() == (f"ckpt-{resumed_from_step:010d}", resumed_from_step), result.describe()
    assert_identical(reference, read_export(run.export), compare_eval=compare_eval)
    return result


# ----------------------------------------------------------------- 1 process, local: the full list


def test_kills_at_milestones(lab, request):
    """Step 0 (external), step 1, in an eval, right after a checkpoint, the epoch boundary
    (before and right after its checkpoint), the last step (before and right after its
    checkpoint)."""
    config = ONE_LOCAL
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "milestones")

    # Step 0: SIGKILL the whole process group once the tokenize step has printed.
    child = h.start(run)
    child.wait_for(r"^tokenize eval: ")
    child.kill_group()
    result = child.wait()
    assert result.returncode == -signal.SIGKILL, result.describe()
    assert result.steps_logged() == [], "the step-0 kill came after an optimizer step:\n" + result.describe()
    assert committed_checkpoints(run) == []

    result = h.run(run, faults="kill@step:1", expect="killed")
    assert result.resumed_from() is None and result.steps_logged() == [], result.describe()
    assert committed_checkpoints(run) == []

    # Inside the evaluation at step 5 (checkpoint 4 committed).
    result = h.run(run, faults="kill@eval:5", expect="killed")
    assert result.resumed_from() is None, result.describe()
    assert committed_checkpoints(run) == [4]

    # Right after a checkpoint: checkpoint 8 committed, killed after step 9.
    result = h.run(run, faults="kill@step:9", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert committed_checkpoints(run) == [4, 8]

    # The last step of epoch 0, before its epoch-end checkpoint.
    result = h.run(run, faults=f"kill@step:{STEPS_PER_EPOCH}", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()
    assert committed_checkpoints(run) == [8, 12]

    # Right after the epoch-end checkpoint is committed (before retention and before the
    # epoch-0 step is recorded as done).
    result = h.run(run, faults=f"kill@retention:{STEPS_PER_EPOCH}", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000012", 12), result.describe()
    assert committed_checkpoints(run) == [8, 12, 13]

    # The last step of the run, before its final checkpoint.
    result = h.run(run, faults=f"kill@step:{TOTAL_STEPS}", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000013", 13), result.describe()
    assert committed_checkpoints(run) == [20, 24]

    # Right after the final checkpoint: training is over, evaluate and save are not done.
    result = h.run(run, faults=f"kill@retention:{TOTAL_STEPS}", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000024", 24), result.describe()
    assert committed_checkpoints(run) == [20, 24, 26]
    assert not is_complete(run)

    result = finish(lab, run, reference, resumed_from_step=TOTAL_STEPS)
    assert result.steps_logged() == [], result.describe()


def test_mid_epoch_kill_refuses_a_changed_key_then_resumes_exactly(lab, request, killed_mid_epoch):
    reference = lab.reference(ONE_LOCAL, request)
    h = lab.harness
    run = h.copy_run(killed_mid_epoch, "changed-key")

    refused = h.run(run, sets=["schedule.lr=1e-3"], expect=EXIT_USAGE)
    messages = [line for line in refused.output.splitlines() if line.startswith("rmrun: ")]
    assert len(messages) == 1, refused.describe()
    assert "schedule.lr" in messages[0] and "0.0002" in messages[0] and "0.001" in messages[0], messages[0]
    assert committed_checkpoints(run) == [4]

    finish(lab, run, reference, resumed_from_step=4)


def test_two_kills_in_one_epoch(lab, request, killed_twice):
    reference = lab.reference(ONE_LOCAL, request)
    run = lab.harness.copy_run(killed_twice, "twice-finish")
    finish(lab, run, reference, resumed_from_step=8)


def test_kills_during_checkpoint_io(lab, request):
    """During a checkpoint write (files written; staged, not committed) and during retention."""
    config = ONE_LOCAL
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "checkpoint-io")

    h.run(run, faults="kill@checkpoint_write:8", expect="killed")
    assert committed_checkpoints(run) == [4]

    result = h.run(run, faults="kill@checkpoint_before_commit:12", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert committed_checkpoints(run) == [4, 8]

    # Committed 16, killed before the retention of {12, 13(epoch end), 16} to keep=2.
    result = h.run(run, faults="kill@retention:16", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()
    assert committed_checkpoints(run) == [12, 13, 16]

    finish(lab, run, reference, resumed_from_step=16)
    assert committed_checkpoints(run) == [24, 26]


@pytest.mark.parametrize("piece", ["rng", "position"])
def test_negative_control_differs(lab, request, killed_mid_epoch, piece):
    """Skipping the restore of the RNG streams / the data position must change the result."""
    reference = lab.reference(ONE_LOCAL, request)
    h = lab.harness
    run = h.copy_run(killed_mid_epoch, f"no-restore-{piece}")
    result = h.run(run, faults=f"no-restore={piece}", expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    got = read_export(run.export)
    assert differing_tensors(reference, got), f"no-restore={piece}: the weights are still bit-identical"
    assert got.metrics != reference.metrics, f"no-restore={piece}: metrics.jsonl is still identical"


def _sigterm_when(child, line_pattern: str):
    child.wait_for(line_pattern)
    child.send_signal(signal.SIGTERM)
    return child.wait()


def test_sigterm_mid_step_and_mid_eval(lab, request):
    """SIGTERM -> checkpoint committed, exit 75 -> the same command resumes exactly."""
    config = ONE_LOCAL
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "sigterm")

    # Mid-step: signalled as step 2 is logged, so it lands in step 2's hooks or step 3.
    result = _sigterm_when(h.start(run), r"^step 2/")
    assert result.returncode == EXIT_PREEMPTED, result.describe()
    stopped = int(PREEMPTED_LINE.search(result.output).group(1))
    assert stopped in (2, 3), result.describe()
    assert committed_checkpoints(run)[-1] == stopped

    # Mid-eval: step 10 is logged, then its eval runs (32 pairs one at a time, so the signal
    # lands inside it): the eval is left at the next batch, step 10's checkpoint committed.
    child = h.start(run, sets=["eval.batch_size=1"])
    result = _sigterm_when(child, r"^step 10/")
    assert result.returncode == EXIT_PREEMPTED, result.describe()
    assert result.resumed_from() == (f"ckpt-{stopped:010d}", stopped), result.describe()
    assert re.search(
        r"^the eval at step 10 stopped at batch \d+/32: its scored pieces are kept$", result.output, re.M
    ), "the SIGTERM did not stop the eval at step 10 (did it land in the eval?)\n" + result.describe()
    assert not re.search(r"^eval step 10: ", result.output, re.M), result.describe()
    assert int(PREEMPTED_LINE.search(result.output).group(1)) == 10, result.describe()
    assert committed_checkpoints(run)[-1] == 10

    # The resume finishes the step-10 eval. eval.json is not compared: the step-5 eval ran
    # with eval.batch_size=1 (tests/e2e/test_resume.py's in-loop eval test compares it).
    finish(lab, run, reference, resumed_from_step=10, compare_eval=False)


def test_corrupted_latest_checkpoint_is_quarantined(lab, request, killed_twice):
    reference = lab.reference(ONE_LOCAL, request)
    h = lab.harness
    run = h.copy_run(killed_twice, "corrupt")
    key, attempt = newest_checkpoint_attempt(run)
    assert key == "ckpt-0000000008"
    target = attempt / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    result = h.run(run, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    # The note stays in the key's folder, or, once the checkpoint at that step has been
    # recomputed and the key replaced, in a record.
    notes = [
        attempt.parent / f"QUARANTINE-{attempt.name}.json",
        run.local_state / "records" / "quarantined" / f"{key}-{attempt.name}.json",
    ]
    assert any(p.exists() for p in notes), f"no quarantine note for {key}/{attempt.name}"
    status = h.status(run)
    assert status.returncode == EXIT_OK, status.describe()
    assert re.search(rf"^quarantined: {key} attempt {attempt.name}: ", status.output, re.M), status.output
    assert "run: complete" in status.output, status.output
    assert_identical(reference, read_export(run.export))


def test_finished_run_started_again(lab, request):
    """Started again with the same command, a complete run says so and exits 0 at once."""
    h = lab.harness
    reference_run = lab.reference_run(ONE_LOCAL, request)
    run = h.copy_run(reference_run, "finished")
    run.export = reference_run.export  # the same command: same state (a copy) and export
    before = read_export(run.export)
    result = h.run(run, expect=EXIT_OK)
    assert re.search(
        rf"^run resume-test is complete: the export is at {re.escape(run.export)}$", result.output, re.M
    ), result.describe()
    assert result.steps_logged() == [], result.describe()
    assert "tokenize" not in result.output and "resumed from" not in result.output, result.describe()
    assert_identical(before, read_export(run.export))


# ----------------------------------------------------------------- other configurations: a subset


@pytest.mark.parametrize("config", [ONE_S3, TWO_LOCAL, TWO_S3], ids=str)
def test_kills_subset(lab, request, config):
    """Mid-epoch, then a checkpoint write in the same epoch (twice in one epoch)."""
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "subset")

    h.run(run, faults="kill@step:6", expect="killed")
    assert committed_checkpoints(run) == [4]

    result = h.run(run, faults="kill@checkpoint_write:8", expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert committed_checkpoints(run) == [4]
    resume_step = 4

    if config == TWO_LOCAL:
        # SIGTERM to torchrun: it forwards the signal to the workers, which commit a
        # checkpoint at the next step boundary and exit 75 (torchrun then fails).
        child = h.start(run)
        result = _sigterm_when(child, r"^step 9/")
        assert result.returncode != EXIT_OK, result.describe()
        assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
        stopped = int(PREEMPTED_LINE.search(result.output).group(1))
        assert stopped >= 9, result.describe()
        assert committed_checkpoints(run)[-1] == stopped
        resume_step = stopped

    finish(lab, run, reference, resumed_from_step=resume_step)


# ----------------------------------------------------------------- world size 2 -> 1 -> 2


def epoch_pairs(export) -> dict[int, int]:
    """{epoch: pairs of it trained on}, from metrics.jsonl (pairs_consumed is cumulative in an epoch)."""
    out = {}
    for line in export.metric_lines():
        out[line["epoch"]] = line["pairs_consumed"]
    return out


def test_world_size_growth_still_trains_every_epoch_fully(lab, request):
    """1 -> 2 processes: the run must still train max_epochs full epochs.

    Minimal reproduction of a step-budget bug: the plan's total_steps is recomputed for
    the new world size (26 steps of 8 pairs) while the step counter carries the steps
    taken at 1 process (4 pairs each), so the run stops at step 26 in the middle of
    epoch 1 (72 of 100 pairs) and exports as if complete.
    """
    h = lab.harness
    run = h.new_run(TWO_LOCAL, "grow")  # batch 4 per process
    h.run(run, nproc=1, faults="kill@step:10", expect="killed")
    assert committed_checkpoints(run) == [4, 8]
    result = h.run(run, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()
    export = read_export(run.export)
    steps = [line["step"] for line in export.metric_lines()]
    assert steps == list(range(1, len(steps) + 1))
    assert epoch_pairs(export) == {0: TRAIN_PAIRS, 1: TRAIN_PAIRS}, (
        f"pairs trained on per epoch: {epoch_pairs(export)}; last log line {last_log_line(result.output)!r}"
    )


def last_log_line(output: str) -> str | None:
    lines = [line for line in output.splitlines() if re.match(r"step \d+/\d+ ", line)]
    return lines[-1] if lines else None


def test_world_size_change_visits_every_pair_once_per_epoch(lab, request):
    h = lab.harness
    config = TWO_LOCAL  # batch 4 per process: 8 pairs per step on 2 processes, 4 on 1
    run = h.new_run(config, "world-size")
    traces = h.workdir / "traces" / run.label
    traces.mkdir(parents=True)
    prefixes = [str(traces / f"run{i}") for i in range(3)]

    h.run(run, faults="kill@step:6:all", trace=prefixes[0], expect="killed")  # both ranks
    assert committed_checkpoints(run) == [4]

    result = h.run(run, nproc=1, faults="kill@step:10", trace=prefixes[1], expect="killed")
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert committed_checkpoints(run) == [4, 8]

    result = h.run(run, trace=prefixes[2], expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()

    merged = merge_traces([read_trace(p) for p in prefixes])
    steps = sorted(merged)
    assert steps == list(range(1, len(steps) + 1)), f"traced steps are not 1..N: {steps}"
    per_epoch = collections.defaultdict(collections.Counter)
    for step in steps:
        per_epoch[merged[step]["epoch"]].update(merged[step]["pairs"])
    assert sorted(per_epoch) == [0, 1], f"epochs traced: {sorted(per_epoch)}"
    for epoch, counts in sorted(per_epoch.items()):
        missing = sorted(set(range(TRAIN_PAIRS)) - set(counts))
        repeated = sorted(p for p, n in counts.items() if n > 1)
        assert not missing and not repeated and len(counts) == TRAIN_PAIRS, (
            f"epoch {epoch}: {len(missing)} pairs never trained on {missing[:10]}, "
            f"{len(repeated)} trained on more than once {repeated[:10]}; the last run's final log line: "
            f"{last_log_line(result.output)!r}"
        )

    export = read_export(run.export)
    assert_metrics_complete(export, total_steps=steps[-1])


# ----------------------------------------------------------------- identity by content, formats, faults, signals


def _swap_sides(source, target) -> None:
    """``source``'s pairs with chosen and rejected swapped, written to ``target``."""
    rows = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    for row in rows:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    Path(target).write_text("".join(json.dumps(row) + "\n" for row in rows))


def _data_copy(lab, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    train, evaluation = shutil.copy(lab.harness.train, folder / "train.jsonl"), shutil.copy(lab.harness.eval, folder)
    return [f"data.train={train}", f"data.eval={folder / Path(evaluation).name}"]


def _one_message(result) -> str:
    """The one line a stopped run ends with (a warning of a store retrying is not an error)."""
    messages = [
        line for line in result.output.splitlines() if line.startswith("rmrun: ") and "is not answering" not in line
    ]
    assert len(messages) == 1 and "Traceback" not in result.output, result.describe()
    return messages[0]


@pytest.mark.parametrize("config", [ONE_LOCAL, ONE_S3], ids=str)
def test_edited_data_is_refused_and_moved_data_resumes_exactly(lab, request, tmp_path, config):
    """The run is what its data contains: the same path with other content is refused,
    naming the file; the same content under another path (a requeue on a node whose
    checkout lives elsewhere) resumes bit-identically."""
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "data-identity")
    node1 = _data_copy(lab, tmp_path / "node1")
    h.run(run, faults="kill@step:6", expect="killed", sets=node1)
    assert committed_checkpoints(run) == [4]

    train = node1[0].split("=", 1)[1]
    original = Path(train).read_bytes()
    _swap_sides(train, train)  # edited in place
    refused = h.run(run, sets=node1, expect=EXIT_USAGE)
    message = _one_message(refused)
    assert f"data.train: {train}: its content differs from the file the stored run read" in message, message
    assert committed_checkpoints(run) == [4]

    Path(train).write_bytes(original)
    node2 = _data_copy(lab, tmp_path / "node2")  # byte-identical, another directory
    result = h.run(run, sets=node2, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
    assert_identical(reference, read_export(run.export))


def _listing(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_state_written_by_a_newer_rmrun_is_refused_and_left_untouched(lab, request, killed_mid_epoch):
    h = lab.harness
    run = h.copy_run(killed_mid_epoch, "newer-format")
    key, attempt = newest_checkpoint_attempt(run)
    # What a newer rmrun would write: its manifest and its COMMIT in format 2.
    manifest = attempt / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["format"] = 2
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    commit = attempt.parent / "COMMIT"
    record = json.loads(commit.read_text())
    record.update(format=2, manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest())
    commit.write_text(json.dumps(record))
    before = _listing(run.local_state)

    result = h.run(run, expect=EXIT_UNUSABLE)
    message = _one_message(result)
    assert f"state {key} (its COMMIT) was written by a newer rmrun (format 2;" in message, message
    assert _listing(run.local_state) == before, "the run changed the state of a newer rmrun"
    status = h.status(run)
    assert status.returncode == EXIT_UNUSABLE and "written by a newer rmrun (format 2" in status.output, status.output
    assert _listing(run.local_state) == before

    # Negative control: the same state back in this rmrun's format resumes.
    data["format"] = 1
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    record.update(format=1, manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest())
    commit.write_text(json.dumps(record))
    finish(lab, run, lab.reference(ONE_LOCAL, request), resumed_from_step=4)


def test_sigterm_before_training_and_ctrl_c_in_training_stop_cleanly(lab, request):
    """SIGTERM before the first checkpoint: exit 75, one line, nothing to save. Ctrl-C in
    training: a checkpoint, then exit 130. Then the same command resumes exactly."""
    reference = lab.reference(ONE_LOCAL, request)
    h = lab.harness
    run = h.new_run(ONE_LOCAL, "signals")

    result = _sigterm_when(h.start(run), r"^tokenize train: ")
    assert result.returncode == EXIT_PREEMPTED, result.describe()
    message = _one_message(result)
    assert re.search(
        r"stopped by SIGTERM (in step \S+|before training started); everything committed is intact", message
    )
    assert result.steps_logged() == [] and committed_checkpoints(run) == []

    child = h.start(run)
    child.wait_for(r"^step 6/")
    child.send_signal(signal.SIGINT)
    result = child.wait()
    assert result.returncode == EXIT_INTERRUPTED, result.describe()
    stopped = re.search(
        r"stopped by SIGINT after committing the checkpoint at step (\d+); exit 130", _one_message(result)
    )
    assert stopped and committed_checkpoints(run)[-1] == int(stopped.group(1)), result.describe()

    finish(lab, run, reference, resumed_from_step=int(stopped.group(1)))


def _through(forwarder) -> dict:
    return {"AWS_ENDPOINT_URL": forwarder.url, "FSSPEC_S3_ENDPOINT_URL": forwarder.url}


def test_a_store_outage_is_retried_then_stops_with_the_requeue_code(lab, request):
    """The state's S3 goes away at step 7 (its checkpoint at 8 falls in the outage): for 10 s
    the run rides it out; past run.store_retry_seconds it stops with one line and exit 75,
    and the same command then finishes; both bit-identical to the uninterrupted run."""
    from urllib.parse import urlparse

    from tests.forwarder import Forwarder

    reference = lab.reference(ONE_S3, request)
    endpoint = urlparse(lab.s3().endpoint_url)
    forwarder = Forwarder(endpoint.hostname, endpoint.port)
    forwarder.up()
    h = lab.harness
    try:
        run = h.new_run(ONE_S3, "outage-short")
        child = h.start(run, env=_through(forwarder))
        child.wait_for(r"^step 7/")
        forwarder.down()
        time.sleep(10)
        forwarder.up()
        result = child.wait()
        assert result.returncode == EXIT_OK, result.describe()
        assert "is not answering" in result.output, "the outage was not met:\n" + result.describe()
        assert_identical(reference, read_export(run.export))

        run = h.new_run(ONE_S3, "outage-long")
        child = h.start(run, env=_through(forwarder), sets=["run.store_retry_seconds=3"])
        child.wait_for(r"^step 7/")
        forwarder.down()
        result = child.wait()
        forwarder.up()
        assert result.returncode == EXIT_PREEMPTED, result.describe()
        assert re.search(r"did not answer for 3 s .*everything committed is intact.*; exit 75", _one_message(result))
        result = h.run(run, expect=EXIT_OK, env=_through(forwarder))
        assert result.resumed_from() == ("ckpt-0000000004", 4), result.describe()
        assert_identical(reference, read_export(run.export))
    finally:
        forwarder.down()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")
def test_a_full_tmpdir_is_one_line_and_the_rerun_is_exact(lab, request, tmp_path):
    reference = lab.reference(ONE_LOCAL, request)
    h = lab.harness
    run = h.new_run(ONE_LOCAL, "tmpdir-full")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(scratch)], check=True)
    try:
        result = h.run(run, env={"TMPDIR": str(scratch)}, expect=EXIT_UNUSABLE)
    finally:
        subprocess.run(["umount", str(scratch)], check=True)
    message = _one_message(result)
    assert f"local scratch {scratch} (TMPDIR) cannot hold the checkpoint at step 4" in message, message
    assert committed_checkpoints(run) == []
    finish(lab, run, reference)


# A stop signal at each point outside the training loop, in run order: the run stops there
# at once (nothing to checkpoint) and the next start goes on from what is committed.
OUTSIDE_TRAINING = [
    ("tokenize_commit", "tokenize"),
    ("tokenized", "tokenize"),
    ("boosted", "boost"),
    (f"epoch_commit:{STEPS_PER_EPOCH}", "train/epoch-0"),
    (f"epoch_done:{STEPS_PER_EPOCH}", "train/epoch-0"),
    ("eval_final_commit", "evaluate"),
    ("eval_final_done", "evaluate"),
    ("export_upload", "save"),
    ("export_commit", "save"),
]


@pytest.mark.parametrize("config", [ONE_LOCAL, ONE_S3], ids=str)
def test_sigterm_in_every_phase_outside_training_stops_at_once_and_resumes_exactly(lab, request, config):
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "term-phases")
    for point, step in OUTSIDE_TRAINING:
        result = h.run(run, faults=f"term@{point}", expect=EXIT_PREEMPTED)
        message = _one_message(result)
        assert re.search(
            rf"stopped by SIGTERM (in step {re.escape(step)}|after the training steps of epoch 0 were committed); "
            r"everything committed is intact; exit 75",
            message,
        ), f"term@{point}: {message}"
    finish(lab, run, reference)


# On two ranks a stop signal reaches every process (torchrun forwards it to its workers); a
# point only rank 0 reaches stops rank 0, and the other rank, waiting for it on the board, stops
# too. In run order: tokenizing, the tokenized data loaded, the model built, the final eval
# committed, the reward statistics (the first eval batch at the last step once training is
# done), the export's upload.
TWO_RANK_PHASES = [
    ("term@tokenize_piece:0:all", r"in step tokenize"),
    ("term@tokenized:all", r"in step tokenize"),
    ("term@boosted:0:all", r"in step boost"),
    ("term@eval_final_done:all", r"in step evaluate"),
    (f"term@eval:{2 * STEPS_PER_EPOCH}:all", r"in step save"),
    ("term@export_upload", r"in step save|rank 0 stopped while rank 1 waited for rank 0 to upload the export"),
]


@pytest.mark.parametrize("config", [TWO_LOCAL, TWO_S3], ids=str)
def test_sigterm_in_every_phase_outside_training_on_two_ranks(lab, request, config):
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "term-phases-2")
    for faults, where in TWO_RANK_PHASES:
        result = h.run(run, faults=faults)
        assert result.returncode != EXIT_OK, f"{faults}: {result.describe()}"
        assert not re.search(r'File ".*/rmrun/', result.output), f"{faults}: {result.describe()}"
        lines = [line for line in result.output.splitlines() if line.startswith("rmrun: ")]
        assert lines and all("exit 75" in line for line in lines), f"{faults}: {lines}"
        assert any(re.search(where, line) for line in lines), f"{faults}: {lines}"
    finish(lab, run, reference)


# A stop signal inside the evals of the training loop (SIGTERM at the first eval batch, on
# every rank): a periodic eval, the one at the end of the first epoch and the last step's
# (which the final eval reuses). The eval is left at once, the step's checkpoint committed,
# and the next start first finishes that eval; the chain ends bit-identical, eval.json too.
IN_LOOP_EVALS = [5, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


@pytest.mark.parametrize("config", [ONE_LOCAL, ONE_S3, TWO_LOCAL, TWO_S3], ids=str)
def test_sigterm_inside_the_evals_of_the_training_loop(lab, request, config):
    reference = lab.reference(config, request)
    h = lab.harness
    run = h.new_run(config, "term-evals")
    for step in IN_LOOP_EVALS:
        result = h.run(run, faults=f"term@eval:{step}:all")
        assert result.returncode != EXIT_OK, f"eval at step {step}: {result.describe()}"
        assert not re.search(r'File ".*/rmrun/', result.output), f"eval at step {step}: {result.describe()}"
        lines = [line for line in result.output.splitlines() if line.startswith("rmrun: ")]
        assert lines and all("exit 75" in line for line in lines), f"eval at step {step}: {lines}"
        assert any(f"after committing the checkpoint at step {step}" in line for line in lines), lines
        assert f"the eval at step {step} stopped at batch 1/" in result.output, result.describe()
        assert committed_checkpoints(run)[-1] == step, committed_checkpoints(run)
    finish(lab, run, reference)
