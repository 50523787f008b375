"""The [data] table's keys judged against each other: training files from data.train or from
data.sources (not both), held-out files that are not training files, one eval set, the pair
keys of the rated formats. Part of the static checks (:mod:`rmrun.recipe.validate`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from rmrun.recipe.data_section import DataSection, all_files, data_formats, train_sources
from rmrun.recipe.names import RATED_FORMATS


def data_problems(data: DataSection, *, location_key: Callable[[str], tuple[str, str]]) -> list[str]:
    """Every problem of the [data] keys taken together, one line each (``location_key``: what
    compares equal for two spellings of one file)."""
    problems = _source_problems(data)
    train = {location_key(url) for url in all_files(train_sources(data)) if url}
    where = "[data].sources" if data.sources else "[data].train"
    held_out = [("[data].eval", u) for u in data.eval]
    held_out += [(f"[data].sources[{i}].eval", u) for i, s in enumerate(data.sources) for u in s.eval]
    problems += [
        f"{key}: {url} is also a training file ({where}); evaluate on held-out pairs"
        for key, url in held_out
        if url and location_key(url) in train
    ]
    problems += _rated_problems(data)
    split = data.eval_split
    if split is not None:
        if held_out:
            problems.append(
                f"[data].eval_split: carves the eval set out of {'the sources' if data.sources else 'data.train'}; "
                f"leave {held_out[0][0].replace('[data].', 'data.', 1)} out with it"
            )
        if not (0 < split < 1 or (split >= 1 and float(split).is_integer())):
            problems.append(
                f"[data].eval_split: a fraction of the prompts between 0 and 1, or a whole number of pairs; got {split:g}"
            )
    return problems


def _source_problems(data: DataSection) -> list[str]:
    """The training files named once (data.train or data.sources); each source named, unique,
    with files and a weight; data.epoch_pairs only for a mixture."""
    if not data.sources:
        problems = [] if data.train else ["[data].train: needs at least one file"]
        if data.epoch_pairs is not None:
            problems.append("[data].epoch_pairs: sets the size of a mixture's epoch; it needs [[data.sources]]")
        return problems
    if any(source is None for source in data.sources):
        return []  # a table that failed to decode, reported as such
    problems = []
    if data.train:
        problems.append("[data].sources: a mixture names its training files itself; leave data.train out with it")
    seen: dict[str, int] = {}
    for i, source in enumerate(data.sources):
        key = f"[data].sources[{i}]"
        if not source.name.strip():
            problems.append(f"{key}.name: a source needs a name (its accuracy and counts are reported under it)")
        elif source.name in seen:
            problems.append(f"{key}.name: {source.name!r} is the name of data.sources[{seen[source.name]}] too")
        seen.setdefault(source.name, i)
        if not source.files:
            problems.append(f"{key}.files: needs at least one file")
        if not (math.isfinite(source.weight) and source.weight >= 0):
            problems.append(f"{key}.weight: a share of the epoch, 0 or more; got {source.weight:g}")
    weights = [s.weight for s in data.sources]
    if all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) <= 0:
        problems.append("[data].sources: every weight is 0; an epoch would draw no pair")
    if data.epoch_pairs is not None and data.epoch_pairs < 1:
        problems.append(f"[data].epoch_pairs: the pairs of an epoch, at least 1; got {data.epoch_pairs}")
    return problems


def _rated_problems(data: DataSection) -> list[str]:
    """The pair-forming keys belong to the rated formats, and rated rows have no "margin" field."""
    rated = [f for f in data_formats(data) if f in RATED_FORMATS]
    if rated:
        if data.margins == "margin":
            return [
                f'[data].margins: "margin" reads a row\'s "margin" field; {rated[0]} rows have ratings: use "scores"'
            ]
        return []
    formats = ", ".join(repr(f) for f in data_formats(data))
    what = f"data.format is {formats}" if not data.sources else f"the sources' formats are {formats}"
    return [
        f"[data].{key}: applies to the rated formats ({', '.join(RATED_FORMATS)}); {what}"
        for key, default in (("pair_rule", "best_vs_worst"), ("rating", None), ("pair_seed", 0))
        if getattr(data, key) != default
    ]
