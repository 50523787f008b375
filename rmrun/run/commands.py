"""What ``rmrun run``, ``check`` and ``status`` do: each returns 0 or raises, and the CLI
turns what it raises into the exit code (``rmrun.errors``)."""

from __future__ import annotations

import os

from rmrun.errors import EXIT_FAILED, EXIT_OK, StateUnusable, StoppedBeforeStart, UsageError, Worded, exit_code
from rmrun.recipe import RecipeError, load_recipe, make_plan
from rmrun.recipe.data_section import has_eval
from rmrun.recipe.plugins import cpu_precision_note
from rmrun.store.keys import (
    CHECKPOINT_PREFIX,
    EXPORT_KEY,
    IDENTITY_KEY,
    LEASE_HOLDER_RECORD,
    PLAN_RECORD,
    QUARANTINED_RECORDS,
    STEP_RECORDS,
    TOKENIZE_PREFIX,
)


def check(recipe_path: str, *, overrides) -> int:
    from rmrun.run.graph import build_graph
    from rmrun.run.preflight import preflight
    from rmrun.serve.exported import objective_text

    recipe, world, num_pairs = preflight(recipe_path, overrides=overrides)
    exact = num_pairs is not None
    num_pairs = num_pairs or 0
    by_source = _source_pairs(recipe) if exact and recipe.data.sources else None
    plan = make_plan(
        recipe,
        world_size=world.size,
        num_pairs=max(num_pairs, 1),
        num_pairs_exact=False,
        cuda=world.cuda,
        source_pairs=by_source,
    )
    steps = build_graph(
        num_epochs=plan.num_epochs,
        tokenize_key=f"{TOKENIZE_PREFIX}<data fingerprint>",
        has_eval=has_eval(recipe.data),
    )
    print(f"recipe {recipe_path}: ok")
    print("steps: " + " -> ".join(s.name for s in steps))
    print(f"world: {world.size} process(es), {'CUDA' if world.cuda else 'no CUDA'}")
    print(f"plugin: {plan.plugin_class}({', '.join(f'{k}={v!r}' for k, v in plan.plugin_args.items())})")
    if not world.cuda and (note := cpu_precision_note(recipe.plugin, cpu_bf16=world.cpu_bf16)):
        print(f"precision: {note}")
    if plan.find_unused_reason:
        print(f"find_unused_parameters={plan.plugin_args['find_unused_parameters']}: {plan.find_unused_reason}")
    counted = f"{num_pairs} pairs read" if exact else "pair count unknown until tokenize"
    if exact and recipe.data.eval_split is not None:
        counted = f"{num_pairs} training pairs read, {_split_pairs(recipe)} more held out for eval (data.eval_split)"
    print(
        f"data: {counted}; per-rank batch {recipe.schedule.batch_size} pairs x {recipe.schedule.accumulation_steps} "
        f"accumulation x {plan.dp_size} data-parallel = {plan.pairs_per_step} pairs per optimizer step"
    )
    if plan.sources:
        print(f"mixture: {plan.mixture_text()}")
    print(f"forward: {plan.forward}: {plan.forward_reason}")
    print(f"objective: {objective_text(data=recipe.data, loss=recipe.loss)}".replace("`", ""))
    print(f"optimizer steps: {plan.steps_per_epoch} per epoch, {plan.total_steps} in all, {plan.warmup_steps} warmup")
    print(f"state: {plan.state}\nexport: {plan.export}")
    print("plan: " + plan.to_json())
    return EXIT_OK


# ------------------------------------------------------------------ status


def _state_url(target: str, overrides) -> str:
    if target.endswith(".toml") or os.path.isfile(target):
        return load_recipe(target, overrides=overrides).state_url
    return target


def status(target: str, *, overrides) -> int:
    from rmrun.run.preflight import bucket_error, protocol_problem
    from rmrun.store import StoreError

    url = _state_url(target, overrides)
    problem = protocol_problem(url)
    if problem:
        raise RecipeError([f"{url}: {problem}"])
    try:
        return _status(url)
    except (StoreError, BrokenPipeError):
        raise  # the store's own error; or the reader of the output went away
    except OSError as e:
        line = f"{url}: {bucket_error(e, url)}"
        raise (UsageError([line]) if isinstance(e, FileNotFoundError) else StateUnusable([line])) from e


def _status(url: str) -> int:
    from rmrun.store import StateStore

    store = StateStore(url)
    store.check_reachable()
    records = store.read_records(STEP_RECORDS)
    identity = store.open_unverified(IDENTITY_KEY)
    if identity is None and not records:
        print(f"state {store.root}: fresh (nothing recorded yet)")
        return EXIT_OK
    print(f"state {store.root}")
    generation = store.current_generation()
    lease = store.read_record(LEASE_HOLDER_RECORD) or {}
    print(f"lease: generation {generation}, holder {lease.get('holder', '?')}")
    plan = store.read_record(PLAN_RECORD)
    if plan:
        print(
            f"plan: {plan['total_steps']} optimizer steps, {plan['num_epochs']} epoch(s), world size {plan['world_size']}"
        )
    print("steps:")
    holder_alive = store.holder_alive()
    for name, record in sorted(records.items(), key=lambda kv: kv[1].get("order", 0)):
        state = record.get("state", "?")
        if state == "running" and holder_alive is False:
            state = "stopped"  # its process is gone (killed, or its failure could not be recorded)
        line = f"  {record.get('name', name):<16} {state:<8} attempts {record.get('attempts', 0)}"
        if record.get("error"):
            line += f"  error: {record['error']}"
        print(line)
    checkpoints = store.committed_keys(CHECKPOINT_PREFIX)
    if checkpoints:
        latest = store.open_unverified(checkpoints[-1])
        if latest is not None:
            meta = latest.manifest["meta"]
            print(
                f"latest checkpoint: {latest.key} (step {meta['step']}, epoch {meta['epoch']}, "
                f"{meta['pairs_consumed']} pairs of the epoch consumed)"
            )
        _print_checkpoint_times(store, checkpoints[-5:])
    else:
        print("latest checkpoint: none")
    quarantined = store.quarantined() + list(store.read_records(QUARANTINED_RECORDS).values())
    for q in quarantined:
        print(f"quarantined: {q['key']} attempt {q['attempt']}: {q['reason']}")
    done = store.open_unverified(EXPORT_KEY) is not None
    print("run: complete" if done else "run: not complete")
    return EXIT_OK


def _print_checkpoint_times(store, keys: list[str]) -> None:
    """What the recent checkpoints cost: the stop-signal budget is their snapshot + upload."""
    rows = []
    for key in keys:
        state = store.open_unverified(key)
        meta = state.manifest["meta"] if state is not None else {}
        if "snapshot_seconds" in meta and "upload_seconds" in meta:
            rows.append(f"  {key}: snapshot {meta['snapshot_seconds']:.3f} s, upload {meta['upload_seconds']:.3f} s")
    if rows:
        print("checkpoint times (snapshot: training waits; upload: in the background where checkpoint.async_upload):")
        print("\n".join(rows))


# ------------------------------------------------------------------ run


def _os_error_line(e: OSError) -> str:
    import errno

    names: dict[int | None, str] = {  # OSError.errno is None for an error raised without one
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    what = names.get(e.errno, "I/O error")
    where = f" on {e.filename}" if getattr(e, "filename", None) else ""
    return f"{what}{where}: {e.strerror or e}; the last committed state is intact, free the space or fix the permissions and run again"


def run(recipe_path: str, *, overrides) -> int:
    """Preflight, start the process group, run the session; 0, or what it raised, worded for a
    run and carrying the recipe's requeue code (``run.preempted_exit_code``)."""
    from rmrun.run.preflight import preflight
    from rmrun.runtime.process import STOP, Stopped, outlive_readers

    outlive_readers()
    STOP.install()
    STOP.where = "before training started"
    try:
        recipe, _, _ = preflight(recipe_path, overrides=overrides)
    except Stopped as e:
        raise StoppedBeforeStart(str(e)) from e
    from rmrun.run.runner import RunSession
    from rmrun.runtime import dist

    requeue = recipe.run.preempted_exit_code
    try:
        rank = dist.start(seed=recipe.run.seed, collective_timeout_minutes=recipe.run.collective_timeout_minutes)
        RunSession(recipe_path, recipe, rank=rank).run()
        return EXIT_OK
    except BaseException as e:
        worded = _worded(e, requeue)
        if worded is None:
            raise  # a bug: its traceback, exit 1
        raise worded from e
    finally:
        STOP.deferred = True  # closing is not interrupted: a signal now waits for the exit
        dist.stop()


def _worded(e: BaseException, requeue: int) -> BaseException | None:
    """What a run says about ``e`` where it says more than ``rmrun.errors``; None for a bug."""
    from rmrun.data import DataError
    from rmrun.model.model import ModelError
    from rmrun.runtime.process import ScratchFull
    from rmrun.store import NoValidState
    from rmrun.train.trainer import NonFiniteLoss

    if isinstance(e, (DataError, ModelError, NonFiniteLoss)):
        return Worded(e, [str(e).splitlines()[0]])
    if isinstance(e, KeyboardInterrupt):
        return Worded(e, ["interrupted twice: stopped at once, without a checkpoint; everything committed is intact"])
    if isinstance(e, NoValidState):
        return Worded(e, [f"state unusable, needs a human: {e}"])
    if isinstance(e, OSError) and not isinstance(e, ScratchFull):
        return StateUnusable([_os_error_line(e)])
    if exit_code(e, requeue=requeue) != EXIT_FAILED:
        return Worded(e, requeue=requeue)
    from rmrun.runtime.process import STOP, Stopped

    if STOP.requested is not None:
        # Stopping: a peer that stopped first broke the collective this process was in.
        return Worded(Stopped(STOP.requested, STOP.where), requeue=requeue)
    return None


def _source_pairs(recipe) -> list[int]:
    """The training pairs of each of data.sources (counted in preflight)."""
    from rmrun.run.counts import count_pairs, split_sources

    _, sources, prompts = split_sources(recipe.data)[0]
    return count_pairs(sources, data=recipe.data, split=prompts)["by_source"]


def _split_pairs(recipe) -> int:
    """The pairs ``data.eval_split`` holds out of the training files (counted in preflight)."""
    from rmrun.run.counts import count_pairs, split_sources

    _, sources, prompts = split_sources(recipe.data)[1]
    return count_pairs(sources, data=recipe.data, split=prompts)["pairs"]
