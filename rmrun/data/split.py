"""An eval set carved out of the training files (``data.eval_split``), disjoint by prompt.

Each pair's prompt gets a draw in [0, 1): the first 8 bytes of sha256(seed, prompt) (its
messages, roles and texts; a pair with no prompt is drawn by its responses instead, so that
plain-text rows are not all one "prompt"). A pair is in the eval set when its draw is under
the split's threshold, so every pair of a prompt is on the same side, the sides depend on
nothing but the rows and the seed (not their order, the world size or the number of pieces),
and a row is placed without looking at any other. ``data.eval_split`` below 1 is that
threshold (a fraction of the prompts); a whole number N asks for N pairs: the threshold is
then the draw of the first prompt that would take the eval set past N, found by one pass over
the prompts (:func:`count_threshold`), so the set holds whole prompts, at least N pairs when
the data has them, and as few more as a prompt's pairs make.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rmrun.data.pairs import PreferencePair


def prompt_draw(pair: PreferencePair, *, seed: int) -> float:
    """The pair's prompt's draw in [0, 1), a pure function of (seed, prompt)."""
    key = pair.prompt or (pair.chosen, pair.rejected)
    text = json.dumps([seed, [list(m) for m in key] if pair.prompt else [[list(m) for m in side] for side in key]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class PromptSplit:
    """One side of the cut: "eval" keeps the pairs whose prompt draws under ``threshold``."""

    seed: int
    threshold: float
    side: Literal["train", "eval"]

    def keeps(self, pair: PreferencePair) -> bool:
        return (prompt_draw(pair, seed=self.seed) < self.threshold) == (self.side == "eval")

    def describe(self) -> dict:
        """What decides the side's pairs, for the keys of their counts and of the tokenized data."""
        return {"seed": self.seed, "threshold": self.threshold, "side": self.side}


def count_threshold(pairs: Iterable[PreferencePair], *, seed: int, num_pairs: int) -> float:
    """The threshold whose eval set is the prompts of lowest draw, whole, until it holds at least
    ``num_pairs`` pairs (1.0: every pair, when there are no more)."""
    per_prompt: dict[float, int] = {}
    for pair in pairs:
        draw = prompt_draw(pair, seed=seed)
        per_prompt[draw] = per_prompt.get(draw, 0) + 1
    taken = 0
    for draw in sorted(per_prompt):
        if taken >= num_pairs:
            return draw
        taken += per_prompt[draw]
    return 1.0
