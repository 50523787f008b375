"""Cross-field checks, in two phases.

``static_problems`` needs only the recipe and runs at load: ``value_problems`` each
judge one key's value alone (a negative lr, a batch size of 0), ``cross_field_problems``
judge keys against each other (the plugin's rules, warmup against max_steps, eval files
against training files, the export against the state root); the loader reports the first
kind whatever else is wrong and skips the second on a table with a problem.

``environment_problems`` needs the world the run found (process count, CUDA) and runs right after the
distributed start; it is a pure function of (recipe, world) so tests call it
without launching processes. The checks that depend on the plugin are the plugin
table's (:mod:`rmrun.recipe.plugins`).
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from dataclasses import dataclass

from rmrun.recipe.data_checks import data_problems
from rmrun.recipe.plugins import cuda_problem, plugin_problems
from rmrun.recipe.schema import PluginSection, Recipe

SEED_MAX = 2**63 - 1  # torch.manual_seed takes < 2**64; rmrun adds 1000 * step + rank to it
RUN_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Ceilings far above any real run that keep a typo (a stray exponent) from reaching
# the planner or a tensor allocation.
CEILINGS = {
    "[schedule].batch_size": 1_000_000,
    "[schedule].accumulation_steps": 1_000_000,
    "[schedule].max_epochs": 1_000_000,
    "[schedule].max_steps": 1_000_000_000,
    "[schedule].warmup_steps": 1_000_000_000,
    "[data].max_length": 1_048_576,
    "[eval].batch_size": 1_000_000,
    "[checkpoint].interval_steps": 1_000_000_000,
    "[eval].interval_steps": 1_000_000_000,
    "[log].interval_steps": 1_000_000_000,
    "[checkpoint].keep": 1_000_000,
    "[model.lora].r": 65_536,
    "[plugin].tp": 65_536,
    "[plugin].pp": 65_536,
    "[plugin].sp": 65_536,
    "[plugin].microbatch_size": 1_000_000,
    "[output].reward_stats_pairs": 1_000_000_000,
    "[data].tokenize_workers": 1024,
}
COLLECTIVE_TIMEOUT_MAX = 7 * 24 * 60  # minutes; a week


@dataclass(frozen=True)
class World:
    """What the run found itself on."""

    size: int
    cuda: bool
    # the kernels that run bf16 matmuls on the CPU (a key of plugins.CPU_BF16_KERNELS), None: no bf16 there
    cpu_bf16: str | None = None


def model_parallel_size(p: PluginSection) -> int:
    """Ranks one model replica spans. "split_gather" and "ring" sequence parallelism run
    inside the tensor-parallel group (ColossalAI then sets its own sp size to 1)."""
    sp = p.sp if p.sp_mode in ("all_to_all", "ring_attn") else 1
    return p.tp * p.pp * sp


def _number_problems(recipe: Recipe) -> list[str]:
    """Seeds in range, finite numbers, integers under their ceilings, dropout in [0, 1)."""
    problems = []
    s, lora = recipe.schedule, recipe.model.lora
    if not 0 <= recipe.run.seed <= SEED_MAX:
        problems.append(f"[run].seed: must be between 0 and 2**63-1, got {recipe.run.seed}")
    if not 4 <= recipe.run.preempted_exit_code <= 255:
        problems.append(
            f"[run].preempted_exit_code: must be between 4 and 255 (0-3 mean done, a bug, a usage error and "
            f"an unusable state), got {recipe.run.preempted_exit_code}"
        )
    if not 0 <= recipe.run.store_retry_seconds <= 86400:
        problems.append(
            f"[run].store_retry_seconds: must be between 0 and 86400, got {recipe.run.store_retry_seconds:g}"
        )
    timeout = recipe.run.collective_timeout_minutes
    if not (math.isfinite(timeout) and 0 < timeout <= COLLECTIVE_TIMEOUT_MAX):
        problems.append(
            f"[run].collective_timeout_minutes: must be above 0 and at most {COLLECTIVE_TIMEOUT_MAX:,} "
            f"(a week), got {timeout:g}"
        )
    floats = [
        ("[schedule].lr", s.lr),
        ("[schedule].weight_decay", s.weight_decay),
        ("[schedule].grad_clip", s.grad_clip),
        ("[loss].margin", recipe.loss.margin),
        ("[loss].center_coef", recipe.loss.center_coef),
        ("[data].margin_scale", recipe.data.margin_scale),
        ("[checkpoint].interval_seconds", recipe.checkpoint.interval_seconds),
        ("[checkpoint].stop_budget_seconds", recipe.checkpoint.stop_budget_seconds),
    ]
    if lora is not None:
        floats += [("[model.lora].alpha", lora.alpha), ("[model.lora].dropout", lora.dropout)]
    for key, value in floats:
        if value is not None and not math.isfinite(value):
            problems.append(f"{key}: must be a finite number, got {value}")
    if math.isfinite(recipe.loss.center_coef) and recipe.loss.center_coef < 0:
        problems.append(f"[loss].center_coef: must be 0 or more, got {recipe.loss.center_coef:g}")
    if lora is not None and math.isfinite(lora.dropout) and not 0 <= lora.dropout < 1:
        problems.append(f"[model.lora].dropout: must be in [0, 1), got {lora.dropout}")
    if lora is not None and math.isfinite(lora.alpha) and lora.alpha <= 0:
        problems.append(f"[model.lora].alpha: must be positive, got {lora.alpha}")
    values = {
        "[schedule].batch_size": s.batch_size,
        "[schedule].accumulation_steps": s.accumulation_steps,
        "[schedule].max_epochs": s.max_epochs,
        "[schedule].max_steps": s.max_steps,
        "[schedule].warmup_steps": s.warmup_steps,
        "[data].max_length": recipe.data.max_length,
        "[eval].batch_size": recipe.eval.batch_size,
        "[checkpoint].interval_steps": recipe.checkpoint.interval_steps,
        "[eval].interval_steps": recipe.eval.interval_steps,
        "[log].interval_steps": recipe.log.interval_steps,
        "[checkpoint].keep": recipe.checkpoint.keep,
        "[model.lora].r": lora.r if lora else None,
        "[plugin].tp": recipe.plugin.tp,
        "[plugin].pp": recipe.plugin.pp,
        "[plugin].sp": recipe.plugin.sp,
        "[plugin].microbatch_size": recipe.plugin.microbatch_size,
        "[output].reward_stats_pairs": recipe.output.reward_stats_pairs,
        "[data].tokenize_workers": recipe.data.tokenize_workers,
    }
    for key, value in values.items():
        if value is not None and value > CEILINGS[key]:
            problems.append(f"{key}: {value} is beyond any real run (at most {CEILINGS[key]:,})")
    return problems


def _location_problems(recipe: Recipe) -> list[str]:
    """Run names that are one path segment; locations that are not empty."""
    problems = []
    if not RUN_NAME_RE.match(recipe.run.name):
        problems.append(
            f"[run].name: {recipe.run.name!r} must be a single path segment (letters, digits, '.', '_', '-', "
            "not starting with '.' or '-'); the default state is state/<name>"
        )
    for key, value in (
        ("[run].state", recipe.run.state),
        ("[output].dir", recipe.output.dir),
        ("[data].chat_template", recipe.data.chat_template),
    ):
        if value is not None and not value.strip():
            problems.append(f"{key}: must not be empty (leave it out for the default)")
    for key, value in (("[run].state", recipe.run.state), ("[output].dir", recipe.output.dir)):
        if value and "://" in value and not URL_RE.match(value):
            problems.append(f"{key}: {value!r} is not a URL (protocol://location) nor a path")
    return problems


def _size_problems(recipe: Recipe) -> list[str]:
    """Counts and sizes at their lower bounds; optional intervals at least 1 where given."""
    problems = []
    p, s = recipe.plugin, recipe.schedule
    for key, value, low in (
        ("[data].max_length", recipe.data.max_length, 8),
        ("[schedule].max_epochs", s.max_epochs, 1),
        ("[schedule].batch_size", s.batch_size, 1),
        ("[schedule].accumulation_steps", s.accumulation_steps, 1),
        ("[plugin].tp", p.tp, 1),
        ("[plugin].pp", p.pp, 1),
        ("[plugin].sp", p.sp, 1),
        ("[plugin].microbatch_size", p.microbatch_size, 1),
        ("[log].interval_steps", recipe.log.interval_steps, 1),
        ("[data].tokenize_workers", recipe.data.tokenize_workers, 0),
    ):
        if value < low:
            problems.append(f"{key}: must be at least {low}, got {value}")
    if recipe.output.reward_stats_pairs < 1:
        problems.append(
            f"[output].reward_stats_pairs: must be at least 1, got {recipe.output.reward_stats_pairs} "
            "(output.reward_stats = false turns the statistics off)"
        )
    for key, optional in (
        ("[schedule].max_steps", s.max_steps),
        ("[checkpoint].interval_steps", recipe.checkpoint.interval_steps),
        ("[eval].interval_steps", recipe.eval.interval_steps),
        ("[eval].batch_size", recipe.eval.batch_size),
    ):
        if optional is not None and optional < 1:
            problems.append(f"{key}: must be at least 1 (leave it out to turn it off), got {optional}")
    return problems


def _schedule_problems(recipe: Recipe) -> list[str]:
    """A positive learning rate; warmup, weight decay and clipping not negative."""
    problems = []
    s = recipe.schedule
    if s.lr <= 0:
        problems.append(f"[schedule].lr: must be positive, got {s.lr}")
    if s.warmup_steps is not None and s.warmup_steps < 0:
        problems.append(f"[schedule].warmup_steps: must be 0 or more, got {s.warmup_steps}")
    for key in ("weight_decay", "grad_clip"):
        if getattr(s, key) < 0:
            problems.append(f"[schedule].{key}: must be 0 or more, got {getattr(s, key)}")
    return problems


def _checkpoint_problems(recipe: Recipe) -> list[str]:
    """A fallback checkpoint kept; positive intervals and stop budget."""
    problems = []
    c = recipe.checkpoint
    if c.keep < 2:
        problems.append(
            f"[checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got {c.keep}"
        )
    if c.interval_seconds is not None and c.interval_seconds <= 0:
        problems.append("[checkpoint].interval_seconds: must be positive")
    if c.stop_budget_seconds <= 0:
        problems.append(f"[checkpoint].stop_budget_seconds: must be positive, got {c.stop_budget_seconds:g}")
    return problems


def _lora_problems(recipe: Recipe) -> list[str]:
    """A rank of at least 1 and at least one target module (whether the plugin takes LoRA
    at all is the plugin table's check)."""
    lora = recipe.model.lora
    if lora is None:
        return []
    problems = []
    if lora.r < 1:
        problems.append(f"[model.lora].r: must be at least 1, got {lora.r}")
    if not lora.target_modules:
        problems.append("[model.lora].target_modules: needs at least one module name")
    return problems


def _warmup_problems(recipe: Recipe) -> list[str]:
    """Warmup within max_steps; against the step count the data gives, see rmrun.recipe.plan."""
    s = recipe.schedule
    if s.warmup_steps is not None and s.max_steps is not None and s.warmup_steps > s.max_steps > 0:
        return [
            f"[schedule].warmup_steps: {s.warmup_steps} is more than the run's optimizer steps (at most "
            f"max_steps = {s.max_steps}); use at most {s.max_steps}, or leave it out for 2.5% of the steps"
        ]
    return []


def _location_key(url: str) -> tuple[str, str]:
    """(protocol, path) that compares equal for two spellings of one location: a local path
    absolute with its links resolved, a URL's path normalized."""
    match = URL_RE.match(url)
    if match is None or match.group(1) in ("file", "local"):
        path = url[match.end() :] if match else url
        return "file", os.path.realpath(os.path.expanduser(path))
    return match.group(1), posixpath.normpath(url[match.end() :] or "/")


def _inside(child: tuple[str, str], parent: tuple[str, str]) -> bool:
    """Whether ``child`` is ``parent`` or a location under it."""
    if child[0] != parent[0]:
        return False
    return child[1] == parent[1] or child[1].startswith(parent[1].rstrip("/") + "/")


def _export_problems(recipe: Recipe) -> list[str]:
    """The export outside the state root, whose folders the store manages; its default place,
    <state>/export (the same as leaving output.dir out), excepted."""
    out = recipe.output.dir
    if not out or not out.strip():
        return []  # absent: the default; empty: reported by _location_problems
    state = recipe.state_url
    default = posixpath.join(state, "export")
    if _location_key(out) == _location_key(default) or not _inside(_location_key(out), _location_key(state)):
        return []
    where = "is the state root" if _location_key(out) == _location_key(state) else "is inside the state root"
    return [
        f"[output].dir: {out} {where} {state} ([run].state), whose folders rmrun manages; "
        f"export elsewhere, or leave output.dir out for {default}"
    ]


def _tracker_problems(recipe: Recipe) -> list[str]:
    """Each tracker named once; MLflow tags as key=value."""
    problems = []
    trackers = recipe.log.trackers
    for name in sorted({t for t in trackers if trackers.count(t) > 1}):
        problems.append(f"[log].trackers: {name!r} is named more than once")
    for tag in recipe.log.mlflow.tags:
        if not tag.partition("=")[0].strip() or "=" not in tag:
            problems.append(f'[log.mlflow].tags: {tag!r} is not "key=value"')
    return problems


def tracker_package_problems(recipe: Recipe) -> list[str]:
    """A tracker whose package is not installed (looked up, not imported)."""
    import importlib.util

    packages = {"wandb": "wandb", "mlflow": "mlflow"}
    return [
        f'[log].trackers: "{name}" needs the {packages[name]} package, which is not installed: '
        f'pip install "rmrun[{name}]"'
        for name in recipe.log.trackers
        if importlib.util.find_spec(packages[name]) is None
    ]


def value_problems(recipe: Recipe) -> list[str]:
    """The problems of single keys, each judged by its own value, one line each."""
    return (
        _number_problems(recipe)
        + _location_problems(recipe)
        + _size_problems(recipe)
        + _schedule_problems(recipe)
        + _checkpoint_problems(recipe)
        + _lora_problems(recipe)
        + _tracker_problems(recipe)
    )


def cross_field_problems(recipe: Recipe) -> list[str]:
    """The problems of keys judged against each other, one line each."""
    return (
        plugin_problems(recipe.plugin, recipe.schedule, lora=recipe.model.lora is not None)
        + _warmup_problems(recipe)
        + data_problems(recipe.data, location_key=_location_key)
        + _export_problems(recipe)
    )


def static_problems(recipe: Recipe) -> list[str]:
    """Every problem the recipe alone shows, one line each."""
    return value_problems(recipe) + cross_field_problems(recipe)


def environment_problems(recipe: Recipe, world: World) -> list[str]:
    """Checks that need the world the run is in."""
    problems = tracker_package_problems(recipe)
    p = recipe.plugin
    if not world.cuda and (problem := cuda_problem(p, cpu_bf16=world.cpu_bf16)) is not None:
        problems.append(problem)
    model_parallel = model_parallel_size(p)
    if world.size % model_parallel:
        if p.sp > 1 and p.sp_mode in ("split_gather", "ring"):
            what = f'tp*pp (sp_mode "{p.sp_mode}" runs inside the tp ranks)'
        else:
            what = "tp*pp*sp"
        problems.append(f"[plugin]: {what} = {model_parallel} does not divide the world size {world.size}")
    return problems
