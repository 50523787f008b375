"""The rows ``rmrun score`` and ``rmrun eval`` read: preference pairs in any ``[data]`` format
(the same row parsers as training, ``rmrun.data.rows``) and single responses."""

from __future__ import annotations

from dataclasses import dataclass

from rmrun.serve.exported import ScoreError

SUBSET_KEYS = ("subset", "category")


@dataclass(frozen=True)
class Row:
    """One input row: a preference pair, or a single response (``single``: chosen is that response),
    or a bad row skipped with ``--bad-rows skip`` (``pair`` None, ``error`` says why)."""

    pair: object | None  # PreferencePair
    single: bool
    source: str
    subset: str | None
    row_id: object
    error: str | None = None


BAD_ROW_POLICIES = ("skip", "error")


def read_rows(urls, *, format: str, bad_rows: str = "error") -> list[Row]:
    """Pairs in any format ``[data]`` accepts (``context`` rows are ColossalChat's, HH-RLHF
    transcripts hh's, others pairwise), and single responses: ``{"prompt": ..., "response": "..."}``.

    A bad row raises DataError (``bad_rows="error"``) or, with ``"skip"``, stays in the list as a
    Row with its ``error``, so the output still has one line per input row.
    """
    from rmrun.data.formats import _iter_raw_rows
    from rmrun.data.pairs import DataError, Message, PreferencePair, _BadRow
    from rmrun.data.rows import _ROW_PARSERS, _check_prompt_roles, _parse_messages

    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"unknown bad_rows policy {bad_rows!r}; expected one of {', '.join(BAD_ROW_POLICIES)}")
    rows = []
    for url in urls:
        for source, raw in _iter_raw_rows(url):
            subset, row_id = _subset_and_id(raw)
            try:
                if isinstance(raw, _BadRow):
                    raise raw
                if not isinstance(raw, dict):
                    raise _BadRow("not an object", f"expected a JSON object, got {type(raw).__name__}")
                kind = _row_kind(raw, format=format)
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
                    pair, single = PreferencePair(prompt=messages, chosen=side, rejected=side, source=source), True
                else:
                    pair, single = _ROW_PARSERS[kind](raw, source=source), False
            except _BadRow as bad:
                if bad_rows == "error":
                    raise DataError(f"{source}: {bad.detail}") from None
                rows.append(Row(pair=None, single=False, source=source, subset=subset, row_id=row_id, error=bad.detail))
                continue
            rows.append(Row(pair=pair, single=single, source=source, subset=subset, row_id=row_id))
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
    if not isinstance(raw, dict):
        return None, None
    subset = next((str(raw[k]) for k in SUBSET_KEYS if raw.get(k) is not None), None)
    return subset, raw.get("id")
