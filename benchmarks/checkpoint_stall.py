"""Training time lost per checkpoint on a store with a fixed upload bandwidth: background
uploads (``checkpoint.async_upload = true``) against blocking ones.

One measurement is one ``rmrun run`` of the quickstart recipe (tiny Llama, ddp, 1 process)
in a fresh Python process (``python -m benchmarks.checkpoint_stall JOB.json RESULT.json``),
with its state on ``throttled://``: an in-memory fsspec filesystem that sleeps for every
byte written, as if the bucket were at the end of a link of ``bytes_per_second`` (one link:
concurrent writes share it). The worker times, in the training process itself:

- each ``CheckpointHook.after_step`` call: everything the training loop waits for because
  of checkpoints (the snapshot; with blocking uploads the upload and commit too; with
  background ones the commit, and a wait when an upload is still running when the next
  checkpoint is due);
- each optimizer step (a background upload competes with training for the CPU);
- the wall time of the training loop up to the step before the last (the last step's
  checkpoint blocks by design: it is the run's final state).

and reads each checkpoint's snapshot and upload seconds from its manifest. Variants:
``blocking``, ``background``, and ``none`` (no periodic checkpoint: the loop's wall time
without checkpoints, for the end-to-end figure).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from fsspec.implementations.memory import MemoryFileSystem

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "recipes" / "quickstart.toml"
VARIANTS = ("none", "blocking", "background")


class ThrottledFileSystem(MemoryFileSystem):
    """``throttled://``: memory, with every written byte paid for at ``bytes_per_second``."""

    protocol = "throttled"
    store: dict = {}  # its own namespace, apart from memory://
    pseudo_dirs = [""]
    bytes_per_second = 2.0 * 2**20
    _link = threading.Lock()  # one link: concurrent uploads share its bandwidth

    @classmethod
    def pay(cls, num_bytes: int) -> None:
        with cls._link:
            time.sleep(num_bytes / cls.bytes_per_second)

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "w" in mode or "a" in mode:
            write = f.write

            def paid_write(data):
                self.pay(len(data))
                return write(data)

            f.write = paid_write
        return f

    def pipe_file(self, path, value, *args, **kwargs):
        self.pay(len(value))
        return super().pipe_file(path, value, *args, **kwargs)


def write_recipe(directory: Path, *, variant: str, total_steps: int, interval: int) -> Path:
    every = interval if variant != "none" else 1_000_000
    path = directory / f"{variant}.toml"
    path.write_text(
        f'extends = "{QUICKSTART}"\n'
        f'[run]\nname = "stall-{variant}"\nstate = "throttled://stall-{variant}"\n'
        f"[schedule]\nmax_steps = {total_steps}\n"
        f"[checkpoint]\ninterval_steps = {every}\nkeep = 1000\nasync_upload = {'true' if variant == 'background' else 'false'}\n"
        f"[eval]\ninterval_steps = 1000000\n"
        f'[log]\nprogress = "off"\n'
        f'[output]\ndir = "{directory / ("export-" + variant)}"\nreward_stats = false\n'
    )
    return path


def _instrument() -> dict:
    """Time every CheckpointHook.after_step and optimizer step of this process's run."""
    from rmrun.train.hooks import CheckpointHook
    from rmrun.train.trainer import Trainer

    timings = {"hook": {}, "step": {}, "step_started": {}}
    hook_after_step, optimizer_step = CheckpointHook.after_step, Trainer.optimizer_step

    def timed_hook(self, trainer, *, boundary):
        started = time.perf_counter()
        try:
            return hook_after_step(self, trainer, boundary=boundary)
        finally:
            timings["hook"][trainer.state.step] = (started, time.perf_counter())

    def timed_step(self, step):
        started = time.perf_counter()
        line = optimizer_step(self, step)
        timings["step"][self.state.step + 1] = time.perf_counter() - started
        timings["step_started"][self.state.step + 1] = started
        return line

    CheckpointHook.after_step = timed_hook
    Trainer.optimizer_step = timed_step
    return timings


def worker(job_path: str, result_path: str) -> None:
    import fsspec

    job = json.loads(Path(job_path).read_text())
    ThrottledFileSystem.bytes_per_second = job["bytes_per_second"]
    fsspec.register_implementation("throttled", ThrottledFileSystem, clobber=True)
    timings = _instrument()
    from rmrun.cli.main import main

    code = main(["run", job["recipe"]])
    if code != 0:
        raise SystemExit(f"rmrun run exited {code}")
    total = job["total_steps"]
    window = range(1, total)  # the last step's checkpoint is the run's final state: it blocks by design
    hook = timings["hook"]
    from rmrun.store import StateStore
    from rmrun.store.keys import CHECKPOINT_PREFIX

    store = StateStore(f"throttled://stall-{job['variant']}")
    checkpoints = []
    for key in store.committed_keys(CHECKPOINT_PREFIX):
        manifest = store.open_unverified(key).manifest
        meta = manifest["meta"]
        size = sum(entry["size"] for entry in manifest["files"])
        checkpoints.append(
            {
                "step": meta["step"],
                "bytes": size,
                "snapshot_seconds": meta.get("snapshot_seconds"),
                "upload_seconds": meta.get("upload_seconds"),
            }
        )
    result = {
        "variant": job["variant"],
        "hook_seconds": [hook[s][1] - hook[s][0] for s in window],
        "step_seconds": [timings["step"][s] for s in window],
        "loop_seconds": hook[total - 1][1] - timings["step_started"][1],
        "checkpoints": checkpoints,
    }
    Path(result_path).write_text(json.dumps(result))


def measure(
    variant: str, *, workdir: Path, total_steps: int, interval: int, bytes_per_second: float, threads: int = 1
) -> dict:
    """One ``rmrun run`` of ``variant`` in a fresh process; its timings."""
    import subprocess

    directory = Path(tempfile.mkdtemp(prefix=f"stall-{variant}-", dir=workdir))
    recipe = write_recipe(directory, variant=variant, total_steps=total_steps, interval=interval)
    job, result = directory / "job.json", directory / "result.json"
    job.write_text(
        json.dumps(
            {
                "recipe": str(recipe),
                "variant": variant,
                "total_steps": total_steps,
                "bytes_per_second": bytes_per_second,
            }
        )
    )
    env = dict(
        os.environ,
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("RMRUN_FAULTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.checkpoint_stall", str(job), str(result)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"checkpoint stall worker ({variant}) failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
