"""Rows to preference pairs: the ``colossalchat``, ``pairwise`` and ``hh`` row formats, and the
checks every pair passes (roles alternate, responses not empty, chosen differs from rejected).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from rmrun.data.pairs import (
    BAD_ROLES,
    DIFFERENT_PROMPTS,
    EMPTY_RESPONSE,
    IDENTICAL_RESPONSES,
    MISSING_KEY,
    NOT_A_TRANSCRIPT,
    NOT_AN_OBJECT,
    ROLES,
    WRONG_TYPE,
    Message,
    PreferencePair,
    _BadRow,
    _json_type_name,
)


def _parse_colossalchat_row(row: Any, *, source: str) -> PreferencePair:
    """``{"context": [{"from", "content"}], "chosen": [...], "rejected": [...]}``."""
    row = _require_object(row)
    prompt = _parse_messages(_require_key(row, "context"), field="context", role_key="from")
    chosen = _parse_messages(_require_key(row, "chosen"), field="chosen", role_key="from")
    rejected = _parse_messages(_require_key(row, "rejected"), field="rejected", role_key="from")
    return _checked_pair(prompt, chosen, rejected, source=source, prompt_field="context", allow_empty_prompt=False)


def _parse_pairwise_row(row: Any, *, source: str) -> PreferencePair | tuple[PreferencePair, ...]:
    """TRL's preference formats: explicit prompt (text or messages) or implicit prompt.

    With an explicit prompt, ``"chosen"`` and ``"rejected"`` may each hold several responses
    (RewardBench 2's best-of-4 rows: a list of texts, or a list of message lists): the row
    gives a pair for every chosen and rejected response, one group (``read_pairs``)."""
    row = _require_object(row)
    chosen_value = _require_key(row, "chosen")
    rejected_value = _require_key(row, "rejected")
    prompt_value = row.get("prompt")  # optional: absent means the implicit-prompt form
    if prompt_value is None:
        if _several(chosen_value, str) or _several(rejected_value, str) or _several(chosen_value, list):
            raise _BadRow(MISSING_KEY, 'a row with several chosen or rejected responses needs a "prompt"')
        return _parse_implicit_prompt(chosen_value, rejected_value, source=source)
    prompt: tuple[Message, ...]
    if isinstance(prompt_value, str):
        prompt = (Message("user", prompt_value),) if prompt_value != "" else ()

        def responses(value: Any, field: str) -> list[tuple[Message, ...]]:
            texts = value if _several(value, str) else [_require_str(value, field=field)]
            return [(Message("assistant", text),) for text in texts]

    elif isinstance(prompt_value, list):
        prompt = _parse_messages(prompt_value, field="prompt", role_key="role")

        def responses(value: Any, field: str) -> list[tuple[Message, ...]]:
            if not _several(value, list):
                return [_parse_messages(value, field=field, role_key="role")]
            return [_parse_messages(v, field=f"{field}[{k}]", role_key="role") for k, v in enumerate(value)]

    else:
        raise _BadRow(
            WRONG_TYPE, f'"prompt" must be a string or a list of messages, got {_json_type_name(prompt_value)}'
        )
    pairs = tuple(
        _checked_pair(prompt, chosen, rejected, source=source, prompt_field="prompt", allow_empty_prompt=True)
        for chosen in responses(chosen_value, "chosen")
        for rejected in responses(rejected_value, "rejected")
    )
    return pairs[0] if len(pairs) == 1 else pairs


def _several(value: Any, kind: type) -> bool:
    """Whether a response field holds several responses: a non-empty list of ``kind`` (texts, or
    message lists); a list of message objects is one conversational response."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, kind) for item in value)


def pairs_of(parsed: PreferencePair | tuple[PreferencePair, ...]) -> tuple[PreferencePair, ...]:
    """A row parser's result as pairs: one, or the several of a row with several responses."""
    return parsed if isinstance(parsed, tuple) else (parsed,)


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


# Anthropic HH-RLHF: a turn starts at a blank line followed by its speaker. "Human:" inside a
# line of text, or after a single newline, is part of the text.
HH_START = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _parse_hh_row(row: Any, *, source: str) -> PreferencePair:
    """Anthropic HH-RLHF: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``.

    Both transcripts hold the whole conversation; they must agree up to their last Assistant
    turn, which is the prompt, and the last Assistant turn of each is its response.
    """
    row = _require_object(row)
    chosen = _parse_hh_transcript(_require_key(row, "chosen"), field="chosen")
    rejected = _parse_hh_transcript(_require_key(row, "rejected"), field="rejected")
    prompt, rejected_prompt = chosen[:-1], rejected[:-1]
    if prompt != rejected_prompt:
        turn = 1 + _common_prefix_length(prompt, rejected_prompt)
        raise _BadRow(
            DIFFERENT_PROMPTS,
            f'"chosen" and "rejected" differ at turn {turn}, before their last Assistant turn; '
            "an hh row's two transcripts must share the conversation up to it",
        )
    return _checked_pair(
        prompt, chosen[-1:], rejected[-1:], source=source, prompt_field="prompt", allow_empty_prompt=False
    )


def _parse_hh_transcript(value: Any, *, field: str) -> tuple[Message, ...]:
    """Turns of one transcript: the single space after each speaker's colon is dropped, the
    rest of the text is kept exactly; Human and Assistant alternate and Assistant ends it."""
    text = _require_str(value, field=field)
    if not text.strip():
        raise _BadRow(EMPTY_RESPONSE, f'"{field}" is empty')
    pieces = _HH_TURN.split(text)  # ["", speaker, text, speaker, text, ...] when text starts with a turn
    if pieces[0]:
        raise _BadRow(NOT_A_TRANSCRIPT, f'"{field}" must start with "\\n\\nHuman:" (it starts {text[:20]!r})')
    messages = []
    for number, (speaker, content) in enumerate(zip(pieces[1::2], pieces[2::2]), start=1):
        expected = "Human" if number % 2 == 1 else "Assistant"
        if speaker != expected:
            raise _BadRow(
                BAD_ROLES, f'"{field}": turn {number} is {speaker}, expected {expected} (Human and Assistant alternate)'
            )
        messages.append(Message(_HH_ROLES[speaker], content.removeprefix(" ")))
    if len(messages) < 2:
        raise _BadRow(BAD_ROLES, f'"{field}" has no Assistant turn')
    if messages[-1].role != "assistant":
        raise _BadRow(BAD_ROLES, f'"{field}" must end with an Assistant turn, not a Human one')
    if not messages[-1].content.strip():
        raise _BadRow(EMPTY_RESPONSE, f'"{field}": the last Assistant turn is empty')
    return tuple(messages)


def is_hh_row(row: Any) -> bool:
    """Whether a row has the shape of an HH-RLHF row: string transcripts starting with a Human turn."""
    return (
        isinstance(row, dict)
        and "prompt" not in row
        and all(isinstance(row.get(key), str) and row[key].startswith(HH_START) for key in ("chosen", "rejected"))
    )


_ROW_PARSERS: dict[str, Callable[..., PreferencePair | tuple[PreferencePair, ...]]] = {
    "colossalchat": _parse_colossalchat_row,
    "pairwise": _parse_pairwise_row,
    "hh": _parse_hh_row,
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
