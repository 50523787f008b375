"""One short, throw-away run of one ``rmrun bench`` combination, in a process of its own.

``python -m rmrun.bench.worker JOB.json RESULT.json``: the job names the recipe and the
combination's overrides (already validated by the parent), the tokenized sample of pairs,
the number of timed steps and a scratch state root. The worker joins a process group
(standalone, or the ranks of the parent's torchrun world on a port the parent chose),
builds the model and plugin as ``rmrun run`` does (``rmrun.model.boost``), takes one warm-up
optimizer step (time to first step), then ``steps`` timed steps through rmrun's
``Trainer``, then checkpoint saves (blocking and background) and loads through a local
state store. It writes what it measured, or why it could not run (``out of memory``
included), to RESULT.json.

A fresh process per short run keeps the combinations apart (each peak memory is its own,
and an out-of-memory leaves nothing behind). Test hook: the job's ``memory_cap_mib``
caps the address space (``RLIMIT_AS``) at what is in use when training starts plus that
many MiB, to force an out-of-memory on a CPU machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

OUT_OF_MEMORY = "out of memory"


def checkpoint_timings(rank, trainer, *, rounds: int, root: str | None = None) -> dict:
    """Time checkpoints through a local state store, ``rounds`` times each, on a new step each time.

    - ``save_seconds``: a blocking ``save_checkpoint`` (snapshot, upload, hashes, COMMIT,
      retention): what training waits for with ``checkpoint.async_upload = false``.
    - ``load_seconds``: ``load_checkpoint`` of that checkpoint.
    - The background path as ``rmrun.train.hooks.CheckpointHook`` takes it (``async_upload = true``):
      ``snapshot_seconds``, ``start_checkpoint`` (the training thread's wait at the step);
      ``upload_wait_seconds``, from then until every rank's upload is over (in a run, training
      goes on meanwhile); ``commit_seconds``, ``PendingCheckpoint.finish`` once the uploads
      are over, as the hook calls it at the next step boundary (the training thread's wait:
      gather the file lists, manifest, COMMIT, retention). ``stall_seconds`` = snapshot +
      commit: what the training thread loses per background checkpoint; ``commit_wait_seconds``
      = upload wait + commit: what ``finish`` takes when called right after the snapshot.
    """
    from rmrun.run.context import RunContext
    from rmrun.runtime.collective import barrier, broadcast
    from rmrun.store import StateStore
    from rmrun.train.checkpoint import load_checkpoint, save_checkpoint, start_checkpoint

    root = broadcast(tempfile.mkdtemp(prefix="rmrun-bench-state-", dir=root) if rank.is_main else None)
    store = StateStore(root)
    lease = store.acquire_lease(holder=f"bench:{os.getpid()}") if rank.is_main else None
    broadcast(None)
    ctx = RunContext(
        store=store,
        lease=lease,
        rank=rank,
        recipe_path="benchmark",
        recipe_text="",
        identity={"fingerprint": "benchmark"},
    )
    saves, loads, sizes = [], [], []
    snapshots, upload_waits, commits = [], [], []
    state = trainer.state.to_dict()

    def next_state(state: dict) -> dict:
        # A new key each time, as in a run; its step has a metric line as a real step would.
        step = state["step"] + 1
        last = state["metrics"][-1] if state["metrics"] else {}
        return dict(state, step=step, metrics=[*state["metrics"], dict(last, step=step)])

    try:
        for _ in range(rounds):
            state = next_state(state)
            barrier()
            started = time.perf_counter()
            key = save_checkpoint(ctx, boosted=trainer.boosted, trainer_state=state, keep=2)
            assert key is not None, f"step {state['step']} is new: no checkpoint of it exists yet"
            saves.append(time.perf_counter() - started)
            if rank.is_main:
                committed = store.open_verified(key)
                assert committed is not None, f"{key} was just committed"
                sizes.append(sum(entry["size"] for entry in committed.manifest["files"]))
            barrier()
            started = time.perf_counter()
            load_checkpoint(ctx, key, boosted=trainer.boosted)
            loads.append(time.perf_counter() - started)

            state = next_state(state)
            barrier()
            started = time.perf_counter()
            pending = start_checkpoint(ctx, boosted=trainer.boosted, trainer_state=state)
            assert pending is not None, f"step {state['step']} is new: no checkpoint of it exists yet"
            snapshots.append(time.perf_counter() - started)
            started = time.perf_counter()
            # The hook commits at the first step boundary after every rank's upload is over (it
            # learns that from an all-reduce it runs at every step anyway).
            while pending.uploading():
                time.sleep(0.001)
            barrier()
            upload_waits.append(time.perf_counter() - started)
            started = time.perf_counter()
            pending.finish(keep=2)
            commits.append(time.perf_counter() - started)
    finally:
        barrier()
        if rank.is_main:
            store.release(ctx.held_lease)
            shutil.rmtree(root, ignore_errors=True)
    return {
        "save_seconds": saves,
        "load_seconds": loads,
        "snapshot_seconds": snapshots,
        "upload_wait_seconds": upload_waits,
        "commit_seconds": commits,
        "stall_seconds": [s + c for s, c in zip(snapshots, commits)],
        "commit_wait_seconds": [u + c for u, c in zip(upload_waits, commits)],
        "bytes": sizes[-1] if sizes else None,
    }


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cap_memory(extra_mib: float) -> None:
    import resource

    cap = _address_space_bytes() + int(extra_mib * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
    )


def _steps(trainer):
    """Optimizer steps without end: epoch after epoch of the sample."""
    while True:
        yield from trainer.steps_of_epoch(trainer.state.epoch)


def _padded_slots(trainer, step) -> int:
    """Token slots this rank's batches fill: chosen and rejected padded to the batch's longest."""
    total = 0
    for micro in step.micro_batches:
        if len(micro.indices):
            total += 2 * len(micro.indices) * int(trainer.lengths[micro.indices].max())
    return total


def _peak_memory(rank) -> dict:
    import resource

    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if rank.cuda:
        torch.cuda.synchronize()
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _build(job: dict, rank):
    from rmrun.data import TokenizedPairs
    from rmrun.data.mapped import map_safetensors
    from rmrun.model.boost import boost
    from rmrun.model.model import build_reward_model, load_tokenizer
    from rmrun.recipe import load_recipe, make_plan
    from rmrun.recipe.backbone import model_attention
    from rmrun.train.build import build_trainer
    from rmrun.train.checkpoint import seed_everything

    recipe = load_recipe(job["recipe"], overrides=job["overrides"])
    tokenizer = load_tokenizer(recipe.model)
    with open(job["data_stats"]) as f:
        data = TokenizedPairs.from_arrays(map_safetensors(job["data"]), json.load(f))
    plan = make_plan(recipe, world_size=rank.world_size, num_pairs=len(data), cuda=rank.cuda)
    seed_everything(recipe.run.seed + rank.rank)
    plugin = recipe.plugin
    net = build_reward_model(
        recipe.model,
        tokenizer=tokenizer,
        grad_checkpoint=plugin.grad_checkpoint,
        attn_implementation=model_attention(plugin, forward=plan.forward),
        seed=recipe.run.seed,
    )
    num_params = sum(p.numel() for p in net.parameters())
    boosted = boost(net, plan=plan, plugin=plugin, schedule=recipe.schedule, cuda=rank.cuda)
    trainer = build_trainer(
        boosted,
        pairs=data,
        tokenizer=tokenizer,
        plan=plan,
        rank=rank,
        seed=recipe.run.seed,
        schedule=recipe.schedule,
        loss=recipe.loss,
        data=recipe.data,
    )
    return trainer, num_params


def _timed_step(trainer, step, *, cuda: bool) -> dict:
    import torch

    started = time.perf_counter()
    line = trainer.optimizer_step(step)
    trainer.advance(step, line)
    if cuda:
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - started,
        "pairs": step.pairs,
        "tokens": line["tokens"],
        "padded": _padded_slots(trainer, step),
        "loss": line.get("loss"),
    }


def measure(job: dict, rank) -> dict:
    """Warm-up step, ``job["steps"]`` timed steps, one checkpoint save and load."""
    import torch

    trainer, num_params = _build(job, rank)
    if job.get("memory_cap_mib") is not None:
        _cap_memory(job["memory_cap_mib"])
    steps = _steps(trainer)
    first = _timed_step(trainer, next(steps), cuda=rank.cuda)
    first_step_s = time.time() - job["launched"]
    records = [_timed_step(trainer, next(steps), cuda=rank.cuda) for _ in range(job["steps"])]
    result = {
        "status": "ok",
        "rank": rank.rank,
        "world_size": rank.world_size,
        "num_params": num_params,
        "threads": torch.get_num_threads(),
        "first_step_s": first_step_s,
        "warmup": first,
        "records": records,
        "gpu_name": torch.cuda.get_device_name() if rank.cuda else None,
        **_peak_memory(rank),
    }
    if job.get("checkpoint", True):
        result["checkpoint"] = checkpoint_timings(rank, trainer, rounds=1, root=job["scratch"])
    return result


def main(job_path: str, result_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    with open(job_path) as f:
        job = json.load(f)
    from rmrun.runtime import dist

    result: dict
    rank = None
    try:
        rank = dist.start(seed=0)
        result = measure(job, rank)
    except BaseException as e:  # reported to the parent, which goes on with the next combination
        if _is_out_of_memory(e):
            result = {"status": "oom", "reason": f"{OUT_OF_MEMORY} ({type(e).__name__})"}
        else:
            lines = str(e).strip().splitlines()
            result = {
                "status": "error",
                "reason": f"{type(e).__name__}: {lines[0] if lines else ''}".strip(),
                "traceback": traceback.format_exc(),
            }
    result["rank"] = rank.rank if rank is not None else None
    with open(result_path, "w") as f:
        json.dump(result, f)
    try:
        dist.stop()
    except Exception:  # a group broken by a failed peer; the process ends anyway
        pass
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter teardown of ColossalAI/torch threads
