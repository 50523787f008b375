"""Rated responses: one prompt with several responses, each with a score, made into preference
pairs by a named rule (``data.pair_rule``), with the score gap as the pair's margin where
``data.margins = "scores"`` asks for it.

Three row formats are understood:

* ``rated``: ``{"prompt": text or messages, "responses": [{"text": ...} or {"messages": [...]},
  with "score": n or "scores": {attribute: n}]}``;
* ``ultrafeedback``: UltraFeedback's rows, ``{"instruction", "completions": [{"response",
  "overall_score", "fine-grained_score", "annotations": {aspect: {"Rating": "4"}}}]}``;
* ``helpsteer2``: HelpSteer2's rows, one response per row with its five attribute ratings
  (``{"prompt", "response", "helpfulness", "correctness", ...}``); consecutive rows with the
  same prompt are one prompt's responses.

The rules (ties never make a pair):

* ``best_vs_worst``: the highest-rated response against the lowest-rated one;
* ``best_vs_random``: the highest-rated against one drawn among those rated lower, from
  ``data.pair_seed`` and the row's own text (not its place, the world size or the pieces);
* ``all_pairs``: every two responses rated differently, the higher as chosen.

Among responses rated alike, the first in the row counts as the best (or the worst).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rmrun.data.pairs import MISSING_KEY, WRONG_TYPE, Message, PreferencePair, _BadRow, _json_type_name
from rmrun.recipe.schema import DEFAULT_RATING, RATED_FORMATS

__all__ = ["RATED_FORMATS", "PairRule", "helpsteer2_prompts", "parse_rated_row"]
PAIR_RULES = ("best_vs_worst", "best_vs_random", "all_pairs")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
TIED = "all responses rated alike"  # a row that gives no pair: recorded, never an error


@dataclass(frozen=True)
class PairRule:
    """How rated responses become pairs: ``rule`` (``PAIR_RULES``), ``rating`` (the score that
    ranks them; None: the format's ``DEFAULT_RATING``), ``seed`` (``best_vs_random``'s draw)
    and ``margins`` (``"scores"``: each pair's margin is the gap of its ratings)."""

    rule: str = "best_vs_worst"
    rating: str | None = None
    seed: int = 0
    margins: str = "none"

    @classmethod
    def of(cls, data) -> PairRule:
        """The rule a recipe's ``[data]`` names."""
        return cls(rule=data.pair_rule, rating=data.rating, seed=data.pair_seed, margins=data.margins)

    def rating_of(self, format: str) -> str:
        return self.rating or DEFAULT_RATING[format]


def parse_rated_row(row: Any, *, source: str, format: str, rule: PairRule) -> tuple[PreferencePair, ...]:
    """The pairs of one rated row (``format`` one of ``RATED_FORMATS``; a ``helpsteer2`` row is
    the merged row :func:`helpsteer2_prompts` gives); no pair when every response is rated alike."""
    from rmrun.data.rows import _checked_pair, _require_key, _require_object

    row = _require_object(row)
    rating = rule.rating_of(format)
    if format == "ultrafeedback":
        prompt = _prompt(row.get("instruction", row.get("prompt")), field="instruction")
        items = _require_list(_require_key(row, "completions"), field="completions")
        responses = [
            (
                _assistant(_require_key(c, "response"), field=f"completions[{k}].response"),
                _ultrafeedback_score(c, rating, k),
            )
            for k, c in enumerate(_objects(items, field="completions"))
        ]
    else:
        prompt = _prompt(_require_key(row, "prompt"), field="prompt")
        items = _require_list(_require_key(row, "responses"), field="responses")
        responses = [(_response(r, k), _score(r, rating, k)) for k, r in enumerate(_objects(items, field="responses"))]
    if len(responses) < 2:
        raise _BadRow(MISSING_KEY, f"a rated row needs at least two responses, it has {len(responses)}")
    pairs = []
    for chosen, rejected in _choose(responses, rule, row=row):
        (chosen_messages, chosen_score), (rejected_messages, rejected_score) = responses[chosen], responses[rejected]
        pair = _checked_pair(
            prompt, chosen_messages, rejected_messages, source=source, prompt_field="prompt", allow_empty_prompt=True
        )
        if rule.margins == "scores":
            pair = PreferencePair(
                prompt=pair.prompt,
                chosen=pair.chosen,
                rejected=pair.rejected,
                source=source,
                margin=chosen_score - rejected_score,
            )
        pairs.append(pair)
    return tuple(pairs)


def _choose(responses: list[tuple[Any, float]], rule: PairRule, *, row: dict) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` indices into ``responses`` under ``rule``."""
    scores = [score for _, score in responses]
    if rule.rule == "all_pairs":
        return [
            (i, j) if scores[i] > scores[j] else (j, i)
            for i in range(len(scores))
            for j in range(i + 1, len(scores))
            if scores[i] != scores[j]
        ]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # the first of the best
    lower = [j for j in range(len(scores)) if scores[j] < scores[best]]
    if not lower:
        return []
    if rule.rule == "best_vs_worst":
        return [(best, min(lower, key=lambda j: (scores[j], j)))]
    return [(best, lower[_draw(rule.seed, row, len(lower))])]


def _draw(seed: int, row: dict, count: int) -> int:
    """A number below ``count`` from the seed and the row's text alone."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


def helpsteer2_prompts(rows: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """HelpSteer2's one-response rows as one rated row per prompt: consecutive rows with the same
    ``"prompt"`` are its responses, their attributes its ``"scores"``; the source is the first
    row's (``file:line``). A row that is not an object with a text prompt is passed on as it is
    (its parser says what is wrong)."""
    group: dict | None = None
    first = ""
    for source, row in rows:
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)):
            if group is not None:
                yield first, group
                group = None
            yield source, row
            continue
        if group is None or group["prompt"] != row["prompt"]:
            if group is not None:
                yield first, group
            group, first = {"prompt": row["prompt"], "responses": []}, source
        response = {"text": row.get("response"), "scores": {k: row[k] for k in HELPSTEER2_ATTRIBUTES if k in row}}
        response.update({k: v for k, v in row.items() if k not in ("prompt", "response", *HELPSTEER2_ATTRIBUTES)})
        group["responses"].append(response)
    if group is not None:
        yield first, group


# --------------------------------------------------------------------------- fields


def _require_list(value: Any, *, field: str) -> list:
    if not isinstance(value, list):
        raise _BadRow(WRONG_TYPE, f'"{field}" must be a list, got {_json_type_name(value)}')
    return value


def _objects(items: list, *, field: str) -> list[dict]:
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise _BadRow(WRONG_TYPE, f'"{field}"[{k}] must be an object, got {_json_type_name(item)}')
    return items


def _prompt(value: Any, *, field: str) -> tuple[Message, ...]:
    from rmrun.data.rows import _check_prompt_roles, _parse_messages

    if value is None:
        raise _BadRow(MISSING_KEY, f'missing key "{field}"')
    if isinstance(value, str):
        return (Message("user", value),) if value else ()
    messages = _parse_messages(value, field=field, role_key="role")
    _check_prompt_roles(messages, field=field, allow_empty=True)
    return messages


def _assistant(value: Any, *, field: str) -> tuple[Message, ...]:
    if not isinstance(value, str):
        raise _BadRow(WRONG_TYPE, f'"{field}" must be a string, got {_json_type_name(value)}')
    return (Message("assistant", value),)


def _response(item: dict, k: int) -> tuple[Message, ...]:
    from rmrun.data.rows import _parse_messages

    if item.get("messages") is not None:
        return _parse_messages(item["messages"], field=f"responses[{k}].messages", role_key="role")
    if item.get("text") is None:
        raise _BadRow(MISSING_KEY, f'"responses"[{k}] needs "text" or "messages"')
    return _assistant(item["text"], field=f"responses[{k}].text")


def _number(value: Any, *, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _BadRow(WRONG_TYPE, f"{where} must be a number, got {json.dumps(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _BadRow(WRONG_TYPE, f"{where} must be a finite number, got {json.dumps(value)}")
    return float(value)


def _score(item: dict, rating: str, k: int) -> float:
    """A response's rating: its field named ``rating``, or that attribute of its ``"scores"``."""
    if item.get(rating) is not None:
        return _number(item[rating], where=f'"responses"[{k}].{rating}')
    scores = item.get("scores")
    if isinstance(scores, dict) and scores.get(rating) is not None:
        return _number(scores[rating], where=f'"responses"[{k}].scores.{rating}')
    raise _BadRow(MISSING_KEY, f'"responses"[{k}] has no rating "{rating}" (data.rating)')


def _ultrafeedback_score(item: dict, rating: str, k: int) -> float:
    """An UltraFeedback completion's rating: a field (``overall_score``, ``fine-grained_score``)
    or an aspect's ``annotations[aspect]["Rating"]`` (``helpfulness``, ``honesty``, ...)."""
    if item.get(rating) is not None:
        return _number(item[rating], where=f'"completions"[{k}].{rating}')
    aspect = (item.get("annotations") or {}).get(rating)
    if isinstance(aspect, dict) and aspect.get("Rating") is not None:
        return _number(aspect["Rating"], where=f'"completions"[{k}].annotations.{rating}.Rating')
    raise _BadRow(MISSING_KEY, f'"completions"[{k}] has no rating "{rating}" (data.rating)')
