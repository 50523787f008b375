"""The plugin table (rmrun/recipe/plugins.py) is the one place plugin facts live: its fields
drive validation, the plan and the booster, and no other module spells them out."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import get_args

import pytest

from rmrun.recipe import World, environment_problems
from rmrun.recipe import plugins as table
from rmrun.recipe.backbone import model_attention
from rmrun.recipe.plugins import PLUGINS
from rmrun.recipe.schema import (
    DataSection,
    LoraSection,
    ModelSection,
    PluginName,
    PluginSection,
    Recipe,
    ScheduleSection,
)
from rmrun.recipe.validate import static_problems

REPO = Path(__file__).resolve().parents[2]
TABLE = "rmrun/recipe/plugins.py"
CLASS_NAMES = {spec.class_name for spec in PLUGINS.values()}


def recipe(*, lora: bool = False, accumulation_steps: int = 1, **plugin) -> Recipe:
    return Recipe(
        data=DataSection(train=("x.jsonl",)),
        model=ModelSection(pretrain="m", lora=LoraSection() if lora else None),
        plugin=PluginSection(**plugin),
        schedule=ScheduleSection(accumulation_steps=accumulation_steps),
    )


def with_spec(monkeypatch, name: str, **changes) -> None:
    monkeypatch.setitem(PLUGINS, name, dataclasses.replace(PLUGINS[name], **changes))


def test_the_table_names_the_schema_plugins():
    assert list(PLUGINS) == list(get_args(PluginName))


def test_supports_lora_drives_the_lora_check(monkeypatch):
    message = '[model.lora]: LoRA is not supported with plugin "gemini"; use zero2, ddp or 3d'
    assert static_problems(recipe(lora=True, name="gemini", mixed_precision="bf16")) == [message]
    with_spec(monkeypatch, "gemini", supports_lora=True)
    assert static_problems(recipe(lora=True, name="gemini", mixed_precision="bf16")) == []
    with_spec(monkeypatch, "ddp", supports_lora=False)
    assert static_problems(recipe(lora=True, name="ddp")) == [message.replace('"gemini"', '"ddp"')]


def test_supports_accumulation_drives_the_accumulation_check(monkeypatch):
    message = (
        '[schedule].accumulation_steps: plugin "gemini_auto" does not support gradient accumulation; '
        'use 1 or plugin "gemini"'
    )
    assert static_problems(recipe(accumulation_steps=2, name="gemini_auto", mixed_precision="bf16")) == [message]
    with_spec(monkeypatch, "gemini_auto", supports_accumulation=True)
    assert static_problems(recipe(accumulation_steps=2, name="gemini_auto", mixed_precision="bf16")) == []


def test_precisions_drive_the_precision_check(monkeypatch):
    message = '[plugin].mixed_precision: plugin "gemini" trains in "bf16" or "fp16", not "fp32"'
    assert static_problems(recipe(name="gemini", mixed_precision="fp32")) == [message]
    with_spec(monkeypatch, "zero2", precisions=("bf16",))
    assert static_problems(recipe(name="zero2", mixed_precision="fp16")) == [
        '[plugin].mixed_precision: plugin "zero2" trains in "bf16", not "fp16"'
    ]


def test_model_parallel_and_rules_drive_the_sharding_checks(monkeypatch):
    assert static_problems(recipe(name="zero2", tp=2)) == ['[plugin].tp: only the "3d" plugin shards models; got tp=2']
    with_spec(monkeypatch, "zero2", model_parallel=True)
    assert static_problems(recipe(name="zero2", tp=2)) == []
    assert static_problems(recipe(name="3d", zero_stage=3)) == ["[plugin].zero_stage: must be 0, 1 or 2, got 3"]
    with_spec(monkeypatch, "3d", rules=())
    assert static_problems(recipe(name="3d", zero_stage=3)) == []


def test_needs_cuda_drives_the_environment_check(monkeypatch):
    cpu = World(size=1, cuda=False)
    assert environment_problems(recipe(name="zero2"), cpu) == [
        '[plugin].name: "zero2" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
    ]
    assert environment_problems(recipe(name="ddp", mixed_precision="fp32"), cpu) == []
    with_spec(monkeypatch, "ddp", needs_cuda=True)
    assert environment_problems(recipe(name="ddp", mixed_precision="fp32"), cpu) == [
        '[plugin].name: "ddp" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
    ]
    assert table.CUDA_PLUGINS == ("zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")


def test_casts_and_flash_attention_are_read_from_the_table(monkeypatch):
    assert table.booster_mixed_precision(PluginSection(name="ddp", mixed_precision="fp16")) == "fp16"
    assert model_attention(PluginSection(name="zero2", flash_attn=True)) == "flash_attention_2"
    assert model_attention(PluginSection(name="3d", flash_attn=True)) is None
    with_spec(monkeypatch, "ddp", casts="plugin", flash_attention="plugin")
    assert table.booster_mixed_precision(PluginSection(name="ddp", mixed_precision="fp16")) is None
    assert model_attention(PluginSection(name="ddp", flash_attn=True)) is None


def test_every_field_is_read_outside_the_dataclass():
    # No dead fields: each one is read as ``spec.<field>`` or ``PLUGINS[...].<field>`` somewhere.
    sources = "\n".join(p.read_text() for p in (REPO / "rmrun").rglob("*.py"))
    for field in dataclasses.fields(table.PluginSpec):
        assert f".{field.name}" in sources, field.name


def test_every_plugin_class_in_the_table_has_a_builder_in_boost_and_back():
    from rmrun.model.boost import BUILDERS

    assert set(BUILDERS) == CLASS_NAMES
    assert all(PLUGINS[name].class_name in BUILDERS for name in PLUGINS)


def _python_files():
    for top in ("rmrun", "benchmarks"):
        yield from sorted((REPO / top).rglob("*.py"))


def _spelled_plugin_facts(tree: ast.AST) -> list[int]:
    """Lines that list plugin names (a tuple, list or set of two or more), compare a ``.name``
    to one, or name a ColossalAI plugin class."""
    names = set(PLUGINS)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            listed = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(listed) == len(node.elts) and len(set(listed) & names) >= 2:
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "name" for s in sides) and any(
                isinstance(s, ast.Constant) and s.value in names for s in sides
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and node.value in CLASS_NAMES:
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    "source,found",
    [
        ('SHARDED = ("zero2", "gemini")', True),
        ('if plugin.name == "ddp": pass', True),
        ('if p.name in ("gemini",): pass', False),  # one name in a tuple: the compare is on a tuple, not a constant
        ('cls = "GeminiPlugin"', True),
        ('PLUGIN = "ddp"', False),
    ],
)
def test_the_plugin_fact_check_itself(source, found):
    assert bool(_spelled_plugin_facts(ast.parse(source))) is found


def test_no_other_module_defines_plugin_facts():
    offenders = []
    for path in _python_files():
        relative = path.relative_to(REPO).as_posix()
        if relative in (TABLE, "rmrun/recipe/schema.py"):  # the table, and the schema's Literal of its names
            continue
        tree = ast.parse(path.read_text())
        if relative == "rmrun/model/boost.py":
            # boost.py builds each ColossalAI class by the name the table gives it (BUILDERS,
            # checked against the table above), and spells out no other plugin fact.
            tree = ast.Module(body=[n for n in tree.body if not _assigns(n, "BUILDERS")], type_ignores=[])
        offenders += [f"{relative}:{line}" for line in _spelled_plugin_facts(tree)]
    assert offenders == []


def _assigns(node: ast.stmt, name: str) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
