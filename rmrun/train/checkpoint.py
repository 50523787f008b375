"""Training checkpoints: everything a run needs to continue bit for bit.

A checkpoint is a committed state ``ckpt/<step>`` in the store holding the model,
optimizer and scheduler (through the booster; loss scale included where the plugin
keeps one in its optimizer state), every rank's RNG streams, and the trainer state
(epoch, absolute count of pairs consumed, optimizer step, meters, metrics and eval
history). Nothing in it is a pickle that can run code: tensors are safetensors, the
optimizer and scheduler files are loaded with ``torch.load(weights_only=True)``
(forced for every load in the process by :func:`rmrun.runtime.process.configure_process`),
the rest is JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from rmrun.runtime.collective import broadcast, gather_all
from rmrun.runtime.faults import fault_point, restore_enabled
from rmrun.runtime.nodecopy import node_copy
from rmrun.runtime.process import ScratchFull
from rmrun.store import StoreError, StoreUnreachable
from rmrun.store.keys import CHECKPOINT_PREFIX, checkpoint_key
from rmrun.train.history import RunView, read_history, write_history_piece

if TYPE_CHECKING:
    from rmrun.model.boost import Boosted
    from rmrun.store import AttemptWriter, StagedState

# ---------------------------------------------------------------- RNG streams


def capture_rng() -> dict:
    """The process's random streams as JSON-safe data."""
    numpy_state = np.random.get_state()  # the legacy tuple: numpy's global generator is an MT19937
    assert isinstance(numpy_state, tuple), "numpy's global generator gives its state as a tuple"
    kind, keys, pos, has_gauss, gauss = numpy_state
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- writing
#
# Every rank writes and uploads its own part; no path is shared between ranks.
#
# 1. At the step boundary (all ranks, synchronous): rank 0 stages ``ckpt-<step>`` and
#    hands the attempt's name to every rank; each rank writes what it holds (through the
#    Booster: its shards if the plugin shards, its RNG streams; rank 0 also the trainer
#    state) into its own node-local scratch folder. This is the snapshot: the same bytes
#    whether the upload then blocks or not, so exactness does not depend on it.
# 2. Each rank uploads the files it wrote into the attempt, several at a time, in a
#    background thread (rank 0 first commits the history piece). No collective runs
#    in that thread: collectives stay on the training loop's thread.
# 3. Once every rank's upload is over (the checkpoint hook learns it from the one
#    all-reduce it runs at every step anyway), all ranks gather their (name, size, sha256)
#    lists; rank 0 writes the manifest and publishes COMMIT (lease-fenced) only if every
#    rank succeeded. A rank that failed makes every rank raise CheckpointFailed and nothing
#    is committed: the attempt is garbage, removed when the next lease is taken.


class CheckpointFailed(StoreError):
    """A checkpoint was not committed because a rank could not write or upload its part."""


class CheckpointUnreachable(CheckpointFailed, StoreUnreachable):
    """A checkpoint was not committed because the store stopped answering a rank's upload."""


class PendingCheckpoint:
    """A snapshot taken on this rank, its upload running in a background thread."""

    def __init__(
        self,
        ctx: RunView,
        *,
        key: str,
        step: int,
        staged: StagedState | None,
        writer: AttemptWriter,
        scratch: str,
        trainer_state: dict,
        snapshot_seconds: float,
    ) -> None:
        self.ctx = ctx
        self.key = key
        self.step = step
        self.staged = staged  # rank 0's StagedState, None elsewhere
        self.writer = writer
        self.scratch = scratch
        self.trainer_state = trainer_state
        self.snapshot_seconds = snapshot_seconds
        self.upload_seconds = 0.0
        self.entries: list[dict] = []
        self.error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._upload, name=f"rmrun-upload-{key}", daemon=True)
        self._thread.start()

    def uploading(self) -> bool:
        return self._thread.is_alive()

    def _upload(self) -> None:
        started = time.perf_counter()
        try:
            if self.staged is not None:
                write_history_piece(self.ctx, self.trainer_state)
            files = _scratch_files(self.scratch)
            # The smallest file first, alone: a kill right after it leaves a half-uploaded attempt.
            first = dict(sorted(files.items(), key=lambda item: os.path.getsize(item[1]))[:1])
            self.entries = self.writer.put_files(first)
            fault_point("checkpoint_upload", step=self.step, rank=self.ctx.rank.rank)
            self.entries += self.writer.put_files({n: p for n, p in files.items() if n not in first})
        except Exception as e:  # reported to every rank by finish()
            self.error = e
        finally:
            self.upload_seconds = time.perf_counter() - started
            if self._abandoned:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def finish(self, *, keep: int) -> dict:
        """All ranks: wait for this rank's upload, gather every rank's files, and commit on
        rank 0 if every rank succeeded; returns the checkpoint's timings (seconds)."""
        self._thread.join()
        shutil.rmtree(self.scratch, ignore_errors=True)
        mine = {
            "entries": self.entries,
            "error": _describe(self.error) if self.error else None,
            "unreachable": isinstance(self.error, StoreUnreachable),
            "snapshot_seconds": self.snapshot_seconds,
            "upload_seconds": self.upload_seconds,
        }
        reports = gather_all(mine)
        failed = [(rank, report["error"]) for rank, report in enumerate(reports) if report["error"]]
        if failed:
            rank, error = failed[0]
            unreachable = any(report.get("unreachable") for report in reports)
            raise (CheckpointUnreachable if unreachable else CheckpointFailed)(
                f"checkpoint {self.key} not committed: rank {rank} could not write its part: "
                f"{error}; the last committed checkpoint is intact"
            ) from self.error
        timings = {
            "snapshot_seconds": round(max(r["snapshot_seconds"] for r in reports), 3),
            "upload_seconds": round(max(r["upload_seconds"] for r in reports), 3),
        }
        started = time.perf_counter()
        if self.ctx.rank.is_main:
            try:
                self._commit(reports, timings=timings, keep=keep)
            except Exception as e:
                broadcast(f"rank 0: {_describe(e)}")
                raise
        problem = broadcast(None)
        if problem:
            raise CheckpointFailed(f"checkpoint {self.key} not committed: {problem}")
        timings["commit_seconds"] = round(time.perf_counter() - started, 3)
        return timings

    def _commit(self, reports: list[dict], *, timings: dict, keep: int) -> None:
        """Rank 0: every rank's files into the manifest, then COMMIT, then retention."""
        assert self.staged is not None, "rank 0 staged the attempt it commits"
        for report in reports:
            self.staged.add_files(report["entries"])
        fault_point("checkpoint_before_commit", step=self.step, rank=0)
        self.staged.commit(meta=timings)
        fault_point("retention", step=self.step, rank=0)
        self.ctx.store.retain(CHECKPOINT_PREFIX, keep=keep, lease=self.ctx.held_lease)

    def abandon(self) -> None:
        """Leave this checkpoint uncommitted (the run is failing): no collective, no wait."""
        self._abandoned = True
        if not self._thread.is_alive():
            shutil.rmtree(self.scratch, ignore_errors=True)


def _snapshot_bytes(boosted: Boosted) -> int:
    """About what one snapshot takes: the weights, and twice them for Adam's moments."""
    return 3 * sum(p.numel() * p.element_size() for p in boosted.model.parameters())


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}"


def _scratch_files(scratch: str) -> dict[str, str]:
    """{name in the state: local path} of every file this rank wrote."""
    files = {}
    for dirpath, _, filenames in os.walk(scratch):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            files[os.path.relpath(path, scratch).replace(os.sep, "/")] = path
    return files


def start_checkpoint(ctx: RunView, *, boosted: Boosted, trainer_state: dict) -> PendingCheckpoint | None:
    """All ranks: snapshot ``ckpt-<step>`` into node-local scratch and start uploading it;
    None if that checkpoint is committed already."""
    started = time.perf_counter()
    step = trainer_state["step"]
    key = checkpoint_key(step)
    staged = None
    if ctx.rank.is_main and ctx.store.open_verified(key, hash_files=False) is None:
        staged = ctx.stage(
            key,
            meta={
                "step": step,
                "epoch": trainer_state["epoch"],
                "pairs_consumed": trainer_state["pairs_consumed"],
                "world_size": ctx.rank.world_size,
                "fingerprint": ctx.identity["fingerprint"],
            },
        )
    attempt = broadcast(staged.attempt if staged is not None else None)
    if attempt is None:
        return None
    rng = capture_rng()  # before the Booster's save, whatever it may draw
    try:
        scratch = tempfile.mkdtemp(prefix="rmrun-ckpt-")
    except OSError as e:
        raise ScratchFull.of(e, what=f"the checkpoint at step {step}", needed=_snapshot_bytes(boosted)) from None
    try:
        boosted.save(scratch)
        _write_json(scratch, f"rng/rank-{ctx.rank.rank:05d}.json", rng)
        if ctx.rank.is_main:
            # Constant size: the history lives in its pieces; this says how far they reach.
            _write_json(scratch, "trainer.json", dict(trainer_state, metrics=[], evals=[], history_through=step))
        fault_point("checkpoint_write", step=step, rank=ctx.rank.rank)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        if ScratchFull.explains(e):  # torch's writer says only "file write failed"
            raise ScratchFull.of(e, what=f"the checkpoint at step {step}", needed=_snapshot_bytes(boosted)) from None
        raise
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return PendingCheckpoint(
        ctx,
        key=key,
        step=step,
        staged=staged,
        writer=ctx.store.attempt_writer(key, attempt),
        scratch=scratch,
        trainer_state=trainer_state,
        snapshot_seconds=time.perf_counter() - started,
    )


def _write_json(directory: str, name: str, data: dict) -> None:
    path = os.path.join(directory, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(json.dumps(data).encode())


def save_checkpoint(ctx: RunView, *, boosted: Boosted, trainer_state: dict, keep: int) -> str | None:
    """Commit ``ckpt-<step>`` and wait for it (all ranks call this); the key, or None if it exists."""
    pending = start_checkpoint(ctx, boosted=boosted, trainer_state=trainer_state)
    if pending is None:
        return None
    pending.finish(keep=keep)
    return pending.key


def latest_checkpoint_key(ctx: RunView) -> str | None:
    """Rank 0 finds the newest checkpoint whose manifest and file sizes check out (its
    contents are hashed by the one real read, in load_checkpoint); every rank gets its key."""
    key = None
    if ctx.rank.is_main:
        state = ctx.store.latest(CHECKPOINT_PREFIX, hash_files=False)
        key = state.key if state is not None else None
    return broadcast(key)


def load_checkpoint(ctx: RunView, key: str, *, boosted: Boosted) -> dict:
    """Load model, optimizer, scheduler and this rank's RNG; returns the trainer state.

    Collective. The checkpoint is read from the store once per node and hashed as it
    streams (rmrun.runtime.nodecopy); a corruption any node found raises CorruptState on every
    rank. Nothing is loaded into the model before the whole copy has verified."""
    with node_copy(ctx.store, key, rank=ctx.rank) as copy:
        if copy.corrupt is not None:
            raise copy.corrupt
        directory = copy.directory
        assert directory is not None, "a copy no node found corrupt has its directory"
        trainer_state = json.loads(_read_local(directory, "trainer.json"))
        through = trainer_state.pop("history_through", None)
        if through is not None:  # (older checkpoints carry their whole history inline)
            trainer_state["metrics"], trainer_state["evals"] = _history_for_every_rank(ctx, through=through)
        boosted.load(directory)
        rng_name = f"rng/rank-{ctx.rank.rank:05d}.json"
        same_world = copy.meta.get("world_size") == ctx.rank.world_size
        if restore_enabled("rng") and same_world and os.path.isfile(os.path.join(directory, rng_name)):
            restore_rng(json.loads(_read_local(directory, rng_name)))
        else:
            # A new world size has no stream for this rank: a fresh, still deterministic one.
            seed_everything(trainer_state["seed"] + 1000 * trainer_state["step"] + ctx.rank.rank)
    return trainer_state


def _read_local(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, *name.split("/")), "rb") as f:
        return f.read()


def _history_for_every_rank(ctx: RunView, *, through: int) -> tuple[list, list]:
    """Rank 0 reads the history pieces and hands them to every rank (one read per job).
    A gap is a ValueError on every rank, so that every rank condemns the checkpoint."""
    found: tuple[list, list] | str | None = None
    if ctx.rank.is_main:
        try:
            found = read_history(ctx.store, through=through)
        except ValueError as e:
            found = str(e)
    found = broadcast(found)
    if isinstance(found, str):
        raise ValueError(found)
    return found
