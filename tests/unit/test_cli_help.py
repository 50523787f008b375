"""``rmrun --help``, ``rmrun run|check --help`` and ``rmrun explain``, called in-process: they document
every recipe key with its doc line."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from rmrun.cli.main import main
from rmrun.recipe.explain import explain_text
from rmrun.recipe.schema import Recipe

# ------------------------------------------------------------------ help, explain


def schema_keys(cls=Recipe, table: str = "") -> set[tuple[str, str]]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(inner):
            keys |= schema_keys(inner, f"{table}.{f.name}" if table else f.name)
        else:
            keys.add((table, f.name))
    return keys


def documented_keys(text: str) -> set[tuple[str, str]]:
    """(table, key) for every ``  key (type; default)`` line under a ``[table]`` header."""
    keys, table = set(), None
    for line in text.splitlines():
        if line.startswith("[") and "]" in line:  # [table], or [[table]] for an array of tables
            table = line.lstrip("[")[: line.lstrip("[").index("]")]
        elif table and line.startswith("  ") and not line.startswith("   ") and " (" in line:
            keys.add((table, line.strip().split(" (")[0]))
    return keys


def help_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_explain_lists_every_key_with_its_doc(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    keys = schema_keys()
    assert len(keys) == 86 and ("model.lora", "target_modules") in keys and ("data.sources", "weight") in keys
    assert "[[data.sources]]" in out
    assert documented_keys(out) == keys
    assert 'extends = "base.toml"' in out
    assert "      Clip the global gradient norm to this value (0 turns clipping off)." in out


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["check", "--help"]])
def test_help_documents_every_recipe_key(capsys, argv):
    out = help_of(capsys, argv)
    assert documented_keys(out) == schema_keys()
    for needle in (
        "batch_size",
        "grad_clip",
        "accumulation_steps",
        "[model.lora]",
        "[plugin]",
        "zero2_cpu",
        "Clip the global gradient norm",
    ):
        assert needle in out
    assert explain_text() in out


def test_explain_names_a_key_or_a_table_and_refuses_a_typo_with_the_nearest(capsys):
    assert main(["explain", "data.pair_rule", "data.sources"]) == 0
    out = capsys.readouterr().out
    assert documented_keys(out) == {("data", "pair_rule")} | {k for k in schema_keys() if k[0] == "data.sources"}
    assert "extends" not in out
    assert main(["explain", "data.pair_rul"]) == 2
    err = capsys.readouterr().err
    assert 'data.pair_rul: not a recipe table or key (did you mean "data.pair_rule"?)' in err
