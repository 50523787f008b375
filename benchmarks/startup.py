"""Time from process start to the first optimizer step of ``rmrun run``: fresh vs resumed.

Each run is a real ``rmrun run`` subprocess with ``--set schedule.max_steps=...`` and
``--set log.interval_steps=1 --set log.progress=lines``, so every optimizer step prints a
``step N/M ...`` line; the parent timestamps each line as it arrives (monotonic clock,
started just before the process is created).

One round is: a fresh run on an empty state root, stopped with SIGTERM once its first step
is logged (rmrun commits a checkpoint at the next step boundary and exits 75, as on a
preemption); then a resumed run of the same command on that state root, which loads the
committed tokenized data and checkpoint, and is killed once its first step is logged.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.data import TOKENIZER_DIR, make_rows, write_jsonl

STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")
MILESTONES = {  # name -> what the line starts with
    "tokenized": "tokenize train:",
    "resumed": "resumed from ",
}
EXIT_PREEMPTED = 75


def rmrun_command() -> list[str]:
    """The installed ``rmrun`` console script next to this interpreter, else ``python -m rmrun``."""
    script = Path(sys.executable).with_name("rmrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rmrun"]


def write_recipe(directory: Path, *, model_dir: str, data_file: Path, batch_size: int) -> Path:
    recipe = directory / "recipe.toml"
    recipe.write_text(
        "# Written by benchmarks/startup.py\n"
        '[run]\nname = "bench-startup"\nseed = 0\n\n'
        f'[data]\ntrain = ["{data_file}"]\nformat = "colossalchat"\nmax_length = 512\noverflow = "truncate"\n\n'
        f'[model]\npretrain = "{model_dir}"\ntokenizer = "{TOKENIZER_DIR}"\ninit = "random"\n\n'
        '[plugin]\nname = "ddp"\nmixed_precision = "fp32"\n\n'
        f"[schedule]\nmax_epochs = 1\nbatch_size = {batch_size}\nlr = 5e-4\nweight_decay = 0.01\n"
    )
    return recipe


class _Run:
    """One ``rmrun run`` subprocess whose output lines are timestamped as they arrive."""

    def __init__(self, argv: list[str], *, env: dict, log_path: Path):
        self.lines: list[tuple[float, str]] = []
        self.first_step = threading.Event()
        self.log_path = log_path
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                now = time.monotonic() - self.started
                self.lines.append((now, line.rstrip("\n")))
                log.write(f"{now:9.3f} {line}")
                if STEP_LINE.match(line):
                    self.first_step.set()

    def wait_first_step(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.first_step.wait(0.05):
            if self.proc.poll() is not None:
                self.reader.join(timeout=5)
                if self.first_step.is_set():
                    break
                raise RuntimeError(
                    f"rmrun run exited with {self.proc.returncode} before its first step; "
                    f"see {self.log_path}:\n" + "\n".join(text for _, text in self.lines[-15:])
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"no optimizer step within {timeout:.0f}s; see {self.log_path}")
        return self.milestone_seconds()["first_step"]

    def milestone_seconds(self) -> dict:
        out = {}
        for at, line in self.lines:
            match = STEP_LINE.match(line)
            if match and "first_step" not in out:
                out["first_step"] = at
                out["first_step_number"] = int(match.group(1))
            for name, prefix in MILESTONES.items():
                if name not in out and line.startswith(prefix):
                    out[name] = at
        return out

    def stop(self, timeout: float) -> int:
        """SIGTERM: rmrun commits a checkpoint at the next step boundary and exits 75."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            self.kill()
            raise RuntimeError(f"rmrun run did not stop within {timeout:.0f}s of SIGTERM; see {self.log_path}") from err
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the process this object started, by its pid
            self.proc.wait(timeout=30)
        self.reader.join(timeout=5)


def measure_startup(
    *,
    model_dir: str,
    rounds: int,
    num_pairs: int,
    batch_size: int = 8,
    threads: int = 1,
    timeout: float = 300,
    keep_logs: Path | None = None,
) -> dict:
    """``rounds`` x (fresh run, then a run resumed from the fresh run's committed checkpoint)."""
    work = Path(tempfile.mkdtemp(prefix="rmrun-bench-startup-"))
    try:
        data_file = work / "train.jsonl"
        write_jsonl(data_file, make_rows(num_pairs, seed=1))
        recipe = write_recipe(work, model_dir=model_dir, data_file=data_file, batch_size=batch_size)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env.pop("RMRUN_FAULTS", None)
        env.pop("RMRUN_TRACE_PAIRS", None)
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        fresh, resumed = [], []
        for r in range(rounds):
            state = work / f"state-{r}"
            argv = rmrun_command() + [
                "run",
                str(recipe),
                "--set",
                "schedule.max_steps=1000",
                "--set",
                "log.interval_steps=1",
                "--set",
                "log.progress=lines",
                "--set",
                f"run.state={state}",
            ]
            run = _Run(argv, env=env, log_path=work / f"fresh-{r}.log")
            run.wait_first_step(timeout)
            code = run.stop(timeout)
            if code != EXIT_PREEMPTED:
                raise RuntimeError(
                    f"fresh run exited {code} after SIGTERM, expected {EXIT_PREEMPTED}; see {run.log_path}"
                )
            fresh.append(run.milestone_seconds())
            run = _Run(argv, env=env, log_path=work / f"resumed-{r}.log")
            try:
                run.wait_first_step(timeout)
            finally:
                run.kill()
            milestones = run.milestone_seconds()
            if "resumed" not in milestones:
                raise RuntimeError(f"the second run did not resume from a checkpoint; see {run.log_path}")
            resumed.append(milestones)
            shutil.rmtree(state, ignore_errors=True)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, keep_logs / log.name)
        return {"fresh": fresh, "resumed": resumed, "threads": threads, "pairs": num_pairs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
