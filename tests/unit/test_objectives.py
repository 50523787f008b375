"""Objectives beyond a constant margin: per-pair margins from the data (``data.margins``) and
reward centering (``loss.center_coef``), each against hand-computed values with a negative
control; and the margins' way from the rows, through tokenizing in pieces, to the batch."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from rmrun.data.formats import BadRowReport, DataError, read_pairs
from rmrun.train.loss import log_exp_loss, log_sig_loss, metrics_from_sums, pair_losses, pair_sums


def _nll(x: float) -> float:
    """-log(sigmoid(x)), by hand."""
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------- the loss


def test_per_pair_margins_against_hand_computed_values():
    chosen, rejected = torch.tensor([1.0, 0.5, -2.0]), torch.tensor([0.0, 1.0, -1.0])
    own = torch.tensor([0.5, -1.0, 2.0])
    got = pair_losses("log_sig", chosen, rejected, margin=0.25 + own)
    expected = [_nll(1.0 - 0.0 - 0.75), _nll(0.5 - 1.0 + 0.75), _nll(-2.0 + 1.0 - 2.25)]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    # log_exp is the same function of the margin (softplus(-x) = -logsigmoid(x))
    assert log_exp_loss(chosen, rejected, margin=0.25 + own).tolist() == pytest.approx(expected, abs=1e-6)
    # negative control: the per-pair margins ignored (the constant alone) give another loss
    constant = pair_losses("log_sig", chosen, rejected, margin=0.25)
    assert not torch.allclose(constant, got)
    assert constant.tolist() == pytest.approx(log_sig_loss(chosen, rejected, margin=0.25).tolist())


def test_reward_centering_against_hand_computed_values_and_its_own_metric():
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    plain = pair_losses("log_sig", chosen, rejected, margin=0.0)
    centered = pair_losses("log_sig", chosen, rejected, margin=0.0, center_coef=0.1)
    assert (centered - plain).tolist() == pytest.approx([0.1 * 1.0**2, 0.1 * 1.5**2], abs=1e-6)
    assert pair_losses("log_sig", chosen, rejected, margin=0.0, center_coef=0.0).tolist() == plain.tolist()

    sums = pair_sums(chosen, rejected, centered)
    metrics = metrics_from_sums(sums, center=True)
    assert metrics["center_loss"] == pytest.approx((1.0 + 2.25) / 2)  # mean((r_c + r_r)^2)
    assert metrics["loss"] == pytest.approx(float(plain.mean()) + 0.1 * (1.0 + 2.25) / 2, abs=1e-6)
    assert "center_loss" not in metrics_from_sums(sums), "logged only where centering is on"


def test_the_gradient_of_centering_pulls_rewards_to_zero():
    chosen = torch.tensor([3.0], requires_grad=True)
    rejected = torch.tensor([2.0], requires_grad=True)
    pair_losses("log_sig", chosen, rejected, margin=0.0, center_coef=0.5).sum().backward()
    plain_c = torch.sigmoid(torch.tensor(1.0)).item() - 1.0  # d/dr_c of -logsigmoid(r_c - r_r)
    assert chosen.grad.item() == pytest.approx(plain_c + 0.5 * 2 * 5.0, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(-plain_c + 0.5 * 2 * 5.0, abs=1e-6)


# ----------------------------------------------------------------- reading the margins


def _rows(tmp_path, rows: list[dict]) -> str:
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _row(i: int, **extra) -> dict:
    return {"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad {i}", **extra}


def test_margins_from_a_margin_field_or_from_scores(tmp_path):
    url = _rows(
        tmp_path,
        [_row(0, margin=1.5, score_chosen=9, score_rejected=2.5), _row(1, margin=-2, score_chosen=3, score_rejected=3)],
    )
    by_field = [p.margin for p in read_pairs([url], format="pairwise", margins="margin")]
    by_scores = [p.margin for p in read_pairs([url], format="pairwise", margins="scores")]
    assert by_field == [1.5, -2.0] and by_scores == [6.5, 0.0]
    assert [p.margin for p in read_pairs([url], format="pairwise")] == [0.0, 0.0], "none: not read"


@pytest.mark.parametrize(
    "row, message",
    [
        (_row(1), 'rated.jsonl:2: data.margins = "scores" needs a "score_chosen" field, and the row has none'),
        (_row(1, score_chosen=1), 'rated.jsonl:2: data.margins = "scores" needs a "score_rejected" field'),
        (_row(1, score_chosen="7", score_rejected=1), '"score_chosen" must be a finite number, got "7"'),
        (_row(1, score_chosen=True, score_rejected=1), '"score_chosen" must be a finite number, got true'),
        (_row(1, score_chosen=None, score_rejected=1), '"score_chosen" must be a finite number, got null'),
    ],
)
def test_a_row_without_usable_scores_is_a_bad_row_naming_file_and_line(tmp_path, row, message):
    url = _rows(tmp_path, [_row(0, score_chosen=2, score_rejected=1), row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(read_pairs([url], format="pairwise", margins="scores"))
    report = BadRowReport()
    kept = list(read_pairs([url], format="pairwise", bad_rows="skip", report=report, margins="scores"))
    assert [p.margin for p in kept] == [1.0] and report.counts == {"margin": 1}


def test_an_infinite_margin_is_refused(tmp_path):
    path = tmp_path / "inf.jsonl"
    path.write_text(json.dumps(_row(0)).replace("}", ', "margin": Infinity}') + "\n")
    with pytest.raises(DataError, match='"margin" must be a finite number'):
        list(read_pairs([str(path)], format="pairwise", margins="margin"))


def test_margins_follow_their_pairs_through_drops_pieces_and_subsets(tmp_path):
    from rmrun.data import tokenize_pairs
    from rmrun.data.pieces import assemble, tokenize_piece
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection
    from tests.helpers import TINY_LLAMA, TINY_TOKENIZER

    tokenizer = load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))
    rows = [_row(i, margin=float(i) / 4) for i in range(11)]
    rows[4]["chosen"] = "a very long answer " * 40  # dropped at max_length 48
    pairs = list(read_pairs([_rows(tmp_path, rows)], format="pairwise", margins="margin"))
    options = {"max_length": 48, "overflow": "drop", "template": None}
    whole = tokenize_pairs(pairs, tokenizer, **options)
    assert whole.stats["dropped"] == 1
    assert whole.margin.dtype == np.float32
    assert whole.margin.tolist() == [i / 4 for i in range(11) if i != 4]
    assert whole.margin.tolist() == [rows[int(j)]["margin"] for j in whole.pair_index]
    pieces = assemble([tokenize_piece(pairs, tokenizer, piece=k, num_pieces=3, **options) for k in range(3)])
    assert pieces.margin.tobytes() == whole.margin.tobytes()
    assert whole.subset(np.array([3, 0])).margin.tolist() == [whole.margin[3], whole.margin[0]]


def test_data_tokenized_before_margins_were_stored_reads_as_zero_margins():
    from tests.helpers import pairs_of

    arrays = pairs_of(chosen=[[1, 2], [3]], rejected=[[1, 4], [5]]).to_arrays()
    del arrays["margin"]
    from rmrun.data.arrays import TokenizedPairs

    assert TokenizedPairs.from_arrays(arrays, {}).margin.tolist() == [0.0, 0.0]


def test_the_margins_are_part_of_the_tokenized_data_key_and_the_run_identity_only_when_on():
    from rmrun.recipe import load_recipe
    from rmrun.run.fingerprint import result_keys, tokenize_key
    from tests.helpers import REPO

    quickstart = os.path.join(REPO, "recipes", "quickstart.toml")
    plain = load_recipe(quickstart)
    rated = load_recipe(quickstart, overrides=['data.margins="scores"'])
    centered = load_recipe(quickstart, overrides=["loss.center_coef=0.01"])
    assert "data.margins" not in result_keys(plain) and "loss.center_coef" not in result_keys(plain)
    assert result_keys(rated)["data.margins"] == "scores" and result_keys(centered)["loss.center_coef"] == 0.01
    assert tokenize_key(rated.data, rated.model) != tokenize_key(plain.data, plain.model)
    assert tokenize_key(centered.data, centered.model) == tokenize_key(plain.data, plain.model)
