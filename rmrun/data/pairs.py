"""Preference pairs as rmrun holds them, and the words a rejected row is reported in.

:class:`PreferencePair` is what every reader produces, whatever the file's format;
:class:`_BadRow` is raised while parsing one row and becomes a :class:`DataError` (one
line naming the file and row) or, with ``bad_rows="skip"``, an entry of a
:class:`BadRowReport`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

ROLES = ("system", "user", "assistant")

# Reasons a row can be rejected; used as the keys of BadRowReport.counts.
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "not an object"
MISSING_KEY = "missing key"
WRONG_TYPE = "wrong type"
EMPTY_RESPONSE = "empty response"
BAD_ROLES = "bad roles"
IDENTICAL_RESPONSES = "chosen identical to rejected"
NOT_A_TRANSCRIPT = "not an HH transcript"
DIFFERENT_PROMPTS = "different prompts"
SUBSET_KEYS = ("subset", "category")  # a row's subset (RewardBench's "subset", others' "category")


class DataError(ValueError):
    """A problem in the user's data, reported as one line naming the file and line or row."""


class Message(NamedTuple):
    """One chat turn; ``role`` is one of ``ROLES``."""

    role: str
    content: str


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) response.

    ``prompt`` may be empty (plain-text rows with an empty prompt); ``chosen`` and ``rejected``
    each hold at least one message and end with an assistant turn. ``source`` is ``"file:line"``.
    ``margin`` is the pair's own margin from the row (``row_margin``), 0 unless asked for.
    ``group`` numbers the row the pair came from (``read_pairs``: a row with one chosen and
    several rejected responses gives a pair for each, all of one group, -1 until numbered);
    ``subset`` is the row's ``"subset"`` (or ``"category"``) field, "" without one; ``source_id``
    the place of its source in ``data.sources`` (``rmrun.recipe.data_section.Source``), 0 without.
    """

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    source: str
    margin: float = 0.0  # from the row, where data.margins asks for it
    group: int = -1
    subset: str = ""
    source_id: int = 0


class BadRowReport:
    """Tally of rows skipped with ``bad_rows="skip"``: a count per reason and the first few messages."""

    MAX_EXAMPLES = 5

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    @property
    def total(self) -> int:
        """Number of rows skipped so far."""
        return sum(self.counts.values())

    def record(self, reason: str, *, message: str) -> None:
        """Count one skipped row; keep its message if fewer than MAX_EXAMPLES are kept."""
        self.counts[reason] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(message)

    def summary(self) -> str:
        """Human-readable account of what was skipped, e.g. for the run log."""
        if not self.counts:
            return "no bad rows"
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.counts.most_common())
        lines = [f"skipped {self.total} bad row(s): {reasons}"]
        shown = len(self.examples)
        lines.append(f"first {shown}:" if shown < self.total else "all:")
        lines.extend(f"  {example}" for example in self.examples)
        return "\n".join(lines)


class _BadRow(Exception):
    """Raised while parsing one row; read_pairs turns it into a DataError or a report entry."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _json_type_name(value: Any) -> str:
    """JSON's name for a Python value's type, as users see it in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def row_margin(row: Any, margins: str) -> float:
    """The pair's margin from its row: its ``margin`` field, or ``score_chosen - score_rejected``;
    a row without them (or with a value that is not a finite number) is a bad row."""
    import json
    import math

    fields = {"margin": ("margin",), "scores": ("score_chosen", "score_rejected")}[margins]
    values = []
    for name in fields:
        if not isinstance(row, dict) or name not in row:
            raise _BadRow("margin", f'data.margins = "{margins}" needs a "{name}" field, and the row has none')
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _BadRow("margin", f'"{name}" must be a finite number, got {json.dumps(value)}')
        values.append(float(value))
    return values[0] if margins == "margin" else values[0] - values[1]


def row_subset(row: Any) -> str:
    """A row's subset name (its first ``SUBSET_KEYS`` field that is set), "" without one."""
    if not isinstance(row, dict):
        return ""
    return next((str(row[key]) for key in SUBSET_KEYS if row.get(key) is not None), "")
