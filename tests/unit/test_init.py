"""``rmrun init``: a commented starting recipe that loads and plans as written."""

from __future__ import annotations

import pytest

from rmrun.cli.init import detect_format
from rmrun.cli.main import main
from rmrun.recipe import load_recipe, make_plan
from tests.helpers import EVAL_DATA, REPO, TINY_LLAMA, TRAIN_DATA


def test_init_writes_a_recipe_that_loads_and_plans(tmp_path, capsys):
    out = tmp_path / "sub" / "mine.toml"
    out.parent.mkdir()
    assert main(["init", TINY_LLAMA, TRAIN_DATA, "--eval", EVAL_DATA, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}; next: rmrun check {out}, then rmrun run {out}\n"
    text = out.read_text()
    assert text.startswith("# A starting recipe written by `rmrun init`")
    assert 'format = "colossalchat"  # read from the first row' in text
    recipe = load_recipe(str(out), overrides=[f"model.tokenizer={REPO}/recipes/assets/tiny-tokenizer"])
    assert recipe.run.name == "mine" and recipe.plugin.name == "ddp"
    assert list(recipe.data.train) == [TRAIN_DATA] and list(recipe.data.eval) == [EVAL_DATA]
    assert make_plan(recipe, world_size=1, num_pairs=64).plugin_args["find_unused_parameters"] is False


def test_init_never_overwrites(tmp_path, capsys):
    out = tmp_path / "r.toml"
    out.write_text("# mine\n")
    assert main(["init", TINY_LLAMA, TRAIN_DATA, "--out", str(out)]) == 2
    assert f"{out}: exists; rmrun init never overwrites a recipe" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"


@pytest.mark.parametrize(
    "row,expected",
    [
        ('{"context": [], "chosen": [], "rejected": []}', "colossalchat"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}', "pairwise"),
        ('{"chosen": "a", "rejected": "b"}', "hh"),
        ('{"text": "a"}', None),
        ("not json", None),
    ],
)
def test_the_format_is_read_from_the_first_row(tmp_path, row, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(row + "\n")
    assert detect_format(str(path)) == expected
