"""The rows ``rmrun score`` and ``rmrun eval`` read: preference pairs in any ``[data]`` format
(the same row parsers as training, ``rmrun.data.rows``) and single responses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rmrun.serve.exported import ScoreError


@dataclass(frozen=True)
class Row:
    """One input row's pair: a preference pair, or a single response (``single``: chosen is that
    response), or a bad row skipped with ``--bad-rows skip`` (``pair`` None, ``error`` says why).
    A row with several chosen or rejected responses is a Row per pair, all of one ``number``
    (the row's place in the input)."""

    pair: object | None  # PreferencePair
    single: bool
    source: str
    subset: str | None
    row_id: object
    error: str | None = None
    number: int = -1


BAD_ROW_POLICIES = ("skip", "error")


def read_rows(urls, *, format: str, bad_rows: str = "error", rated: dict | None = None) -> list[Row]:
    """Pairs in any format ``[data]`` accepts (``context`` rows are ColossalChat's, HH-RLHF
    transcripts hh's, others pairwise), and single responses: ``{"prompt": ..., "response": "..."}``.

    A bad row raises DataError (``bad_rows="error"``) or, with ``"skip"``, stays in the list as a
    Row with its ``error``, so the output still has one line per input row. Rows of the rated
    formats ``rated`` and ``ultrafeedback`` give the pairs training made of them (``rated``: the
    export's ``pair_rule``, ``rating``, ``pair_seed``, and ``margins``, which also gives each
    pair of the other formats the row's own margin where it has one).
    """
    from rmrun.data.formats import _iter_raw_rows
    from rmrun.data.pairs import DataError, Message, PreferencePair, _BadRow, row_margin
    from rmrun.data.rated import TIED, PairRule, parse_rated_row
    from rmrun.data.rows import _ROW_PARSERS, _check_prompt_roles, _parse_messages, pairs_of

    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"unknown bad_rows policy {bad_rows!r}; expected one of {', '.join(BAD_ROW_POLICIES)}")
    settings = rated or {}
    rule = PairRule(
        rule=settings.get("pair_rule", "best_vs_worst"),
        rating=settings.get("rating"),
        seed=settings.get("pair_seed", 0),
        margins=settings.get("margins", "none"),
    )
    rows: list[Row] = []
    number = -1
    for url in urls:
        for source, raw in _iter_raw_rows(url):
            number += 1
            subset, row_id = _subset_and_id(raw)
            try:
                if isinstance(raw, _BadRow):
                    raise raw
                if not isinstance(raw, dict):
                    raise _BadRow("not an object", f"expected a JSON object, got {type(raw).__name__}")
                kind = _row_kind(raw, format=format)
                pairs: tuple[PreferencePair, ...]
                if kind == "single":
                    prompt = raw.get("prompt", "")
                    response = raw["response"]
                    if not isinstance(response, str) or not response:
                        raise _BadRow("wrong type", '"response" must be a non-empty string')
                    messages: tuple[Message, ...]
                    if isinstance(prompt, str):
                        messages = (Message("user", prompt),) if prompt else ()
                    else:
                        messages = _parse_messages(prompt, field="prompt", role_key="role")
                    _check_prompt_roles(messages, field="prompt", allow_empty=True)
                    side = (Message("assistant", response),)
                    pairs, single = (PreferencePair(prompt=messages, chosen=side, rejected=side, source=source),), True
                elif kind in ("rated", "ultrafeedback"):
                    pairs, single = parse_rated_row(raw, source=source, format=kind, rule=rule), False
                    if not pairs:
                        raise _BadRow(TIED, f"{TIED}: no pair")
                else:
                    pairs, single = pairs_of(_ROW_PARSERS[kind](raw, source=source)), False
                    if rule.margins != "none":  # the row's own margin where it has one, as in training; else 0
                        try:
                            margin = row_margin(raw, rule.margins)
                        except _BadRow:
                            margin = 0.0
                        pairs = tuple(dataclasses.replace(pair, margin=margin) for pair in pairs)
            except _BadRow as bad:
                if bad_rows == "error":
                    raise DataError(f"{source}: {bad.detail}") from None
                rows.append(
                    Row(
                        pair=None,
                        single=False,
                        source=source,
                        subset=subset,
                        row_id=row_id,
                        error=bad.detail,
                        number=number,
                    )
                )
                continue
            rows.extend(
                Row(pair=pair, single=single, source=source, subset=subset, row_id=row_id, number=number)
                for pair in pairs
            )
    if not rows:
        raise ScoreError(f"{', '.join(urls)}: no rows")
    if all(row.error is not None for row in rows):
        raise ScoreError(f"{', '.join(urls)}: no row could be scored; the first: {rows[0].source}: {rows[0].error}")
    return rows


def _row_kind(raw: dict, *, format: str) -> str:
    """Which parser reads a row: "single", or a ``[data].format`` name.

    Rows of another format than the export's are recognised by their shape, except that
    HH-shaped rows stay pairwise for a model trained with ``format = "pairwise"``: it read
    them as plain-text responses, and scoring renders text exactly as in training.
    """
    from rmrun.data.rows import is_hh_row

    if "responses" in raw and "chosen" not in raw:
        return "rated"
    if "completions" in raw and "chosen" not in raw:
        return "ultrafeedback"
    if "response" in raw and "chosen" not in raw:
        return "single"
    if "context" in raw:
        return "colossalchat"
    if format != "pairwise" and is_hh_row(raw):
        return "hh"
    if format == "hh" and "prompt" not in raw and isinstance(raw.get("chosen"), str):
        return "hh"  # a malformed transcript: the hh parser says what is wrong with it
    if format == "colossalchat" and "prompt" not in raw:
        return "colossalchat"
    return "pairwise"


def _subset_and_id(raw) -> tuple[str | None, object]:
    from rmrun.data.pairs import row_subset

    if not isinstance(raw, dict):
        return None, None
    return row_subset(raw) or None, raw.get("id")
