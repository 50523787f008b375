"""The recipe language: TOML → typed Recipe.

Every error class with its exact one-line message (file and full key path in each),
all problems in one pass, ``--set`` for every key of the schema, ``extends`` merging,
the environment checks as a pure function of (recipe, world), and every shipped recipe.
All in-process and standard-library only: no torch, no processes.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import typing
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import pytest

from rmrun.recipe import Recipe, RecipeError, World, environment_problems, load_recipe, make_plan
from rmrun.recipe.plugins import CUDA_PLUGINS, plugin_call
from rmrun.recipe.schema import LoraSection
from rmrun.recipe.validate import static_problems

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(glob.glob(str(REPO / "recipes" / "*.toml")))
GPU_RECIPES = ("llama2-7b-zero2.toml", "llama2-7b-3d.toml")

# Enough for a recipe to load: the two required keys, and a plugin that runs on CPU.
MINIMAL = """
[data]
train = ["pairs.jsonl"]

[model]
pretrain = "model"

[plugin]
name = "ddp"
mixed_precision = "fp32"
"""


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def problems_of(path: str, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides=overrides)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def recipe_with(tmp_path: Path, text: str, *, name: str = "recipe.toml") -> str:
    """MINIMAL with ``text``'s tables merged over it (a table named in both is replaced)."""
    tables = {}
    for block in re.split(r"\n(?=\[)", MINIMAL.strip() + "\n" + text.strip()):
        header = block.splitlines()[0]
        tables[header] = block  # a later table of the same name replaces the earlier one
    return write(tmp_path / name, "\n\n".join(tables.values()) + "\n")


# --------------------------------------------------------------- the schema's keys


def _unwrap(tp):
    if get_origin(tp) is Union:
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def leaf_keys(cls=Recipe, prefix: str = "") -> list[tuple[str, object, dataclasses.Field]]:
    """(dotted path, type without Optional, field) for every key of the schema, nested tables included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += leaf_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", tp, f))
    return out


KEYS = leaf_keys()
KEY_PATHS = [k for k, _, _ in KEYS]


def label(key: str) -> str:
    table, _, name = key.rpartition(".")
    return f"[{table}].{name}"


def get(recipe, key: str):
    value = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_the_key_enumeration_sees_every_table_including_lora():
    tables = {k.rpartition(".")[0] for k in KEY_PATHS}
    assert tables == {
        "run",
        "data",
        "model",
        "model.lora",
        "plugin",
        "loss",
        "schedule",
        "checkpoint",
        "eval",
        "log",
        "log.wandb",
        "log.mlflow",
        "output",
    }
    assert {"model.lora.r", "model.lora.alpha", "model.lora.dropout", "model.lora.target_modules"} <= set(KEY_PATHS)
    assert len(KEYS) == 82  # data.sources, an array of tables, is one key here


# ----------------------------------------------------------- error classes, exact text


def test_unknown_key_with_did_you_mean(tmp_path):
    path = recipe_with(tmp_path, "[schedule]\nbatchsize = 8")
    assert problems_of(path) == [f'{path}: [schedule].batchsize: unknown key (did you mean "batch_size"?)']


def test_unknown_key_without_a_close_match_has_no_hint(tmp_path):
    path = recipe_with(tmp_path, "[schedule]\nlerning_rate = 1e-5")
    assert problems_of(path) == [f"{path}: [schedule].lerning_rate: unknown key"]


def test_unknown_key_in_a_nested_table_names_the_nested_table(tmp_path):
    path = recipe_with(tmp_path, "[model.lora]\nalpah = 4.0")
    assert problems_of(path) == [f'{path}: [model.lora].alpah: unknown key (did you mean "alpha"?)']


def test_unknown_table(tmp_path):
    path = recipe_with(tmp_path, "[schedul]\nlr = 1e-5")
    assert problems_of(path) == [f'{path}: [schedul]: unknown table (did you mean "schedule"?)']


@pytest.mark.parametrize(
    "table, message",
    [
        ('[schedule]\nbatch_size = "8"', "[schedule].batch_size: expected an integer, got '8'"),
        ("[schedule]\nbatch_size = 8.0", "[schedule].batch_size: expected an integer, got 8.0"),
        ("[schedule]\nbatch_size = true", "[schedule].batch_size: expected an integer, got True"),
        ('[schedule]\nlr = "fast"', "[schedule].lr: expected a number, got 'fast'"),
        (
            '[plugin]\nname = "ddp"\nmixed_precision = "fp32"\nflash_attn = "yes"',
            "[plugin].flash_attn: expected true or false, got 'yes'",
        ),
        ("[run]\nname = 7", "[run].name: expected a string, got 7"),
        ("[data]\ntrain = 3", "[data].train: expected a list, got int"),
        ('[data]\ntrain = ["a.jsonl", 3]', "[data].train[1]: expected a string, got 3"),
        ('[model]\npretrain = "m"\nlora = 8', "[model].lora: expected a table, got int"),
    ],
)
def test_wrong_type(tmp_path, table, message):
    path = recipe_with(tmp_path, table)
    assert problems_of(path) == [f"{path}: {message}"]


def test_a_table_written_as_a_key(tmp_path):
    path = write(tmp_path / "r.toml", 'loss = "log_sig"\n' + MINIMAL)
    assert problems_of(path) == [f"{path}: [loss]: expected a table, got str"]


@pytest.mark.parametrize(
    "table, message",
    [
        (
            '[plugin]\nname = "zero3"',
            "[plugin].name: 'zero3' is not one of 'ddp', 'zero2', 'zero2_cpu', 'gemini', 'gemini_auto', '3d' "
            '(did you mean "zero2"?)',
        ),
        (
            '[loss]\nname = "logsig"',
            "[loss].name: 'logsig' is not one of 'log_sig', 'log_exp' (did you mean \"log_sig\"?)",
        ),
        (
            '[plugin]\nname = "ddp"\nmixed_precision = "bf_16"',
            "[plugin].mixed_precision: 'bf_16' is not one of 'fp32', 'fp16', 'bf16' (did you mean \"bf16\"?)",
        ),
        (
            '[data]\ntrain = ["p.jsonl"]\nformat = "sharegpt"',
            "[data].format: 'sharegpt' is not one of 'colossalchat', 'pairwise', 'hh', 'rated', 'ultrafeedback', 'helpsteer2'",
        ),
    ],
)
def test_bad_enum_value(tmp_path, table, message):
    path = recipe_with(tmp_path, table)
    assert problems_of(path) == [f"{path}: {message}"]


def test_required_keys_are_reported_even_when_their_table_is_absent(tmp_path):
    path = write(tmp_path / "r.toml", "[run]\nname = 'x'\n")
    assert problems_of(path) == [
        f"{path}: [model].pretrain: required key is missing",
        f"{path}: [data].train: needs at least one file",  # (or data.sources: a cross-field check)
    ]


def test_a_required_key_of_the_wrong_type_is_reported_once(tmp_path):
    path = recipe_with(tmp_path, "[model]\npretrain = 3")
    assert problems_of(path) == [f"{path}: [model].pretrain: expected a string, got 3"]


def test_empty_training_list(tmp_path):
    path = recipe_with(tmp_path, "[data]\ntrain = []")
    assert problems_of(path) == [f"{path}: [data].train: needs at least one file"]


@pytest.mark.parametrize("plugin", ["gemini", "gemini_auto"])
def test_bad_combination_lora_with_gemini(tmp_path, plugin):
    path = recipe_with(tmp_path, f'[plugin]\nname = "{plugin}"\n[model.lora]\nr = 8')
    assert problems_of(path) == [
        f'{path}: [model.lora]: LoRA is not supported with plugin "{plugin}"; use zero2, ddp or 3d'
    ]


def test_lora_with_zero2_and_3d_is_fine(tmp_path):
    for plugin in ("zero2", "3d", "ddp"):
        path = recipe_with(tmp_path, f'[plugin]\nname = "{plugin}"\n[model.lora]\nr = 8')
        assert load_recipe(path).model.lora == LoraSection(r=8)


def test_bad_combination_gemini_auto_with_accumulation(tmp_path):
    path = recipe_with(tmp_path, '[plugin]\nname = "gemini_auto"\n[schedule]\naccumulation_steps = 2')
    assert problems_of(path) == [
        f'{path}: [schedule].accumulation_steps: plugin "gemini_auto" does not support gradient accumulation; '
        'use 1 or plugin "gemini"'
    ]
    ok = recipe_with(tmp_path, '[plugin]\nname = "gemini"\n[schedule]\naccumulation_steps = 2', name="ok.toml")
    assert load_recipe(ok).schedule.accumulation_steps == 2


@pytest.mark.parametrize("plugin", ["ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto"])
@pytest.mark.parametrize("key", ["tp", "pp", "sp"])
def test_bad_combination_model_parallel_without_3d(tmp_path, plugin, key):
    path = recipe_with(tmp_path, f'[plugin]\nname = "{plugin}"\n{key} = 2')
    assert problems_of(path) == [f'{path}: [plugin].{key}: only the "3d" plugin shards models; got {key}=2']


def test_zero_settings_outside_3d_name_their_own_key(tmp_path):
    path = recipe_with(tmp_path, '[plugin]\nname = "zero2"\nzero_stage = 1\nzero_cpu_offload = true')
    assert problems_of(path) == [
        f'{path}: [plugin].zero_stage: only applies to the "3d" plugin (zero2 is its own plugin)',
        f'{path}: [plugin].zero_cpu_offload: only applies to the "3d" plugin (zero2_cpu is its own plugin)',
    ]


def test_3d_cpu_offload_needs_zero(tmp_path):
    # ColossalChat passes cpu_offload only when zero_stage >= 1; HybridParallelPlugin ignores it otherwise.
    path = recipe_with(tmp_path, '[plugin]\nname = "3d"\nzero_cpu_offload = true')
    assert problems_of(path) == [
        f"{path}: [plugin].zero_cpu_offload: offloads ZeRO optimizer state, so it needs zero_stage 1 or 2"
    ]
    ok = recipe_with(tmp_path, '[plugin]\nname = "3d"\nzero_stage = 1\nzero_cpu_offload = true', name="ok.toml")
    assert load_recipe(ok).plugin.zero_cpu_offload is True


PIPELINE = (
    "[plugin].pp: pipeline parallelism is not supported for reward models (one forward reads rewards "
    "from the whole batch); use tp, sp or zero_stage to spread the model"
)


def test_3d_combinations(tmp_path):
    path = recipe_with(tmp_path, '[plugin]\nname = "3d"\npp = 2\nzero_stage = 2\nsp = 2\nsp_mode = "ring"')
    assert problems_of(path) == [
        f"{path}: {PIPELINE}",
        f"{path}: [plugin].zero_stage: ZeRO-2 cannot be combined with pipeline parallelism (pp > 1)",
        f'{path}: [plugin].sp_mode: "ring" sequence parallelism needs tp > 1',
    ]
    bad_stage = recipe_with(tmp_path, '[plugin]\nname = "3d"\nzero_stage = 3', name="stage.toml")
    assert problems_of(bad_stage) == [f"{bad_stage}: [plugin].zero_stage: must be 0, 1 or 2, got 3"]


@pytest.mark.parametrize("keep", [1, 0, -3])
def test_bad_combination_checkpoint_keep_below_two(tmp_path, keep):
    path = recipe_with(tmp_path, f"[checkpoint]\nkeep = {keep}")
    assert problems_of(path) == [
        f"{path}: [checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got {keep}"
    ]


@pytest.mark.parametrize(
    "table, message",
    [
        ("[data]\ntrain = ['p.jsonl']\nmax_length = 4", "[data].max_length: must be at least 8, got 4"),
        ("[schedule]\nbatch_size = 0", "[schedule].batch_size: must be at least 1, got 0"),
        ("[schedule]\nlr = 0.0", "[schedule].lr: must be positive, got 0.0"),
        ("[schedule]\nwarmup_steps = -1", "[schedule].warmup_steps: must be 0 or more, got -1"),
        ("[schedule]\nweight_decay = -0.1", "[schedule].weight_decay: must be 0 or more, got -0.1"),
        ("[schedule]\ngrad_clip = -1.0", "[schedule].grad_clip: must be 0 or more, got -1.0"),
        ("[schedule]\nmax_steps = 0", "[schedule].max_steps: must be at least 1 (leave it out to turn it off), got 0"),
        ("[checkpoint]\ninterval_seconds = 0", "[checkpoint].interval_seconds: must be positive"),
        ("[checkpoint]\nstop_budget_seconds = -30", "[checkpoint].stop_budget_seconds: must be positive, got -30"),
        ("[model.lora]\nr = 0", "[model.lora].r: must be at least 1, got 0"),
        (
            "[run]\ncollective_timeout_minutes = 0",
            "[run].collective_timeout_minutes: must be above 0 and at most 10,080 (a week), got 0",
        ),
        (
            "[run]\ncollective_timeout_minutes = 20000.0",
            "[run].collective_timeout_minutes: must be above 0 and at most 10,080 (a week), got 20000",
        ),
        (
            "[output]\nreward_stats_pairs = 0",
            "[output].reward_stats_pairs: must be at least 1, got 0 (output.reward_stats = false turns the "
            "statistics off)",
        ),
        (
            "[output]\nreward_stats_pairs = 2000000000",
            "[output].reward_stats_pairs: 2000000000 is beyond any real run (at most 1,000,000,000)",
        ),
        ("[model.lora]\ntarget_modules = []", "[model.lora].target_modules: needs at least one module name"),
    ],
)
def test_out_of_range(tmp_path, table, message):
    path = recipe_with(tmp_path, table)
    assert problems_of(path) == [f"{path}: {message}"]


def test_unreadable_toml_names_the_line(tmp_path):
    path = write(tmp_path / "r.toml", '[data]\ntrain = ["p.jsonl"]\n\n[schedule]\nlr =\n')
    [problem] = problems_of(path)
    assert re.fullmatch(rf"{re.escape(path)}: invalid TOML: .+ \(at line 5, column \d+\)", problem), problem


def test_a_table_declared_twice_names_the_line(tmp_path):
    path = write(tmp_path / "r.toml", "[run]\nname = 'a'\n\n[run]\nseed = 1\n")
    assert problems_of(path) == [f"{path}: invalid TOML: Cannot declare ('run',) twice (at line 4, column 5)"]


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "r.toml"
    path.write_bytes(b'[run]\nname = "\xff"\n')
    assert problems_of(str(path)) == [f"{path}: invalid TOML: not UTF-8 text (byte 14)"]


def test_missing_recipe_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert problems_of(path) == [f"{path}: file not found"]


def test_a_directory_is_not_a_recipe(tmp_path):
    assert problems_of(str(tmp_path)) == [f"{tmp_path}: is a directory, not a recipe file"]


def test_extends_a_missing_file(tmp_path):
    path = write(tmp_path / "r.toml", 'extends = "bases/gone.toml"\n' + MINIMAL)
    assert problems_of(path) == [f"{path}: extends: file not found: {tmp_path / 'bases' / 'gone.toml'}"]


def test_extends_not_a_string(tmp_path):
    path = write(tmp_path / "r.toml", "extends = ['a.toml']\n" + MINIMAL)
    assert problems_of(path) == [f"{path}: extends: expected a file name (string), got list"]


def test_extends_cycle(tmp_path):
    a = write(tmp_path / "a.toml", 'extends = "sub/b.toml"\n' + MINIMAL)
    b = write(tmp_path / "sub" / "b.toml", 'extends = "../a.toml"\n')
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    assert problems_of(a) == [f"{tmp_path / 'a.toml'}: extends: forms a cycle ({real_a} -> {real_b} -> {real_a})"]


def test_extends_itself(tmp_path):
    a = write(tmp_path / "a.toml", 'extends = "a.toml"\n' + MINIMAL)
    real = os.path.realpath(a)
    assert problems_of(a) == [f"{a}: extends: forms a cycle ({real} -> {real})"]


def test_an_error_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base" / "base.toml", "[schedule]\nbatchsize = 8\n\n[checkpoint]\nkeep = 1\n")
    child = write(tmp_path / "child.toml", 'extends = "base/base.toml"\n' + MINIMAL + "\n[log]\nprogres = 'off'\n")
    assert problems_of(child) == [
        f'{base}: [schedule].batchsize: unknown key (did you mean "batch_size"?)',
        f'{child}: [log].progres: unknown key (did you mean "progress"?)',
        f"{base}: [checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got 1",
    ]


# --------------------------------------------------------------- one pass, all problems


def test_three_mistakes_give_three_lines(tmp_path):
    path = recipe_with(tmp_path, '[schedule]\nbatch_size = "8"\nlerning_rate = 1e-5\n\n[loss]\nname = "hinge"')
    assert problems_of(path) == [
        f"{path}: [schedule].batch_size: expected an integer, got '8'",
        f"{path}: [schedule].lerning_rate: unknown key",
        f"{path}: [loss].name: 'hinge' is not one of 'log_sig', 'log_exp'",
    ]


def test_decoding_and_cross_field_mistakes_come_in_the_same_pass(tmp_path):
    path = recipe_with(
        tmp_path,
        '[plugin]\nname = "gemini_auto"\n[schedule]\naccumulation_steps = 2\n'
        "[checkpoint]\nkeep = 1\n[log]\ninterval = 5",
    )
    assert problems_of(path) == [
        f'{path}: [log].interval: unknown key (did you mean "interval_steps"?)',
        f"{path}: [checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got 1",
        f'{path}: [schedule].accumulation_steps: plugin "gemini_auto" does not support gradient accumulation; '
        'use 1 or plugin "gemini"',
    ]


def test_cross_field_checks_skip_a_table_that_failed_to_decode(tmp_path):
    # "3D" is not a plugin name, so the plugin section falls back to its defaults (ddp);
    # complaining that tp = 2 needs "3d" would send the user after the wrong fix.
    path = recipe_with(tmp_path, '[plugin]\nname = "3D"\ntp = 2')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: [plugin].name: '3D' is not one of")


def test_every_problem_names_the_file_and_a_full_key_path(tmp_path):
    path = recipe_with(
        tmp_path,
        '[schedule]\nbatch_size = "x"\n[checkpoint]\nkeep = 1\n[model.lora]\nr = "8"\n'
        '[plugin]\nname = "ddp"\nmixed_precision = "fp32"\ntp = 2\n[eval]\ninterval_steps = 0',
    )
    problems = problems_of(path)
    assert len(problems) == 5
    for problem in problems:
        assert re.match(rf"{re.escape(path)}: \[[a-z.]+\](\.[a-z_]+)?: ", problem), problem


# ------------------------------------------------------------------- --set overrides

# A recipe on which every key below can be given its new value without breaking a
# cross-field rule: 3d (so tp/pp/sp/zero_stage are allowed), all_to_all (so sp > 1
# needs no tp), zero_stage 0 (so switching to another plugin stays valid).
SET_BASE = """
[data]
train = ["pairs.jsonl"]

[model]
pretrain = "model"

[plugin]
name = "3d"
sp_mode = "all_to_all"
"""
# Keys whose new value needs a companion override to stay valid.
COMPANIONS = {
    "plugin.zero_cpu_offload": ["plugin.zero_stage=1"],
    "data.eval_split": ["data.eval=[]"],
    **{f"data.{key}": ["data.format=rated"] for key in ("pair_rule", "rating", "pair_seed")},
    "data.sources": ["data.train=[]"],
    "data.epoch_pairs": ["data.train=[]", 'data.sources=[{name = "a", files = ["a.jsonl"]}]'],
}
# Keys whose only valid value is the default (reward models have no pipeline parallelism).
ONLY_DEFAULT = {"plugin.pp": ("1", 1)}


def _current(base_recipe, key):
    if key.startswith("model.lora."):
        return getattr(LoraSection(), key.rpartition(".")[2])
    return get(base_recipe, key)


def valid_override(key, tp, f, current, cwd: str):
    """(text after '=', the value the Recipe must then hold) for a valid new value of ``key``."""
    is_path = f.metadata.get("path")
    if get_origin(tp) is Literal:
        value = next(a for a in get_args(tp) if a != current)
        return value, value
    if tp is bool:
        return str(not current).lower(), not current
    if tp is int:
        value = 2 if current in (None, 0, 1) else current + 1
        return str(value), value
    if tp is float:
        value = current * 2 if current else 0.5
        return repr(value), value
    if tp is str:
        if is_path == "or-name":
            # A model or tokenizer: a local directory when it exists, else kept as a hub id.
            os.makedirs(os.path.join(cwd, "some", "dir"), exist_ok=True)
            return "some/dir", os.path.join(cwd, "some", "dir")
        if is_path:
            return "some/dir", os.path.join(cwd, "some", "dir")
        return "my-run", "my-run"
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if get_origin(item) is Literal:
            return get_args(item)[-1], (get_args(item)[-1],)
        if key == "log.mlflow.tags":
            return "team=rm", ("team=rm",)
        if dataclasses.is_dataclass(item):  # an array of tables: [[data.sources]]
            return '[{name = "b", files = ["more.jsonl"]}]', (item(name="b", files=(os.path.join(cwd, "more.jsonl"),)),)
        if is_path:
            return "more.jsonl", (os.path.join(cwd, "more.jsonl"),)
        return "q_proj", ("q_proj",)
    raise AssertionError(f"no valid value for {key} of type {tp}")


@pytest.fixture
def set_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write(tmp_path / "base.toml", SET_BASE)


@pytest.mark.parametrize("key", KEY_PATHS)
def test_set_every_key_to_a_valid_value(set_base, tmp_path, key):
    _, tp, f = next(k for k in KEYS if k[0] == key)
    base = load_recipe(set_base)
    current = _current(base, key)
    if key in ONLY_DEFAULT:
        text, expected = ONLY_DEFAULT[key]
    else:
        text, expected = valid_override(key, tp, f, current, str(tmp_path))
        assert expected != current
    recipe = load_recipe(set_base, overrides=[*COMPANIONS.get(key, []), f"{key}={text}"])
    got = get(recipe, key)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(got, tuple):  # of strings, or of tables (an array of tables)
        assert all(type(v) is str for v in got) or all(dataclasses.is_dataclass(v) for v in got)
    # Nothing else moved (apart from a companion override and the lora table it creates).
    for other, _, _ in KEYS:
        if other != key and not other.startswith("model.lora.") and f"{other}=" not in str(COMPANIONS.get(key)):
            assert get(recipe, other) == get(base, other), other


def wrong_override(tp):
    """(text after '=', the decoding message) for a wrongly typed value."""
    if get_origin(tp) is Literal:
        allowed = ", ".join(map(repr, get_args(tp)))
        return "7", f"7 is not one of {allowed}"
    if tp is bool:
        return "1", "expected true or false, got 1"
    if tp is int:
        return "1.5", "expected an integer, got 1.5"
    if tp is float:
        return "fast", "expected a number, got 'fast'"
    if tp is str:
        return "[1, 2]", "expected a string, got [1, 2]"
    if get_origin(tp) is tuple:
        return "3", "expected a list, got int"
    raise AssertionError(tp)


@pytest.mark.parametrize("key", KEY_PATHS)
def test_set_every_key_to_a_wrongly_typed_value_is_rejected(set_base, key):
    _, tp, _ = next(k for k in KEYS if k[0] == key)
    text, message = wrong_override(tp)
    assert problems_of(set_base, [f"{key}={text}"]) == [f"{set_base}: --set {key}={text}: {label(key)}: {message}"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("schedule.batchsize=8", 'unknown key schedule.batchsize (did you mean "batch_size"?)'),
        ("model.lora.alpah=4", 'unknown key model.lora.alpah (did you mean "alpha"?)'),
        ("schedul.lr=1e-5", 'unknown key schedul (did you mean "schedule"?)'),
        ("schedule.lerning_rate=1e-5", "unknown key schedule.lerning_rate"),
        ("schedule=3", "schedule is a table; set one of its keys"),
        ("model.lora=3", "model.lora is a table; set one of its keys (or true/false to turn it on or off)"),
        ("schedule.lr.peak=1", "schedule.lr is not a table"),
    ],
)
def test_set_unknown_paths_are_rejected(set_base, override, message):
    assert problems_of(set_base, [override]) == [f"{set_base}: --set {override}: {message}"]


def test_set_without_equals(set_base):
    assert problems_of(set_base, ["schedule.lr"]) == [
        f"{set_base}: --set schedule.lr: expected KEY=VALUE, e.g. --set schedule.lr=1e-5"
    ]


def test_set_problems_and_file_problems_come_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe_with(tmp_path, "[checkpoint]\nkeep = 1")
    assert problems_of(path, ["schedule.batchsize=8", "schedule.lr=fast"]) == [
        f'{path}: --set schedule.batchsize=8: unknown key schedule.batchsize (did you mean "batch_size"?)',
        f"{path}: --set schedule.lr=fast: [schedule].lr: expected a number, got 'fast'",
        f"{path}: [checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got 1",
    ]


@pytest.mark.parametrize("key", ["data.train", "data.eval"])
def test_set_list_keys_take_one_string_or_a_toml_list(set_base, tmp_path, key):
    one = load_recipe(set_base, overrides=[f"{key}=x.jsonl"])
    assert get(one, key) == (str(tmp_path / "x.jsonl"),)
    many = load_recipe(set_base, overrides=[f'{key}=["x.jsonl", "/abs/y.jsonl", "s3://b/z.jsonl"]'])
    assert get(many, key) == (str(tmp_path / "x.jsonl"), "/abs/y.jsonl", "s3://b/z.jsonl")


def test_set_values_are_typed_by_the_schema(set_base):
    recipe = load_recipe(
        set_base,
        overrides=[
            "schedule.lr=1",
            "schedule.grad_clip=2",
            'run.name="123"',
            'model.lora.target_modules=["q_proj", "v_proj"]',
        ],
    )
    assert recipe.schedule.lr == 1.0 and type(recipe.schedule.lr) is float
    assert recipe.schedule.grad_clip == 2.0 and type(recipe.schedule.grad_clip) is float
    assert recipe.run.name == "123"
    assert recipe.model.lora.target_modules == ("q_proj", "v_proj")


def test_set_a_lora_key_turns_lora_on_with_defaults(set_base):
    assert load_recipe(set_base).model.lora is None
    assert load_recipe(set_base, overrides=["model.lora.r=4"]).model.lora == LoraSection(r=4)


def test_set_applies_last_and_the_later_one_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe_with(tmp_path, "[schedule]\nlr = 1e-4")
    recipe = load_recipe(path, overrides=["schedule.lr=1e-5", "schedule.lr=3e-5"])
    assert recipe.schedule.lr == 3e-5


def test_set_paths_resolve_against_the_working_directory_and_urls_stay(tmp_path, monkeypatch):
    (tmp_path / "cwd" / "weights").mkdir(parents=True)
    (tmp_path / "recipes" / "tok").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    path = recipe_with(tmp_path / "recipes", '[model]\npretrain = "m"\ntokenizer = "tok"')
    recipe = load_recipe(path, overrides=["model.pretrain=weights", "run.state=s3://bucket/run"])
    assert recipe.model.pretrain == str(tmp_path / "cwd" / "weights")
    assert recipe.model.tokenizer == str(tmp_path / "recipes" / "tok")
    assert recipe.run.state == "s3://bucket/run"


def test_set_a_path_key_to_a_non_string_is_a_problem_not_a_crash(set_base):
    for override, message in (
        ("model.pretrain=3", "[model].pretrain: expected a string, got 3"),
        ("run.state=true", "[run].state: expected a string, got True"),
    ):
        assert problems_of(set_base, [override]) == [f"{set_base}: --set {override}: {message}"]


# ------------------------------------------------------------------------ extends


def test_extends_merges_tables_key_by_key_and_replaces_scalars_and_lists(tmp_path):
    # Model names resolve to local directories only when those exist (else: hub ids).
    (tmp_path / "models" / "child").mkdir(parents=True)
    (tmp_path / "base" / "models" / "m").mkdir(parents=True)
    (tmp_path / "base" / "tok").mkdir(parents=True)
    write(
        tmp_path / "base" / "base.toml",
        """
[data]
train = ["data/a.jsonl", "data/b.jsonl"]
eval = ["data/e.jsonl"]
max_length = 1024

[model]
pretrain = "models/m"
tokenizer = "tok"

[model.lora]
r = 4
alpha = 8.0

[schedule]
lr = 1e-5
batch_size = 4
""",
    )
    child = write(
        tmp_path / "child.toml",
        """
extends = "base/base.toml"

[data]
train = ["mine.jsonl"]

[model]
pretrain = "models/child"

[model.lora]
alpha = 32.0

[schedule]
lr = 2e-5

[plugin]
mixed_precision = "fp32"
""",
    )
    recipe = load_recipe(child)
    assert recipe.data.train == (str(tmp_path / "mine.jsonl"),)  # a list replaces, never appends
    assert recipe.data.eval == (str(tmp_path / "base" / "data" / "e.jsonl"),)  # resolved against base.toml
    assert recipe.data.max_length == 1024
    assert recipe.model.pretrain == str(tmp_path / "models" / "child")  # resolved against child.toml
    assert recipe.model.tokenizer == str(tmp_path / "base" / "tok")
    assert recipe.model.lora == LoraSection(r=4, alpha=32.0)  # nested tables merge too
    assert (recipe.schedule.lr, recipe.schedule.batch_size) == (2e-5, 4)
    assert recipe.plugin.mixed_precision == "fp32"


def test_extends_chains_and_set_applies_on_top(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a" / "root.toml", MINIMAL + "\n[schedule]\nbatch_size = 2\nlr = 1e-3\nmax_epochs = 5\n")
    write(tmp_path / "b" / "mid.toml", 'extends = "../a/root.toml"\n[schedule]\nlr = 1e-4\n')
    leaf = write(
        tmp_path / "c" / "leaf.toml", f'extends = "{tmp_path / "b" / "mid.toml"}"\n[schedule]\nmax_epochs = 3\n'
    )
    recipe = load_recipe(leaf, overrides=["schedule.batch_size=6"])
    assert (recipe.schedule.batch_size, recipe.schedule.lr, recipe.schedule.max_epochs) == (6, 1e-4, 3)
    assert recipe.data.train == (str(tmp_path / "a" / "pairs.jsonl"),)


def test_extends_a_base_with_a_syntax_error_names_the_base_and_line(tmp_path):
    base = write(tmp_path / "base.toml", "[schedule]\nlr = = 1\n")
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n' + MINIMAL)
    [problem] = problems_of(child)
    assert re.fullmatch(rf"{re.escape(base)}: invalid TOML: .+ \(at line 2, column \d+\)", problem), problem


# --------------------------------------------------------------- environment checks


def recipe_for(tmp_path, plugin_table: str) -> Recipe:
    return load_recipe(recipe_with(tmp_path, plugin_table))


@pytest.mark.parametrize("plugin", sorted(CUDA_PLUGINS))
def test_a_cuda_plugin_on_a_cpu_machine_suggests_ddp(tmp_path, plugin):
    recipe = recipe_for(tmp_path, f'[plugin]\nname = "{plugin}"\nmixed_precision = "bf16"')
    assert environment_problems(recipe, World(size=1, cuda=False)) == [
        f'[plugin].name: "{plugin}" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
    ]
    assert environment_problems(recipe, World(size=1, cuda=True)) == []


@pytest.mark.parametrize(
    "plugin, world, message",
    [
        ("tp = 4", 6, "[plugin]: tp*pp*sp = 4 does not divide the world size 6"),
        ("tp = 2\nsp = 3\nsp_mode = 'all_to_all'", 8, "[plugin]: tp*pp*sp = 6 does not divide the world size 8"),
        ("tp = 4", 2, "[plugin]: tp*pp*sp = 4 does not divide the world size 2"),
        (
            "tp = 2\nsp = 2\nsp_mode = 'split_gather'",
            3,
            '[plugin]: tp*pp (sp_mode "split_gather" runs inside the tp ranks) = 2 does not divide the world size 3',
        ),
    ],
)
def test_model_parallel_sizes_must_divide_the_world(tmp_path, plugin, world, message):
    recipe = recipe_for(tmp_path, f'[plugin]\nname = "3d"\n{plugin}')
    assert environment_problems(recipe, World(size=world, cuda=True)) == [message]


def test_model_parallel_sizes_that_divide_the_world_are_fine(tmp_path):
    for plugin, world in (
        ("tp = 4", 8),
        ("tp = 2\nsp = 2\nsp_mode = 'all_to_all'", 4),
        ("tp = 2\nsp = 2\nsp_mode = 'split_gather'", 2),
        ("", 3),
    ):
        recipe = recipe_for(tmp_path, f'[plugin]\nname = "3d"\n{plugin}')
        assert environment_problems(recipe, World(size=world, cuda=True)) == [], plugin


def test_split_gather_sequence_parallelism_shares_the_tp_ranks_in_the_plan(tmp_path):
    # HybridParallelPlugin sets its sp size to 1 for split_gather/ring: dp = world / (tp * pp).
    split = recipe_for(tmp_path, '[plugin]\nname = "3d"\ntp = 2\nsp = 2\nsp_mode = "split_gather"')
    assert make_plan(split, world_size=8, num_pairs=640).dp_size == 4
    a2a = recipe_for(tmp_path, '[plugin]\nname = "3d"\ntp = 2\nsp = 2\nsp_mode = "all_to_all"')
    assert make_plan(a2a, world_size=8, num_pairs=640).dp_size == 2


def test_environment_problems_is_pure(tmp_path):
    recipe = recipe_for(tmp_path, '[plugin]\nname = "zero2"')
    world = World(size=3, cuda=False)
    assert environment_problems(recipe, world) == environment_problems(recipe, world)
    assert recipe == recipe_for(tmp_path, '[plugin]\nname = "zero2"')


# ----------------------------------------------------------------- shipped recipes


def test_the_shipped_recipes_are_the_expected_ones():
    names = {os.path.basename(p) for p in SHIPPED}
    assert {"quickstart.toml", *GPU_RECIPES} <= names
    readme = (REPO / "recipes" / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, f"recipes/README.md does not list {name}"


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_recipe_loads_and_passes_static_checks(path):
    recipe = load_recipe(path)
    assert static_problems(recipe) == []
    plan = make_plan(recipe, world_size=8 if recipe.plugin.name != "ddp" else 1, num_pairs=1000)
    assert plan.total_steps >= 1


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_recipe_environment(path):
    recipe = load_recipe(path)
    if recipe.plugin.name in CUDA_PLUGINS:
        needs_cuda = (
            f'[plugin].name: "{recipe.plugin.name}" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'
        )
        assert environment_problems(recipe, World(size=8, cuda=True)) == []
        assert environment_problems(recipe, World(size=8, cuda=False)) == [needs_cuda]
        # One process on a laptop: the CUDA error comes first (tp = 2 also cannot split one process).
        assert environment_problems(recipe, World(size=1, cuda=False))[0] == needs_cuda
    else:
        assert environment_problems(recipe, World(size=1, cuda=False)) == []
        for url in filter(None, (*recipe.data.train, *recipe.data.eval, recipe.model.pretrain, recipe.model.tokenizer)):
            assert os.path.exists(url), f"{path} points at a missing file: {url}"


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_llama2_recipes_follow_colossalchat_train_rm(name):
    recipe = load_recipe(str(REPO / "recipes" / name))
    s, p = recipe.schedule, recipe.plugin
    assert recipe.model.pretrain == "/models/Llama-2-7b-hf"
    assert recipe.data.train == ("/data/preference_train.jsonl",)
    assert (recipe.data.max_length, recipe.loss.name, p.mixed_precision) == (2048, "log_sig", "bf16")
    assert (s.batch_size, s.lr, s.grad_clip, s.accumulation_steps, s.max_epochs) == (8, 5e-6, 1.0, 1, 1)
    assert p.grad_checkpoint and p.flash_attn
    assert "change" in (REPO / "recipes" / name).read_text().lower()


def test_llama2_zero2_and_3d_plugin_calls():
    zero2 = load_recipe(str(REPO / "recipes" / "llama2-7b-zero2.toml"))
    assert plugin_call(zero2.plugin, zero2.schedule) == (
        "LowLevelZeroPlugin",
        {"stage": 2, "precision": "bf16", "initial_scale": 2**16, "max_norm": 1.0, "cpu_offload": False},
    )
    three_d = load_recipe(str(REPO / "recipes" / "llama2-7b-3d.toml"))
    name, args = plugin_call(three_d.plugin, three_d.schedule)
    assert name == "HybridParallelPlugin"
    assert (args["tp_size"], args["pp_size"], args["sp_size"]) == (2, 1, 1)
    assert args["enable_flash_attention"] is True and args["enable_sequence_parallelism"] is False
    assert make_plan(three_d, world_size=8, num_pairs=6400).dp_size == 4


def test_gemini_and_zero_inside_3d_refuse_fp32(tmp_path):
    from rmrun.recipe import RecipeError, load_recipe

    path = tmp_path / "r.toml"
    path.write_text(
        '[data]\ntrain = ["x.jsonl"]\n[model]\npretrain = "m"\n[plugin]\nname = "gemini"\nmixed_precision = "fp32"\n'
    )
    with pytest.raises(RecipeError, match=r'\[plugin\]\.mixed_precision: plugin "gemini" trains in "bf16" or "fp16"'):
        load_recipe(str(path))
    path.write_text(
        '[data]\ntrain = ["x.jsonl"]\n[model]\npretrain = "m"\n[plugin]\nname = "3d"\ntp = 2\nzero_stage = 1\nmixed_precision = "fp32"\n'
    )
    with pytest.raises(RecipeError, match=r'ZeRO inside the "3d" plugin needs "bf16" or "fp16"'):
        load_recipe(str(path))


def test_a_model_name_that_is_not_a_local_directory_stays_a_hub_id(tmp_path, monkeypatch):
    from rmrun.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.toml"
    path.write_text(
        '[data]\ntrain = ["x.jsonl"]\n[model]\npretrain = "meta-llama/Llama-2-7b-hf"\n[plugin]\nmixed_precision = "fp32"\n'
    )
    assert load_recipe(str(path)).model.pretrain == "meta-llama/Llama-2-7b-hf"
    (tmp_path / "meta-llama" / "Llama-2-7b-hf").mkdir(parents=True)
    assert load_recipe(str(path)).model.pretrain == str(tmp_path / "meta-llama" / "Llama-2-7b-hf")
