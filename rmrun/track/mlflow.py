"""MLflow (``log.trackers = ["mlflow"]``, options in ``[log.mlflow]``), through ``MlflowClient``.

MLflow makes its own run ids, so the tracker run id is a tag of the run (``rmrun.run_id``):
each start looks the run up by it in the experiment and continues it, or creates it (with the
recipe's keys as parameters). What the run holds already is each metric's history, read back
from the tracking store. The recipe, the plan and the model card are artifacts; the export's
location is a tag. A preempted start leaves the run KILLED until the next start resumes it.
"""

from __future__ import annotations

from typing import Any

from rmrun.recipe.schema import MlflowSection
from rmrun.track import now_ms

RUN_ID_TAG = "rmrun.run_id"
MAX_PARAM = 6000  # MLflow's longest parameter value
BATCH = 1000  # MLflow's most metrics per log_batch


class Backend:
    name = "mlflow"

    def __init__(self, options: MlflowSection, *, run_name: str):
        self.options = options
        self.run_name = run_name
        self.client: Any = None  # an MlflowClient, once open
        self.run_id = ""  # MLflow's

    def open(self, *, run_id: str, config: dict, recipe_text: str) -> None:
        import logging

        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines in rmrun's output
        o = self.options
        client = self.client = MlflowClient(tracking_uri=o.tracking_uri)
        name = o.experiment or self.run_name
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            return
        tags = {RUN_ID_TAG: run_id, **dict(tag.split("=", 1) for tag in o.tags)}
        self.run_id = client.create_run(experiment_id, run_name=o.run_name or self.run_name, tags=tags).info.run_id
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(config.items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            client.log_batch(self.run_id, params=params[i : i + 100])
        client.log_text(self.run_id, recipe_text, "recipe.toml")

    def held(self) -> dict[str, int]:
        assert self.client is not None
        held = {}
        for key in self.client.get_run(self.run_id).data.metrics:
            held[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))
        return held

    def send(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        assert self.client is not None
        stamp = now_ms()
        metrics = [Metric(k, v, stamp, step) for step, row in rows for k, v in row.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def attach(self, name: str, text: str) -> None:
        assert self.client is not None
        self.client.log_text(self.run_id, text, name)

    def note(self, values: dict[str, str]) -> None:
        assert self.client is not None
        for key, value in values.items():
            self.client.set_tag(self.run_id, f"rmrun.{key}", value)

    def close(self, *, outcome: str) -> None:
        if self.client is None or not self.run_id:
            return
        status = {"finished": "FINISHED", "preempted": "KILLED"}.get(outcome, "FAILED")
        self.client.set_terminated(self.run_id, status=status)
