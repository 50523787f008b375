"""Registries that check themselves: each name a recipe may choose has exactly one entry in
the table that builds it, and each table is the only list of what it holds."""

from __future__ import annotations

import dataclasses
from typing import get_args, get_type_hints

from rmrun.recipe.schema import LossSection, PluginName, PluginSection


def test_the_loss_table_matches_the_schema_choices():
    from rmrun.train.loss import LOSSES

    assert sorted(LOSSES) == sorted(get_args(get_type_hints(LossSection)["name"]))


def test_the_plugin_table_matches_the_schema_choices():
    from rmrun.recipe.plugins import PLUGINS

    assert sorted(PLUGINS) == sorted(get_args(PluginName))
    assert get_type_hints(PluginSection)["name"] == PluginName


def test_the_commands_listed_are_the_commands_the_parser_knows():
    import argparse

    from rmrun.cli.main import COMMANDS, _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert tuple(sub.choices) == COMMANDS


def test_the_hooks_run_in_the_order_of_their_fields_and_nowhere_else_are_they_listed():
    from rmrun.train.hooks import Hooks

    names = [field.name for field in dataclasses.fields(Hooks)]
    marks = [object() for _ in names]
    hooks = Hooks(**dict(zip(names, marks, strict=True)))
    assert list(hooks) == marks
    assert names[-1] == "checkpoint"  # last, so a checkpoint holds its step's evaluation
