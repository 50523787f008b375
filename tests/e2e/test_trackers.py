"""Experiment trackers in whole runs, with the real packages and their local stores: W&B in
offline mode (its run folders read back with ``rmrun.track.records``) and MLflow on a SQLite
store (read back through ``MlflowClient``). No tracker API is mocked.

- A run SIGKILLed mid-epoch and resumed (1 and 2 processes) gives one tracker run per tracker, every optimizer
  step in it once with the values of the export's metrics.jsonl, the evals of eval.json, the
  recipe, the plan and the model card attached; the negative control (the tracker run id the
  state keeps, deleted between the starts) gives two runs, and the same check fails.
- Trackers that cannot be reached (W&B online with no API key, MLflow at a closed port) cost
  one warning line each; the run ends 0 with weights bit-identical to a run without them.

The harness is tests/e2e/test_resume.py's (1 process, local state, 26 steps, a checkpoint
every 4)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from rmrun.store.keys import TRACKERS_RECORD
from rmrun.track.records import history
from tests.resume_harness import EXIT_OK, ONE_LOCAL, TOTAL_STEPS, TWO_LOCAL, Harness, assert_identical, read_export

pytest.importorskip("wandb", reason="the test extra installs wandb")
pytest.importorskip("mlflow", reason="the test extra installs mlflow")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return Harness(tmp_path_factory.mktemp("trackers"))


def _tracked(where: Path) -> tuple[str, ...]:
    """--set overrides: both trackers, writing under ``where``."""
    return (
        'log.trackers=["wandb", "mlflow"]',
        "log.wandb.mode=offline",
        f"log.wandb.dir={where / 'wandb'}",
        f"log.mlflow.tracking_uri=sqlite:///{where / 'mlflow.db'}",
        "log.mlflow.experiment=trackers-test",
    )


def _env(where: Path) -> dict:
    """W&B's own folders (settings, cache) inside the test's, and no key or server of the machine's."""
    home = where / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_CACHE_DIR=str(home / "wandb-cache"))
    env["WANDB_DATA_DIR"] = str(home / "wandb-data")
    return env


def _prepare_mlflow(where: Path) -> None:
    """Create the SQLite store's tables before the runs: a SIGKILL in MLflow's first migration
    of a new store leaves the file unusable (MLflow's own limit, said in the manual)."""
    from mlflow.tracking import MlflowClient

    where.mkdir(parents=True, exist_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{where / 'mlflow.db'}").search_experiments()


def _expected(export_url: str) -> tuple[dict[int, float], list[int]]:
    export = read_export(export_url)
    losses = {line["step"]: line["loss"] for line in export.metric_lines()}
    evals = json.loads((Path(export_url) / "eval.json").read_text())["history"]
    return losses, [e["step"] for e in evals]


def wandb_problems(wandb_dir: Path, export_url: str) -> list[str]:
    """What is wrong with the W&B runs under ``wandb_dir`` as the record of one rmrun run."""
    losses, eval_steps = _expected(export_url)
    folders = sorted(glob.glob(str(wandb_dir / "wandb" / "offline-run-*")))
    ids = {folder.rsplit("-", 1)[1] for folder in folders}
    problems = [] if len(ids) == 1 else [f"{len(ids)} W&B runs ({sorted(ids)}), not one"]
    seen: dict[str, list[int]] = {"train/loss": [], "eval/accuracy": []}
    values = {}
    files = set()
    for folder in folders:
        run_id = folder.rsplit("-", 1)[1]
        for step, row in history(os.path.join(folder, f"run-{run_id}.wandb")):
            for key in seen:
                if key in row:
                    seen[key].append(step)
            if "train/loss" in row:
                values[step] = row["train/loss"]
        files |= set(os.listdir(os.path.join(folder, "files")))
    problems += _step_problems("W&B", seen, values, losses, eval_steps)
    missing = {"recipe.toml", "plan.json", "model_card.md"} - files
    if missing:
        problems.append(f"W&B run files missing: {sorted(missing)}")
    return problems


def mlflow_problems(where: Path, export_url: str) -> list[str]:
    """What is wrong with the MLflow store's runs as the record of one rmrun run."""
    from mlflow.tracking import MlflowClient

    losses, eval_steps = _expected(export_url)
    client = MlflowClient(tracking_uri=f"sqlite:///{where / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trackers-test")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if len(runs) != 1:
        return [f"{len(runs)} MLflow runs, not one"]
    run = runs[0]
    history_of = {key: client.get_metric_history(run.info.run_id, key) for key in ("train/loss", "eval/accuracy")}
    seen = {key: [m.step for m in metrics] for key, metrics in history_of.items()}
    values = {m.step: m.value for m in history_of["train/loss"]}
    problems = _step_problems("MLflow", seen, values, losses, eval_steps)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    missing = {"recipe.toml", "plan.json", "model_card.md"} - artifacts
    if missing:
        problems.append(f"MLflow artifacts missing: {sorted(missing)}")
    if run.info.status != "FINISHED":
        problems.append(f"MLflow run status {run.info.status}")
    if run.data.tags.get("rmrun.export") != export_url:
        problems.append(f"MLflow export tag {run.data.tags.get('rmrun.export')!r}, not {export_url!r}")
    return problems


def _step_problems(
    tracker: str, seen: dict[str, list[int]], values: dict, losses: dict[int, float], eval_steps: list[int]
) -> list[str]:
    problems = []
    steps = seen["train/loss"]
    if sorted(steps) != list(range(1, TOTAL_STEPS + 1)):
        twice = sorted({s for s in steps if steps.count(s) > 1})
        problems.append(
            f"{tracker} train/loss steps: {len(steps)} logged, twice: {twice}, missing: "
            f"{sorted(set(range(1, TOTAL_STEPS + 1)) - set(steps))}"
        )
    if values != losses:
        problems.append(
            f"{tracker} train/loss values differ from metrics.jsonl at steps "
            f"{sorted(s for s in losses if values.get(s) != losses[s])[:5]}"
        )
    if sorted(seen["eval/accuracy"]) != eval_steps:
        problems.append(f"{tracker} eval steps {sorted(seen['eval/accuracy'])}, eval.json has {eval_steps}")
    return problems


@pytest.fixture(scope="module")
def uninterrupted(harness):
    run = harness.new_run(ONE_LOCAL, "plain")
    harness.run(run, expect=EXIT_OK)
    return run


def _killed_and_resumed(harness, label: str, *, forget_the_run_id: bool, config=ONE_LOCAL):
    where = harness.workdir / f"{label}-{config}"
    _prepare_mlflow(where)
    run = harness.new_run(config, label)
    sets, env = _tracked(where), _env(where)
    # the first start's trackers open before its step 1 goes on: each holds what that start sent
    harness.run(run, sets=sets, env=env, faults="wait@step:1=trackers_open:0,kill@step:10", expect="killed")
    if forget_the_run_id:
        os.unlink(os.path.join(run.state, "records", f"{TRACKERS_RECORD}.json"))  # records/<name>.json
    result = harness.run(run, sets=sets, env=env, expect=EXIT_OK)
    assert result.resumed_from() == ("ckpt-0000000008", 8), result.describe()
    assert "warning" not in result.output, result.describe()
    return where, run


@pytest.mark.parametrize("config", [ONE_LOCAL, TWO_LOCAL], ids=str)
def test_a_killed_and_resumed_run_is_one_tracker_run_with_every_step_once(harness, uninterrupted, config):
    """With 2 processes only rank 0 talks to the trackers: still one run, each step once."""
    where, run = _killed_and_resumed(harness, "tracked", forget_the_run_id=False, config=config)
    assert wandb_problems(where / "wandb", run.export) == []
    assert mlflow_problems(where, run.export) == []
    if config == ONE_LOCAL:  # the trackers changed nothing the run computes
        assert_identical(read_export(uninterrupted.export), read_export(run.export))


def test_the_check_fails_when_a_resume_does_not_reuse_the_tracker_run_id(harness):
    where, run = _killed_and_resumed(harness, "forgotten", forget_the_run_id=True)
    assert any("2 W&B runs" in p for p in wandb_problems(where / "wandb", run.export))
    assert mlflow_problems(where, run.export) == ["2 MLflow runs, not one"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_trackers_cost_one_warning_each_and_change_nothing(harness, uninterrupted):
    where = harness.workdir / "unreachable"
    run = harness.new_run(ONE_LOCAL, "unreachable")
    port = _closed_port()
    env = {**_env(where), "WANDB_BASE_URL": f"http://127.0.0.1:{port}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    sets = (
        'log.trackers=["wandb", "mlflow"]',
        "log.wandb.mode=online",
        f"log.wandb.dir={where / 'wandb'}",
        f"log.mlflow.tracking_uri=http://127.0.0.1:{port}",
    )
    result = harness.run(run, sets=sets, env=env, expect=EXIT_OK)
    warnings = [line for line in result.output.splitlines() if line.startswith("rmrun: warning:")]
    assert len(warnings) == 2, result.describe()
    assert any("wandb tracker" in w for w in warnings) and any("mlflow tracker" in w for w in warnings), warnings
    assert "Traceback" not in result.output, result.describe()
    assert_identical(read_export(uninterrupted.export), read_export(run.export))
    shutil.rmtree(where, ignore_errors=True)
