"""Reading preference data (chosen/rejected pairs) from JSONL, JSON and Parquet files.

Two row formats are understood:

* ``colossalchat``: ``{"context": [{"from", "content"}, ...], "chosen": [...], "rejected": [...]}``
  as produced by ColossalChat's preference-data preparation.
* ``pairwise``: TRL's preference formats: plain text ``{"prompt", "chosen", "rejected"}``,
  conversational (lists of ``{"role", "content"}`` messages), and the implicit-prompt form
  without ``"prompt"``.

Every rejected row is reported with ``file:line`` (JSONL), ``file:item N`` (JSON array, 0-based)
or ``file:row N`` (Parquet, 0-based) so the user can find it; nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec

FORMATS = ("colossalchat", "pairwise")
BAD_ROW_POLICIES = ("error", "skip")
ROLES = ("system", "user", "assistant")

# Reasons a row can be rejected; used as the keys of BadRowReport.counts.
INVALID_JSON = "invalid JSON"
NOT_AN_OBJECT = "not an object"
MISSING_KEY = "missing key"
WRONG_TYPE = "wrong type"
EMPTY_RESPONSE = "empty response"
BAD_ROLES = "bad roles"
IDENTICAL_RESPONSES = "chosen identical to rejected"

# Compression suffixes fsspec can undo on the fly ("compression='infer'").
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_PARQUET_BATCH_ROWS = 1024


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
    """

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    source: str


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


# --------------------------------------------------------------------------- reading files


def read_pairs(
    urls: Sequence[str],
    *,
    format: str,
    bad_rows: str = "error",
    report: BadRowReport | None = None,
) -> Iterator[PreferencePair]:
    """Yield the preference pairs of every file in ``urls``, in order.

    ``urls`` are local paths or fsspec URLs ending in ``.jsonl``, ``.json`` or ``.parquet``
    (optionally followed by a compression suffix such as ``.gz``). With ``bad_rows="error"``
    the first bad row raises DataError; with ``"skip"`` bad rows are counted in ``report``,
    which is then required so that skipped rows are always accounted for.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"unknown bad_rows policy {bad_rows!r}; expected one of {', '.join(BAD_ROW_POLICIES)}")
    if bad_rows == "skip" and report is None:
        raise ValueError('bad_rows="skip" needs a BadRowReport so skipped rows are not lost silently')
    parse_row = _ROW_PARSERS[format]
    for url in urls:
        for source, row in _iter_raw_rows(url):
            try:
                yield parse_row(row, source=source)
            except _BadRow as bad:
                message = f"{source}: {bad.detail}"
                if bad_rows == "error":
                    raise DataError(message) from None
                assert report is not None  # "skip" without a report was refused above
                report.record(bad.reason, message=message)


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


# --------------------------------------------------------------------------- row parsing


def _parse_colossalchat_row(row: Any, *, source: str) -> PreferencePair:
    """``{"context": [{"from", "content"}], "chosen": [...], "rejected": [...]}``."""
    row = _require_object(row)
    prompt = _parse_messages(_require_key(row, "context"), field="context", role_key="from")
    chosen = _parse_messages(_require_key(row, "chosen"), field="chosen", role_key="from")
    rejected = _parse_messages(_require_key(row, "rejected"), field="rejected", role_key="from")
    return _checked_pair(prompt, chosen, rejected, source=source, prompt_field="context", allow_empty_prompt=False)


def _parse_pairwise_row(row: Any, *, source: str) -> PreferencePair:
    """TRL's preference formats: explicit prompt (text or messages) or implicit prompt."""
    row = _require_object(row)
    chosen_value = _require_key(row, "chosen")
    rejected_value = _require_key(row, "rejected")
    prompt_value = row.get("prompt")  # optional: absent means the implicit-prompt form
    if prompt_value is None:
        return _parse_implicit_prompt(chosen_value, rejected_value, source=source)
    if isinstance(prompt_value, str):
        chosen: tuple[Message, ...] = (Message("assistant", _require_str(chosen_value, field="chosen")),)
        rejected: tuple[Message, ...] = (Message("assistant", _require_str(rejected_value, field="rejected")),)
        prompt: tuple[Message, ...] = (Message("user", prompt_value),) if prompt_value != "" else ()
        return _checked_pair(prompt, chosen, rejected, source=source, prompt_field="prompt", allow_empty_prompt=True)
    if isinstance(prompt_value, list):
        prompt = _parse_messages(prompt_value, field="prompt", role_key="role")
        chosen = _parse_messages(chosen_value, field="chosen", role_key="role")
        rejected = _parse_messages(rejected_value, field="rejected", role_key="role")
        return _checked_pair(prompt, chosen, rejected, source=source, prompt_field="prompt", allow_empty_prompt=True)
    raise _BadRow(WRONG_TYPE, f'"prompt" must be a string or a list of messages, got {_json_type_name(prompt_value)}')


def _parse_implicit_prompt(chosen_value: Any, rejected_value: Any, *, source: str) -> PreferencePair:
    """No "prompt" key: plain strings are prompt-less responses; conversations share their prompt.

    Plain strings are not split at a common character prefix (as TRL does) because a
    character split can land mid-word; the whole text is scored as the response instead.
    """
    if isinstance(chosen_value, str):
        chosen = (Message("assistant", chosen_value),)
        rejected = (Message("assistant", _require_str(rejected_value, field="rejected")),)
        return _checked_pair((), chosen, rejected, source=source, prompt_field="prompt", allow_empty_prompt=True)
    chosen_conversation = _parse_messages(chosen_value, field="chosen", role_key="role")
    rejected_conversation = _parse_messages(rejected_value, field="rejected", role_key="role")
    shared = _common_prefix_length(chosen_conversation, rejected_conversation)
    return _checked_pair(
        chosen_conversation[:shared],
        chosen_conversation[shared:],
        rejected_conversation[shared:],
        source=source,
        prompt_field="shared prefix of chosen and rejected",
        allow_empty_prompt=True,
    )


def _common_prefix_length(first: Sequence[Message], second: Sequence[Message]) -> int:
    """Number of leading messages two conversations have in common."""
    length = 0
    for left, right in zip(first, second):
        if left != right:
            break
        length += 1
    return length


_ROW_PARSERS: dict[str, Callable[..., PreferencePair]] = {
    "colossalchat": _parse_colossalchat_row,
    "pairwise": _parse_pairwise_row,
}


def _require_object(row: Any) -> dict:
    """The row itself must be a JSON object; readers hand over _BadRow for undecodable lines."""
    if isinstance(row, _BadRow):
        raise row
    if not isinstance(row, dict):
        raise _BadRow(NOT_AN_OBJECT, f"expected a JSON object, got {_json_type_name(row)}")
    return row


def _require_key(row: dict, key: str) -> Any:
    """A required key; null counts as missing because Parquet fills absent columns with null."""
    if key not in row:
        raise _BadRow(MISSING_KEY, f'missing key "{key}"')
    if row[key] is None:
        raise _BadRow(MISSING_KEY, f'"{key}" is null')
    return row[key]


def _require_str(value: Any, *, field: str) -> str:
    if not isinstance(value, str):
        raise _BadRow(WRONG_TYPE, f'"{field}" must be a string, got {_json_type_name(value)}')
    return value


def _parse_messages(value: Any, *, field: str, role_key: str) -> tuple[Message, ...]:
    """A list of ``{role_key: role, "content": str}`` objects (ColossalChat uses "from", TRL "role")."""
    if not isinstance(value, list):
        raise _BadRow(WRONG_TYPE, f'"{field}" must be a list of messages, got {_json_type_name(value)}')
    messages = []
    for position, item in enumerate(value):
        where = f'"{field}"[{position}]'
        if not isinstance(item, dict):
            raise _BadRow(WRONG_TYPE, f"{where} must be an object, got {_json_type_name(item)}")
        for key in (role_key, "content"):
            if item.get(key) is None:
                raise _BadRow(MISSING_KEY, f'{where}: missing key "{key}"')
        role, content = item[role_key], item["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            raise _BadRow(WRONG_TYPE, f'{where}: "{role_key}" and "content" must be strings')
        if role not in ROLES:
            raise _BadRow(BAD_ROLES, f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
        messages.append(Message(role, content))
    return tuple(messages)


# --------------------------------------------------------------------------- pair checks


def _checked_pair(
    prompt: tuple[Message, ...],
    chosen: tuple[Message, ...],
    rejected: tuple[Message, ...],
    *,
    source: str,
    prompt_field: str,
    allow_empty_prompt: bool,
) -> PreferencePair:
    """Apply the checks every format shares, then build the pair."""
    _check_prompt_roles(prompt, field=prompt_field, allow_empty=allow_empty_prompt)
    for field, response in (("chosen", chosen), ("rejected", rejected)):
        _check_response_not_empty(response, field=field)
        _check_response_roles(response, field=field)
    if _normalized(chosen) == _normalized(rejected):
        raise _BadRow(IDENTICAL_RESPONSES, '"chosen" is identical to "rejected"; the pair carries no preference')
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source)


def _check_prompt_roles(prompt: Sequence[Message], *, field: str, allow_empty: bool) -> None:
    """Optional leading system turn, then user/assistant alternating, ending with a user turn."""
    if not prompt:
        if allow_empty:
            return
        raise _BadRow(BAD_ROLES, f'"{field}" is empty; it must end with a user turn')
    turns = prompt[1:] if prompt[0].role == "system" else prompt
    _check_alternation(turns, field=field, first_role="user", offset=len(prompt) - len(turns))
    if prompt[-1].role != "user":
        raise _BadRow(BAD_ROLES, f'"{field}" must end with a user turn, not {prompt[-1].role!r}')


def _check_response_roles(response: Sequence[Message], *, field: str) -> None:
    """A response continues the conversation: assistant first, alternating, assistant last."""
    _check_alternation(response, field=field, first_role="assistant", offset=0)
    if response[-1].role != "assistant":
        raise _BadRow(BAD_ROLES, f'"{field}" must end with an assistant turn, not {response[-1].role!r}')


def _check_alternation(turns: Sequence[Message], *, field: str, first_role: str, offset: int) -> None:
    """Roles must go first_role, other, first_role, ...; a system turn is only allowed first in the prompt."""
    other_role = "assistant" if first_role == "user" else "user"
    for position, message in enumerate(turns):
        expected = first_role if position % 2 == 0 else other_role
        if message.role != expected:
            raise _BadRow(
                BAD_ROLES,
                f'roles do not alternate in "{field}": message {position + offset} is {message.role!r}, expected {expected!r}',
            )


def _check_response_not_empty(response: Sequence[Message], *, field: str) -> None:
    if not response:
        raise _BadRow(EMPTY_RESPONSE, f'"{field}" is empty')
    for message in response:
        if not message.content.strip():
            raise _BadRow(EMPTY_RESPONSE, f'"{field}" is empty')


def _normalized(response: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    """Responses differing only in surrounding whitespace give the reward model no signal."""
    return tuple((message.role, message.content.strip()) for message in response)


# --------------------------------------------------------------------------- helpers


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
