"""Reading preference data (chosen/rejected pairs) from JSONL, JSON and Parquet files.

Three row formats are understood:

* ``colossalchat``: ``{"context": [{"from", "content"}, ...], "chosen": [...], "rejected": [...]}``
  as produced by ColossalChat's preference-data preparation.
* ``pairwise``: TRL's preference formats: plain text ``{"prompt", "chosen", "rejected"}``,
  conversational (lists of ``{"role", "content"}`` messages), and the implicit-prompt form
  without ``"prompt"``.
* ``hh``: Anthropic's HH-RLHF ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``:
  whole transcripts that share every turn before their last Assistant turn (the prompt); that
  last turn is each side's response.

Every rejected row is reported with ``file:line`` (JSONL), ``file:item N`` (JSON array, 0-based)
or ``file:row N`` (Parquet, 0-based) so the user can find it; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import fsspec

from rmrun.data.pairs import (
    INVALID_JSON,
    BadRowReport,
    DataError,
    Message,
    PreferencePair,
    _BadRow,
    _first_line,
    _json_type_name,
    row_margin,
    row_subset,
)
from rmrun.data.rated import RATED_FORMATS, TIED, PairRule, helpsteer2_prompts, parse_rated_row
from rmrun.data.rows import _ROW_PARSERS, pairs_of

if TYPE_CHECKING:
    from rmrun.data.split import PromptSplit
    from rmrun.recipe.data_section import Source

# The pair types are re-exported: callers read pairs and handle them through this module.
__all__ = [
    "BAD_ROW_POLICIES",
    "FORMATS",
    "BadRowReport",
    "DataError",
    "Message",
    "PreferencePair",
    "read_pairs",
    "read_sources",
]

FORMATS = ("colossalchat", "pairwise", "hh", *RATED_FORMATS)
BAD_ROW_POLICIES = ("error", "skip")

# Compression suffixes fsspec can undo on the fly ("compression='infer'").
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_PARQUET_BATCH_ROWS = 1024


# --------------------------------------------------------------------------- reading files


def read_pairs(
    urls: Sequence[str],
    *,
    format: str,
    bad_rows: str = "error",
    report: BadRowReport | None = None,
    margins: str | None = None,
    split: PromptSplit | None = None,
    rule: PairRule | None = None,
    source_id: int = 0,
    first_group: int = 0,
) -> Generator[PreferencePair, None, int]:
    """Yield the preference pairs of every file in ``urls``, in order; return the number of rows read.

    ``urls`` are local paths or fsspec URLs ending in ``.jsonl``, ``.json`` or ``.parquet``
    (optionally followed by a compression suffix such as ``.gz``). With ``bad_rows="error"``
    the first bad row raises DataError; with ``"skip"`` bad rows are counted in ``report``,
    which is then required so that skipped rows are always accounted for. ``margins``
    (``data.margins``): where each pair's margin comes from (``row_margin``; default: ``rule``'s). ``split``: only the
    pairs on its side of a cut of the prompts (``data.eval_split``); a bad row is bad on either side.

    Each pair's ``group`` is the number of its row among the rows read (bad rows count too), so a
    row with several chosen or rejected responses gives pairs of one group; ``subset`` is the
    row's subset field (``row_subset``). The rated formats (``rated.py``) make their pairs by
    ``rule`` (``data.pair_rule``, ``data.rating``, ``data.pair_seed``; the defaults without
    one), each pair's margin their ratings' gap under ``margins="scores"``; a row whose
    responses are all rated alike gives none and is recorded in ``report`` (never an error).
    Every pair gets ``source_id``, and the rows are numbered from ``first_group`` (``read_sources``).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"unknown bad_rows policy {bad_rows!r}; expected one of {', '.join(BAD_ROW_POLICIES)}")
    if bad_rows == "skip" and report is None:
        raise ValueError('bad_rows="skip" needs a BadRowReport so skipped rows are not lost silently')
    rated = format in RATED_FORMATS
    if margins is None:  # the rule's, else none
        margins = rule.margins if rule is not None else "none"
    rule = dataclasses.replace(rule or PairRule(), margins=margins)
    group = first_group - 1
    for url in urls:
        rows = _iter_raw_rows(url)
        if format == "helpsteer2":
            rows = helpsteer2_prompts(rows)
        for source, row in rows:
            group += 1
            try:
                if rated:
                    pairs = parse_rated_row(row, source=source, format=format, rule=rule)
                    if not pairs and report is not None:
                        report.record(TIED, message=f"{source}: {TIED}: no pair")
                else:
                    pairs = pairs_of(_ROW_PARSERS[format](row, source=source))
                extra: dict = {"group": group, "subset": row_subset(row), "source_id": source_id}
                if margins != "none" and not rated:
                    extra["margin"] = row_margin(row, margins)
                for pair in pairs:
                    pair = dataclasses.replace(pair, **extra)
                    if split is None or split.keeps(pair):
                        yield pair
            except _BadRow as bad:
                message = f"{source}: {bad.detail}"
                if bad_rows == "error":
                    raise DataError(message) from None
                assert report is not None  # "skip" without a report was refused above
                report.record(bad.reason, message=message)
    return group + 1 - first_group


def read_sources(
    sources: Sequence[Source],
    *,
    bad_rows: str = "error",
    report: BadRowReport | None = None,
    margins: str | None = None,
    split: PromptSplit | None = None,
    rule: PairRule | None = None,
) -> Iterator[PreferencePair]:
    """The pairs of each source (``rmrun.recipe.data_section.Source``: files, format, id) in
    turn, as :func:`read_pairs` reads them; rows are numbered across the sources, so a group
    never spans two."""
    rows = 0
    for source in sources:
        rows += yield from read_pairs(
            source.urls,
            format=source.format,
            bad_rows=bad_rows,
            report=report,
            margins=margins,
            split=split,
            rule=rule,
            source_id=source.id,
            first_group=rows,
        )


def _iter_raw_rows(url: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, row)`` for each row of one file; a row that is not valid JSON is a _BadRow instance."""
    reader = _reader_for(url)
    try:
        with fsspec.open(url, mode="rb", compression="infer") as handle:
            yield from reader(handle, url=url)
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None


def _reader_for(url: str) -> Callable[..., Iterator[tuple[str, Any]]]:
    """Pick the file reader from the extension (ignoring a compression suffix)."""
    name = url.split("?", 1)[0].lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(".jsonl"):
        return _read_jsonl
    if name.endswith(".json"):
        return _read_json_array
    if name.endswith(".parquet"):
        return _read_parquet
    raise DataError(f"{url}: unknown file type; expected .jsonl, .json or .parquet")


def _read_jsonl(handle, *, url: str) -> Iterator[tuple[str, Any]]:
    """One JSON object per line; blank lines are allowed (editors and `cat` leave them)."""
    for line_number, raw_line in enumerate(handle, start=1):
        source = f"{url}:{line_number}"
        try:
            # utf-8-sig on the first line so a BOM written by some editors is not a JSON error.
            line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            yield source, _BadRow(INVALID_JSON, f"invalid JSON: not UTF-8 ({error.reason})")
            continue
        if not line.strip():
            continue
        try:
            yield source, json.loads(line)
        except json.JSONDecodeError as error:
            yield source, _BadRow(INVALID_JSON, f"invalid JSON: {error.msg} (column {error.colno})")


def _read_json_array(handle, *, url: str) -> Iterator[tuple[str, Any]]:
    """A whole-file JSON array; an unreadable file is a file-level error, not a bad row."""
    try:
        document = json.loads(handle.read().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataError(f"{url}: not UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{url}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(document, list):
        raise DataError(f"{url}: expected a JSON array of objects, got {_json_type_name(document)}")
    for index, row in enumerate(document):
        yield f"{url}:item {index}", row


def _read_parquet(handle, *, url: str) -> Iterator[tuple[str, Any]]:
    """Parquet rows as dicts, read batch by batch so large files are not loaded whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(handle)
    except pa.ArrowException as error:
        raise DataError(f"{url}: not a readable Parquet file ({_first_line(str(error))})") from None
    row_index = 0
    for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{url}:row {row_index}", row
            row_index += 1
