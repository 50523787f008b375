"""TensorBoard events for local and remote (s3://) state; a resumed run purges the replayed steps."""

from __future__ import annotations

import os

from tests.helpers import child_env, rmrun, small_recipe

SETTINGS = [
    "--set",
    "log.tensorboard=true",
    "--set",
    "schedule.max_epochs=1",
    "--set",
    "schedule.batch_size=8",
    "--set",
    "checkpoint.interval_steps=3",
]


def _scalars(logdir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir)
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_local_state_gets_every_step(tmp_path):
    recipe = small_recipe(tmp_path, train_pairs=48)
    done = rmrun("run", recipe, *SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]
    logdir = tmp_path / "state" / "tensorboard"
    assert _scalars(str(logdir), "train/loss") == list(range(1, 7))
    assert _scalars(str(logdir), "eval/accuracy") == [6]


def test_remote_state_gets_the_events_and_a_resume_purges_replayed_steps(tmp_path, s3_root):
    import fsspec

    root = s3_root()
    recipe = small_recipe(tmp_path, train_pairs=48)
    state = ["--set", f"run.state={root}"]
    killed = rmrun("run", recipe, *SETTINGS, *state, env=child_env(RMRUN_FAULTS="kill@step:5"))
    assert killed.returncode != 0
    resumed = rmrun("run", recipe, *SETTINGS, *state)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fs, path = fsspec.core.url_to_fs(f"{root}/tensorboard")
    names = fs.ls(path)
    assert len(names) == 2, names  # one event file per process: the killed one and the resumed one
    local = tmp_path / "tb"
    fs.get(path + "/", str(local) + "/", recursive=True)
    assert all(os.path.getsize(local / os.path.basename(n)) > 0 for n in names)
    # Steps 4 and 5 ran twice (the kill came after step 5, the checkpoint was at 3): shown once.
    assert _scalars(str(local), "train/loss") == list(range(1, 7))
