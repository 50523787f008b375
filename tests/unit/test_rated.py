"""Rated responses made into preference pairs (rmrun/data/rated.py): the three row shapes, the
three rules against hand-made expectations, ties, the seeded draw, margins from the ratings,
and the recipe checks around them."""

from __future__ import annotations

import json

import pytest

from rmrun.data import read_pairs
from rmrun.data.formats import BadRowReport, DataError, Message
from rmrun.data.rated import PairRule

ROW = {
    "prompt": "Write a haiku.",
    "responses": [
        {"text": "B", "score": 3},
        {"text": "A", "score": 5},
        {"text": "D", "score": 1},
        {"text": "C", "score": 3},
    ],
}


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _pairs(tmp_path, rows, format="rated", **rule):
    margins = rule.pop("margins", "none")
    url = _write(tmp_path / "rows.jsonl", rows)
    return list(read_pairs([url], format=format, margins=margins, rule=PairRule(**rule)))


def _texts(pairs) -> list[tuple[str, str]]:
    return [(p.chosen[-1].content, p.rejected[-1].content) for p in pairs]


def test_best_vs_worst_takes_the_highest_against_the_lowest(tmp_path):
    [pair] = _pairs(tmp_path, [ROW])
    assert _texts([pair]) == [("A", "D")]
    assert pair.prompt == (Message("user", "Write a haiku."),) and pair.margin == 0.0


def test_all_pairs_are_every_two_rated_differently_ties_dropped(tmp_path):
    pairs = _pairs(tmp_path, [ROW], rule="all_pairs")
    # 4 responses: 6 couples, one of them (B, C) a tie.
    assert sorted(_texts(pairs)) == sorted([("A", "B"), ("B", "D"), ("A", "D"), ("A", "C"), ("C", "D")])
    assert {p.group for p in pairs} == {0}


def test_best_vs_random_draws_from_the_seed_and_the_row_alone(tmp_path):
    draws = {s: _texts(_pairs(tmp_path, [ROW], rule="best_vs_random", seed=s))[0] for s in range(30)}
    assert all(chosen == "A" and rejected in ("B", "C", "D") for chosen, rejected in draws.values())
    assert len(set(draws.values())) == 3, "the seed changes the draw"
    # The same row elsewhere in the file (or in another file) draws the same: the draw is the row's own.
    moved = _pairs(
        tmp_path,
        [{"prompt": "x", "responses": [{"text": "1", "score": 2}, {"text": "2", "score": 1}]}, ROW],
        rule="best_vs_random",
        seed=5,
    )
    assert _texts(moved[1:]) == [draws[5]]


def test_margins_from_scores_are_the_rating_gap(tmp_path):
    pairs = _pairs(tmp_path, [ROW], rule="all_pairs", margins="scores")
    assert {_texts([p])[0]: p.margin for p in pairs} == {
        ("A", "B"): 2.0,
        ("A", "C"): 2.0,
        ("A", "D"): 4.0,
        ("B", "D"): 2.0,
        ("C", "D"): 2.0,
    }
    # The negative control: without data.margins the gaps are not used.
    assert {p.margin for p in _pairs(tmp_path, [ROW], rule="all_pairs")} == {0.0}


def test_a_named_attribute_of_the_scores_ranks_the_responses(tmp_path):
    row = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "responses": [
            {"messages": [{"role": "assistant", "content": "short"}], "scores": {"helpfulness": 1, "verbosity": 4}},
            {"messages": [{"role": "assistant", "content": "long"}], "scores": {"helpfulness": 3, "verbosity": 0}},
        ],
    }
    assert _texts(_pairs(tmp_path, [row], rating="helpfulness")) == [("long", "short")]
    assert _texts(_pairs(tmp_path, [row], rating="verbosity")) == [("short", "long")]


def test_a_row_rated_all_alike_gives_no_pair_and_is_counted(tmp_path):
    tied = {"prompt": "p", "responses": [{"text": "a", "score": 2}, {"text": "b", "score": 2}]}
    url = _write(tmp_path / "rows.jsonl", [tied, ROW])
    report = BadRowReport()
    pairs = list(read_pairs([url], format="rated", report=report))
    assert _texts(pairs) == [("A", "D")] and pairs[0].group == 1
    assert report.counts == {"all responses rated alike": 1}


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "p", "responses": [{"text": "a", "score": 1}]}, "at least two responses, it has 1"),
        ({"prompt": "p", "responses": [{"text": "a", "score": 1}, {"text": "b"}]}, 'has no rating "score"'),
        ({"prompt": "p", "responses": [{"text": "a", "score": "high"}, {"text": "b", "score": 1}]}, "must be a number"),
        ({"prompt": "p", "responses": "a"}, '"responses" must be a list'),
        ({"responses": []}, 'missing key "prompt"'),
        ({"prompt": "p", "responses": [{"score": 1}, {"text": "b", "score": 2}]}, 'needs "text" or "messages"'),
    ],
)
def test_a_malformed_rated_row_is_a_one_line_error_naming_the_line(tmp_path, row, message):
    url = _write(tmp_path / "rows.jsonl", [ROW, row])
    with pytest.raises(DataError, match=r"rows.jsonl:2: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        list(read_pairs([url], format="rated"))


def test_ultrafeedback_rows_by_overall_score_or_by_an_aspect(tmp_path):
    row = {
        "instruction": "Explain rain.",
        "completions": [
            {"response": "Clouds.", "overall_score": 6.0, "annotations": {"honesty": {"Rating": "2"}}},
            {"response": "Water falls.", "overall_score": 8.5, "annotations": {"honesty": {"Rating": "5"}}},
            {"response": "Magic.", "overall_score": 2.0, "annotations": {"honesty": {"Rating": "1"}}},
        ],
    }
    [pair] = _pairs(tmp_path, [row], format="ultrafeedback", margins="scores")
    assert _texts([pair]) == [("Water falls.", "Magic.")] and pair.margin == 6.5
    [by_honesty] = _pairs(tmp_path, [row], format="ultrafeedback", rating="honesty", margins="scores")
    assert _texts([by_honesty]) == [("Water falls.", "Magic.")] and by_honesty.margin == 4.0


def test_helpsteer2_rows_of_one_prompt_are_its_responses(tmp_path):
    attributes = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

    def row(prompt, response, *scores):
        return {"prompt": prompt, "response": response, **dict(zip(attributes, scores))}

    rows = [
        row("Q1", "good", 4, 4, 4, 2, 1),
        row("Q1", "bad", 1, 2, 3, 2, 3),
        row("Q2", "fine", 3, 3, 4, 1, 1),
        row("Q2", "same", 3, 2, 4, 1, 2),
        row("Q3", "alone", 2, 2, 2, 2, 2),
    ]
    url = _write(tmp_path / "hs2.jsonl", rows)
    report = BadRowReport()
    pairs = list(read_pairs([url], format="helpsteer2", bad_rows="skip", margins="scores", report=report))
    # Q2's two responses tie on helpfulness (no pair); Q3 has one response (a bad row).
    assert _texts(pairs) == [("good", "bad")] and pairs[0].margin == 3.0
    assert pairs[0].source.endswith("hs2.jsonl:1")
    assert report.counts == {"all responses rated alike": 1, "missing key": 1}
    by_correctness = list(
        read_pairs(
            [url], format="helpsteer2", bad_rows="skip", report=BadRowReport(), rule=PairRule(rating="correctness")
        )
    )
    assert _texts(by_correctness) == [("good", "bad"), ("fine", "same")]


def test_the_recipe_refuses_pair_keys_outside_the_rated_formats_and_a_margin_field_inside(tmp_path):
    from tests.helpers import quickstart_slice, recipe_problems

    recipe = quickstart_slice(tmp_path)
    [problem] = recipe_problems(recipe, overrides=["data.pair_rule=all_pairs"])
    assert problem.endswith(
        "[data].pair_rule: applies to the rated formats (rated, ultrafeedback, helpsteer2); data.format is 'colossalchat'"
    )
    [problem] = recipe_problems(recipe, overrides=["data.format=rated", "data.margins=margin"])
    assert problem.endswith(
        '[data].margins: "margin" reads a row\'s "margin" field; rated rows have ratings: use "scores"'
    )
