"""The schema of the experiment trackers' tables, [log.wandb] and [log.mlflow] (``rmrun.track``
speaks to them). This module imports only the standard library."""

# ruff: noqa: UP045

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from rmrun.recipe.fields import doc

TrackerName = Literal["wandb", "mlflow"]


@dataclass(frozen=True)
class WandbSection:
    """[log.wandb]: the Weights & Biases run, when log.trackers has "wandb"."""

    project: Optional[str] = doc("W&B project. Default: run.name.", None)
    entity: Optional[str] = doc("W&B entity (a user or a team). Default: the API key's default entity.", None)
    name: Optional[str] = doc("Display name of the W&B run. Default: run.name.", None)
    tags: tuple[str, ...] = doc("Tags of the W&B run.", ())
    mode: Optional[Literal["online", "offline"]] = doc(
        "online, or offline: the run is kept under log.wandb.dir for `wandb sync` (each start in a folder of "
        "its own, one run id). Default: W&B's own (WANDB_MODE, else online).",
        None,
    )
    dir: Optional[str] = doc(
        "Local folder W&B writes under (its wandb/ folder). Default: W&B's own (WANDB_DIR, else the working "
        "directory).",
        None,
        path=True,
    )


@dataclass(frozen=True)
class MlflowSection:
    """[log.mlflow]: the MLflow run, when log.trackers has "mlflow"."""

    tracking_uri: Optional[str] = doc(
        "MLflow tracking URI (a server's http(s):// address, or sqlite:///file.db). Default: MLflow's own "
        "(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory).",
        None,
    )
    experiment: Optional[str] = doc("MLflow experiment, created when missing. Default: run.name.", None)
    run_name: Optional[str] = doc("Name of the MLflow run. Default: run.name.", None)
    tags: tuple[str, ...] = doc('Tags of the MLflow run, each "key=value".', ())
