"""Weights & Biases (``log.trackers = ["wandb"]``, options in ``[log.wandb]``).

The tracker run id is the W&B run id, so every start continues one W&B run (``resume =
"allow"``). What the run holds already: online, W&B's own resumed step (it refuses an earlier
step anyway); offline, where each start writes a folder of its own under ``wandb/`` and no
server knows the earlier ones, the step records of those folders (:mod:`rmrun.track.records`).
The recipe, the plan and the model card are files of the run; the export's location is in its
summary. A preempted start marks the run as preempting, so W&B shows it waiting for its resume.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from rmrun.recipe.schema import WandbSection
from rmrun.track.records import held_steps


class Backend:
    name = "wandb"

    def __init__(self, options: WandbSection, *, run_name: str):
        self.options = options
        self.run_name = run_name
        self.run: Any = None  # a wandb Run, once open
        self.run_id = ""

    def open(self, *, run_id: str, config: dict, recipe_text: str) -> None:
        import wandb

        o = self.options
        self.run_id = run_id
        if o.dir:
            os.makedirs(o.dir, exist_ok=True)
        self.run = wandb.init(
            project=o.project or self.run_name,
            entity=o.entity,
            name=o.name or self.run_name,
            tags=list(o.tags) or None,
            id=run_id,
            resume="allow",
            mode=o.mode,
            dir=o.dir,
            config=config,
            allow_val_change=True,
            # rmrun's output stays rmrun's: W&B neither wraps the terminal nor prints its banner.
            settings=wandb.Settings(console="off", silent=True, init_timeout=120),
        )
        self.attach("recipe.toml", recipe_text)

    def held(self) -> dict[str, int]:
        assert self.run is not None
        held: dict[str, int] = {}
        starting = int(getattr(self.run, "starting_step", 0) or 0)
        if starting > 0:  # a resumed online run: W&B refuses the steps before this one
            held["*"] = starting - 1
        here = os.path.dirname(os.path.abspath(self.run.dir))  # .../wandb/<mode-run-time-id>/files
        for path in sorted(
            glob.glob(os.path.join(os.path.dirname(here), f"*-{self.run_id}", f"run-{self.run_id}.wandb"))
        ):
            if os.path.dirname(path) == here:
                continue
            for key, step in held_steps(path).items():
                held[key] = max(step, held.get(key, -1))
        return held

    def send(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        assert self.run is not None
        for step, metrics in rows:
            self.run.log(metrics, step=step)

    def attach(self, name: str, text: str) -> None:
        assert self.run is not None
        with open(os.path.join(self.run.dir, name), "w", encoding="utf-8") as f:  # the run's files are kept
            f.write(text)

    def note(self, values: dict[str, str]) -> None:
        assert self.run is not None
        for key, value in values.items():
            self.run.summary[key] = value

    def close(self, *, outcome: str) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        if outcome == "preempted":
            run.mark_preempting()
        run.finish(exit_code=0 if outcome == "finished" else 1)
