"""``rmrun bench``: the user's own recipe timed across plugins and settings, on this machine.

1. The sweep (``--sweep KEY=V1,V2``, repeatable) expands to every combination of the
   values; each combination is the recipe with ``--set`` overrides, decoded and typed by
   the schema (an unknown key or a badly typed value is a usage error, exit 2).
2. The parent checks every combination on the recipe layer only (cross-field checks,
   this machine's CUDA and world size, local inputs): one that cannot run here is
   reported with its one-line reason and left out.
3. A fixed, seeded sample of the training pairs (uniform, so it keeps the data's own
   length distribution) is tokenized once per distinct ``[data]``/tokenizer.
4. The runnable combinations run as short throw-away runs in worker processes
   (``rmrun.bench.worker``), one process per short run and rank, in rounds: every round
   runs each combination once (a warm-up step, then ``--steps`` timed steps, then one
   checkpoint save and load), the order rotating round by round, so that slow phases of
   the machine hit all combinations alike. Different plugins cannot share a process, so
   the interleaving is by short runs, not by single steps. An out-of-memory or any other
   failure ends that combination only; the sweep goes on with fresh workers.
5. Every run's state lives in a temporary directory (``run.state`` is overridden there):
   the recipe's real state is never touched.

Under torchrun every rank runs the same combinations in the same order; the workers of a
short run join one process group on a port rank 0 picks; rank 0 prints and writes files.

Test hook: ``RMRUN_BENCH_MEMORY_CAP="TEXT:MIB"`` caps the address space of the workers of
every combination whose label contains TEXT at what they use when training starts plus
MIB (``RLIMIT_AS``), to force an out-of-memory on a CPU machine.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from rmrun.bench.sample import data_key, tokenize_samples
from rmrun.recipe import RecipeError, World, environment_problems, load_recipe
from rmrun.recipe.schema import Recipe

MEMORY_CAP_ENV = "RMRUN_BENCH_MEMORY_CAP"
WORKER_TIMEOUT_S = 1800


class BenchError(ValueError):
    """A usage error of ``rmrun bench`` (one line)."""


@dataclass
class Combination:
    settings: list[tuple[str, str]]  # (key, value text) of the swept keys
    overrides: list[str]
    recipe_path: str = ""
    status: str = "runnable"  # runnable | ok | skipped | invalid | out of memory | failed
    reason: str = ""
    recipe: Recipe | None = None
    results: list[list[dict]] = field(default_factory=list)  # per round, per rank

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.settings) or "recipe as is"

    @property
    def decoded(self) -> Recipe:
        """The recipe, once check_combinations has decoded it."""
        if self.recipe is None:
            raise RuntimeError(f"{self.label}: the recipe is not decoded yet (check_combinations decodes it)")
        return self.recipe


# ------------------------------------------------------------------ sweep grammar


def split_values(text: str) -> list[str]:
    """``a,b,[c,d],"e,f"`` -> ``a``, ``b``, ``[c,d]``, ``"e,f"``: commas inside brackets or quotes stay."""
    values, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    values.append(current.strip())
    return values


def parse_sweeps(texts: list[str]) -> list[tuple[str, list[str]]]:
    sweeps: list[tuple[str, list[str]]] = []
    for text in texts:
        key, sep, rest = text.partition("=")
        key = key.strip()
        values = split_values(rest) if sep else []
        if not key or not sep or not values or any(v == "" for v in values):
            raise BenchError(f"--sweep {text}: expected KEY=V1,V2,..., e.g. --sweep plugin.name=ddp,zero2")
        if key in (k for k, _ in sweeps):
            raise BenchError(f"--sweep {text}: {key} is swept twice; give all its values in one --sweep")
        if len(set(values)) != len(values):
            raise BenchError(f"--sweep {text}: a value is repeated")
        sweeps.append((key, values))
    return sweeps


def expand(
    recipe_path: str, sweeps: list[tuple[str, list[str]]], *, sets: list[str], scratch: str
) -> list[Combination]:
    keys = [k for k, _ in sweeps]
    combos = []
    for values in itertools.product(*(v for _, v in sweeps)):
        settings = list(zip(keys, values))
        # run.state last: nothing of a short run can reach the recipe's real state.
        overrides = [*sets, *(f"{k}={v}" for k, v in settings), f"run.state={scratch}/state"]
        combos.append(Combination(settings=settings, overrides=overrides, recipe_path=recipe_path))
    return combos


def _unique(lines):
    return list(dict.fromkeys(lines))


def check_sweeps(recipe_path: str, sweeps: list[tuple[str, list[str]]], *, sets: list[str]) -> None:
    """Every swept value decodes on its own, typed by the schema; raises RecipeError with every
    problem, attributed to the ``--sweep`` (an unknown key once, with its did-you-mean)."""
    problems = []
    for key, values in sweeps:
        for value in values:
            try:
                load_recipe(recipe_path, overrides=[*sets, f"{key}={value}"], validate=False)
            except RecipeError as e:
                problems += [
                    p.replace(f"--set {key}={value}:", f"--sweep {key}={','.join(values)}:") for p in e.problems
                ]
                if any("unknown key" in p or "is a table" in p or "is not a table" in p for p in e.problems):
                    break  # the key itself is wrong: the other values would say the same
    if problems:
        raise RecipeError(_unique(problems))


def check_combinations(recipe_path: str, combos: list[Combination], *, world: World) -> None:
    """Decode every combination (a bad key or value anywhere is a usage error, raised with every
    problem), then mark the ones that cannot run here with their one-line reason."""
    from rmrun.recipe.validate import static_problems
    from rmrun.run.preflight import input_problems

    problems = []
    for c in combos:
        try:
            c.recipe = load_recipe(recipe_path, overrides=c.overrides, validate=False)
        except RecipeError as e:
            problems += e.problems
    if problems:
        raise RecipeError(_unique(problems))
    for c in combos:
        static = static_problems(c.decoded)
        environment = environment_problems(c.decoded, world)
        needs_cuda = [p for p in environment if not world.cuda and "CUDA" in p]
        if needs_cuda:  # first: on this machine nothing else about it matters
            c.status, c.reason = "skipped", "needs CUDA: " + needs_cuda[0]
            if static:
                c.reason += f" (and elsewhere: {static[0]})"
        elif static:
            c.status, c.reason = "invalid", static[0]
        elif environment:
            c.status, c.reason = "skipped", environment[0]
        else:
            inputs = input_problems(c.decoded)
            if inputs:
                c.status, c.reason = "invalid", f"{recipe_path}: {inputs[0]}"


# ------------------------------------------------------------------ workers


def _memory_cap(label: str) -> float | None:
    text = os.environ.get(MEMORY_CAP_ENV)
    if not text:
        return None
    match, _, mib = text.rpartition(":")
    return float(mib) if match in label else None


def _worker_env(*, world_size: int, port: int | None) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    # torchrun's agent store is bound to the parent's group; a short run has a group of its own.
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    if world_size == 1:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
            env.pop(key, None)  # rmrun.runtime.dist.start picks a free port itself
    else:
        env["MASTER_PORT"] = str(port)
    python_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, env.get("PYTHONPATH")) if p)
    return env


def run_worker(job: dict, *, directory: str, world_size: int, port: int | None) -> dict:
    """One short run of one combination on this rank, in a fresh process."""
    os.makedirs(directory, exist_ok=True)
    job_path, result_path = os.path.join(directory, "job.json"), os.path.join(directory, "result.json")
    job = dict(job, launched=time.time(), scratch=directory)
    with open(job_path, "w") as f:
        json.dump(job, f)
    with open(os.path.join(directory, "worker.log"), "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rmrun.bench.worker", job_path, result_path],
            env=_worker_env(world_size=world_size, port=port),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"status": "error", "reason": f"no result within {WORKER_TIMEOUT_S}s"}
    if not os.path.exists(result_path):
        # Killed from outside: the kernel's OOM killer sends SIGKILL.
        if code == -9:
            return {"status": "oom", "reason": "out of memory (the worker was killed by SIGKILL)"}
        return {"status": "error", "reason": f"the worker died with exit code {code} (see {directory}/worker.log)"}
    with open(result_path) as f:
        return json.load(f)


def _outcome(rank_results: list[dict]) -> tuple[str, str] | None:
    """(status, reason) when any rank failed, else None."""
    for r in rank_results:
        if r["status"] == "oom":
            return "out of memory", r["reason"]
    for r in rank_results:
        if r["status"] != "ok":
            return "failed", r["reason"]
    return None


@dataclass
class Group:
    """This process's place in the bench: standalone, or one rank of a torchrun world."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def port(self) -> int | None:
        from rmrun.runtime.collective import broadcast
        from rmrun.runtime.dist import free_port

        if self.world_size == 1:
            return None
        return broadcast(free_port() if self.is_main else None)

    def gather(self, value) -> list:
        from rmrun.runtime.collective import gather_all

        return gather_all(value) if self.world_size > 1 else [value]


def run_rounds(
    combos: list[Combination], *, samples: dict, rounds: int, steps: int, scratch: str, group: Group, say
) -> None:
    runnable = [c for c in combos if c.status == "runnable"]
    for r in range(rounds):
        shift = r % max(1, len(runnable))
        for c in runnable[shift:] + runnable[:shift]:
            if c.status != "runnable":
                continue
            sample = samples[data_key(c.decoded)]
            job = {
                "recipe": c.recipe_path,
                "overrides": c.overrides,
                "data": sample["data"],
                "data_stats": sample["data_stats"],
                "steps": steps,
                "memory_cap_mib": _memory_cap(c.label),
            }
            directory = os.path.join(scratch, "runs", f"{combos.index(c):03d}-round{r}-rank{group.rank}")
            result = run_worker(job, directory=directory, world_size=group.world_size, port=group.port())
            rank_results = group.gather(result)
            failed = _outcome(rank_results)
            if failed:
                c.status, c.reason = failed
                say(f"round {r + 1}/{rounds}: {c.label}: {c.reason}")
                continue
            c.results.append(rank_results)
            seconds = sum(max(x["records"][i]["seconds"] for x in rank_results) for i in range(steps))
            pairs = sum(rec["pairs"] for rec in rank_results[0]["records"])
            say(f"round {r + 1}/{rounds}: {c.label}: {pairs / seconds:.1f} pairs/s")
    for c in runnable:
        if c.status == "runnable":
            c.status = "ok"


# ------------------------------------------------------------------ the command


def bench(
    recipe_path: str, *, sweeps: list[str], sets: list[str], steps: int, rounds: int, num_pairs: int, out: str | None
) -> dict:
    """Run the sweep; returns the report (rank 0 writes it to ``out``). Raises RecipeError or
    BenchError for a usage error."""
    from rmrun.bench.report import summarize, write_report
    from rmrun.runtime.dist import world_from_env

    if steps < 1 or rounds < 1 or num_pairs < 1:
        raise BenchError("--steps, --rounds and --pairs must be at least 1")
    parsed = parse_sweeps(sweeps)
    world = world_from_env()
    group = Group(rank=0, world_size=world.size)
    if world.size > 1:
        from rmrun.runtime import dist

        rank = dist.start(seed=0)
        group = Group(rank=rank.rank, world_size=rank.world_size)
    say = print if group.is_main else (lambda message: None)
    scratch = tempfile.mkdtemp(prefix="rmrun-bench-")
    try:
        check_sweeps(recipe_path, parsed, sets=sets)
        combos = expand(recipe_path, parsed, sets=sets, scratch=scratch)
        check_combinations(recipe_path, combos, world=world)
        for c in combos:
            if c.status != "runnable":
                say(f"{c.label}: {c.status}: {c.reason}")
        runnable_recipes = [c.decoded for c in combos if c.status == "runnable"]
        samples = tokenize_samples(runnable_recipes, num_pairs=num_pairs, scratch=scratch)
        runnable = sum(c.status == "runnable" for c in combos)
        say(
            f"bench {recipe_path}: {len(combos)} combination(s), {runnable} runnable here; {rounds} round(s) of "
            f"1 warm-up + {steps} timed steps each, {world.size} process(es)"
        )
        run_rounds(combos, samples=samples, rounds=rounds, steps=steps, scratch=scratch, group=group, say=say)
        report = summarize(
            recipe_path,
            combos,
            samples=samples,
            world_size=world.size,
            steps=steps,
            rounds=rounds,
            sets=sets,
            sweeps=parsed,
        )
        if group.is_main:
            out = out or f"rmrun-bench-{combos[0].decoded.run.name}"
            paths = write_report(report, out)
            say(report["terminal"])
            say("wrote " + ", ".join(paths))
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if world.size > 1:
            from rmrun.runtime import dist

            dist.stop()
