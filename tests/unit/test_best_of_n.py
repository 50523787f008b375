"""Rows with several chosen or rejected responses: their pairs, their group and subset through
tokenizing in pieces, and the best-of-N and per-subset accuracy computed from them."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from rmrun.data import read_pairs
from rmrun.data.arrays import ARRAY_NAMES, subset_id_of, subset_names
from rmrun.data.formats import BadRowReport, DataError, Message
from rmrun.train.groups import group_metrics

BEST_OF_4 = {"prompt": "Name a prime.", "chosen": ["7"], "rejected": ["8", "9", "10"], "subset": "math"}


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_best_of_4_row_gives_a_pair_per_rejected_response_of_one_group(tmp_path):
    plain = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}
    conversational = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [[{"role": "assistant", "content": "No."}], [{"role": "assistant", "content": "Bye."}]],
        "category": "chat",
    }
    url = _write(tmp_path / "rows.jsonl", [BEST_OF_4, plain, conversational])
    pairs = list(read_pairs([url], format="pairwise"))
    assert [(p.group, p.subset) for p in pairs] == [(0, "math")] * 3 + [(1, "")] + [(2, "chat")] * 2
    assert [p.rejected[0].content for p in pairs[:3]] == ["8", "9", "10"]
    assert all(
        p.chosen == (Message("assistant", "7"),) and p.prompt == (Message("user", "Name a prime."),) for p in pairs[:3]
    )
    assert [p.rejected[0].content for p in pairs[4:]] == ["No.", "Bye."]
    assert all(p.source.endswith("rows.jsonl:1") for p in pairs[:3])


def test_several_chosen_give_every_chosen_against_every_rejected(tmp_path):
    row = {"prompt": "p", "chosen": ["a", "b"], "rejected": ["x", "y"]}
    pairs = list(read_pairs([_write(tmp_path / "rows.jsonl", [row])], format="pairwise"))
    assert [(p.chosen[0].content, p.rejected[0].content) for p in pairs] == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
        ("b", "y"),
    ]
    assert {p.group for p in pairs} == {0}


def test_a_bad_row_keeps_its_number_so_groups_do_not_depend_on_skipping(tmp_path):
    rows = [BEST_OF_4, {"prompt": "p", "chosen": ["a"], "rejected": ["a", "b"]}, BEST_OF_4]
    url = _write(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"rows.jsonl:2: .*identical"):
        list(read_pairs([url], format="pairwise"))
    report = BadRowReport()
    pairs = list(read_pairs([url], format="pairwise", bad_rows="skip", report=report))
    assert report.total == 1  # the whole row goes: one of its pairs carries no preference
    assert [p.group for p in pairs] == [0, 0, 0, 2, 2, 2]


def test_several_responses_without_a_prompt_is_a_bad_row(tmp_path):
    url = _write(tmp_path / "rows.jsonl", [{"chosen": ["a"], "rejected": ["b", "c"]}])
    with pytest.raises(
        DataError, match=r'rows.jsonl:1: a row with several chosen or rejected responses needs a "prompt"'
    ):
        list(read_pairs([url], format="pairwise"))


@pytest.fixture(scope="module")
def tokenizer():
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection
    from tests.helpers import TINY_LLAMA, TINY_TOKENIZER

    return load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))


def test_groups_and_subsets_survive_pieces_and_the_assembled_file(tmp_path, tokenizer):
    from rmrun.data.mapped import map_safetensors
    from rmrun.data.pieces import AssembledFile, assemble, tokenize_piece

    rows = [dict(BEST_OF_4, subset=f"s{i % 3}", prompt=f"Name prime number {i}.") for i in range(7)]
    pairs = list(read_pairs([_write(tmp_path / "rows.jsonl", rows)], format="pairwise"))
    options = {"max_length": 64, "overflow": "truncate", "template": None}
    pieces = [tokenize_piece(pairs, tokenizer, piece=i, num_pieces=4, **options) for i in range(4)]
    whole = assemble(pieces)
    assert whole.group.tolist() == [p.group for p in pairs] == [i for i in range(7) for _ in range(3)]
    assert whole.subset_id.tolist() == [subset_id_of(p.subset) for p in pairs]
    assert whole.stats["subsets"] == {str(subset_id_of(f"s{k}")): f"s{k}" for k in range(3)}
    os.makedirs(tmp_path / "scratch", exist_ok=True)
    on_disk = AssembledFile(str(tmp_path / "scratch"))
    for piece in pieces:
        on_disk.add(piece)
    stats = on_disk.finish(str(tmp_path / "t.safetensors"))
    read = map_safetensors(str(tmp_path / "t.safetensors"))
    for name in ARRAY_NAMES:
        assert read[name].tobytes() == getattr(whole, name).tobytes(), name
    assert stats["subsets"] == whole.stats["subsets"]


def test_subset_ids_are_stable_and_a_clash_is_refused():
    assert subset_id_of("") == 0 and subset_id_of("math") == subset_id_of("math") != subset_id_of("code")
    assert subset_names([{"1": "a"}, {"2": "b"}, None]) == {"1": "a", "2": "b"}
    with pytest.raises(DataError, match="hash alike"):
        subset_names([{"1": "a"}, {"1": "b"}])


def _data(group, subset=None, names=None):
    group = np.asarray(group, dtype=np.int64)
    subset = np.zeros(len(group), dtype=np.int32) if subset is None else np.asarray(subset, dtype=np.int32)
    return SimpleNamespace(group=group, subset_id=subset, stats={"subsets": names} if names else {})


def test_best_of_n_is_the_share_of_rows_with_every_pair_right():
    correct = np.array([True, True, False, True, True, True, False, True])
    # rows: 0 (3 pairs, one wrong), 1 (3 pairs, all right), 2 (1 pair, wrong), a pair never numbered (right)
    data = _data([0, 0, 0, 1, 1, 1, 2, -1], subset=[5, 5, 5, 6, 6, 6, 6, 0], names={"5": "a", "6": "b"})
    out = group_metrics(correct, data)
    assert out["groups"] == 4 and out["best_of_n_accuracy"] == 2 / 4
    assert out["subsets"] == {
        "a": {"pairs": 3, "accuracy": 2 / 3, "groups": 1, "best_of_n_accuracy": 0.0},
        "b": {"pairs": 4, "accuracy": 3 / 4, "groups": 2, "best_of_n_accuracy": 0.5},
    }
    # The negative control: without the groups each pair is a row of its own, and there is no
    # best-of-N number (it would be the pairwise accuracy, 6/8).
    ungrouped = group_metrics(correct, _data(np.arange(8)))
    assert "best_of_n_accuracy" not in ungrouped and "subsets" not in ungrouped
    assert group_metrics(correct, _data([-1] * 8)) == {}
