"""Pair counts: how many pairs each source of a split gives, read once per version of its
files (this process's ``COUNTED``, then ``records/pair-counts`` in the state), and the splits
themselves (train and eval files, or both sides of data.eval_split's cut of the prompts).
Preflight, ``rmrun check`` and the tokenize step count through here, so they agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rmrun.recipe.schema import DataSection, Recipe

if TYPE_CHECKING:
    from rmrun.data.split import PromptSplit


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


def count_pairs(sources, *, data: DataSection, stored: dict | None = None, split: PromptSplit | None = None) -> dict:
    """``{"pairs", "skipped", "summary", "by_source"}`` of ``sources`` (``Source``: pairs read, bad
    rows skipped and what they were, the pairs of each source; only the pairs on ``split``'s
    side), each source's read once per version of its files (their stamps: ``COUNTED``, then
    ``stored``); DataError on a bad row under "error"."""
    counts = [_count_source(source, data=data, stored=stored, split=split) for source in sources]
    return {
        "pairs": sum(c["pairs"] for c in counts),
        "skipped": sum(c["skipped"] for c in counts),
        "summary": "; ".join(c["summary"] for c in counts if c["summary"]),
        "by_source": [c["pairs"] for c in counts],
        "skipped_by_source": [c["skipped"] for c in counts],
    }


def _count_source(source, *, data: DataSection, stored: dict | None, split: PromptSplit | None) -> dict:
    from rmrun.data.formats import BadRowReport, read_pairs
    from rmrun.data.rated import PairRule

    def count() -> dict:
        report = BadRowReport()
        read = read_pairs(
            source.urls,
            format=source.format,
            bad_rows=data.bad_rows,
            report=report,
            margins=data.margins,
            split=split,
            rule=PairRule.of(data),
        )
        pairs = sum(1 for _ in read)
        return {"pairs": pairs, "skipped": report.total, "summary": report.summary() if report.total else ""}

    return _once(_count_key(source.urls, format=source.format, data=data, split=split), stored, count)


def _once(key: str | None, stored: dict | None, compute) -> dict:
    """What ``compute()`` gives for the files' version ``key``: made once per version (``COUNTED``
    in this process, ``stored`` from an earlier start), every time when the files have no stamp."""
    known = (COUNTED.get(key) or (stored or {}).get(key)) if key else None
    if known is None:
        known = compute()
    if key:
        COUNTED[key] = known
    return known


def _count_key(
    urls, *, format: str, data: DataSection, split: PromptSplit | None = None, what: dict | None = None
) -> str | None:
    from rmrun.recipe.schema import RATED_FORMATS
    from rmrun.run.fingerprint import pair_count_key

    extra = {**(split.describe() if split else {}), **(what or {})}
    if format in RATED_FORMATS:
        extra.update(pair_rule=data.pair_rule, rating=data.rating, pair_seed=data.pair_seed)
    return pair_count_key(urls, format=format, bad_rows=data.bad_rows, margins=data.margins, extra=extra)


def split_sources(data: DataSection, *, stored: dict | None = None) -> list[tuple[str, tuple, PromptSplit | None]]:
    """``(split, sources, prompt split)`` of the train and eval sets (``Source``: files of one
    format): the eval files, or with ``data.eval_split`` both sides of a cut of the training
    files' prompts."""
    from rmrun.data.split import PromptSplit
    from rmrun.recipe.data_section import eval_sources, train_sources

    train = train_sources(data)
    if data.eval_split is None:
        files: list[tuple[str, tuple, PromptSplit | None]] = [("train", train, None)]
        held_out = eval_sources(data)
        return files + ([("eval", held_out, None)] if held_out else [])
    threshold = eval_split_threshold(data, stored=stored)
    seed = data.eval_split_seed
    return [
        ("train", train, PromptSplit(seed=seed, threshold=threshold, side="train")),
        ("eval", train, PromptSplit(seed=seed, threshold=threshold, side="eval")),
    ]


def eval_split_threshold(data: DataSection, *, stored: dict | None = None) -> float:
    """``data.eval_split``'s threshold: the fraction itself, or for a number of pairs the one
    :func:`rmrun.data.split.count_threshold` finds (a pass over the prompts, once per version of
    the files, kept with the pair counts)."""
    from rmrun.data.formats import BadRowReport, read_sources
    from rmrun.data.rated import PairRule
    from rmrun.data.split import count_threshold
    from rmrun.recipe.data_section import train_sources
    from rmrun.run import fingerprint

    assert data.eval_split is not None
    if data.eval_split < 1:
        return float(data.eval_split)
    num_pairs, seed = int(data.eval_split), data.eval_split_seed
    sources = train_sources(data)

    def find() -> dict:
        pairs = read_sources(sources, bad_rows=data.bad_rows, report=BadRowReport(), rule=PairRule.of(data))
        return {"threshold": count_threshold(pairs, seed=seed, num_pairs=num_pairs)}

    what = {"eval_pairs": num_pairs, "seed": seed}
    keys = [_count_key(s.urls, format=s.format, data=data, what=what) for s in sources]
    key = None if None in keys else keys[0] if len(keys) == 1 else fingerprint.digest({"sources": keys})
    return float(_once(key, stored, find)["threshold"])
