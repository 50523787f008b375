"""Recipe mistakes that used to slip past `rmrun check` or hide behind each other: range
errors in the same pass as unknown keys, warmup longer than the run, eval files that are
training files, an export inside the state root, a UTF-8 BOM, broken chat templates, LoRA
targets that match no layer, directories and globs as data files, and the fresh-run hint.

In-process: ``load_recipe`` for the recipe's own problems, ``preflight`` (with the world
given) for those that need the files it names.
"""

from __future__ import annotations

import json
import os

import pytest

from rmrun.recipe import RecipeError, World, load_recipe, make_plan
from rmrun.recipe.backbone import LORA_TARGETS, lora_target_problem
from rmrun.recipe.schema import (
    COMPRESSION_SUFFIXES,
    DATA_FILE_SUFFIXES,
    LoraSection,
    ModelSection,
    fresh_run_hint,
    is_data_file_name,
)
from rmrun.run.preflight import preflight
from tests.helpers import QUICKSTART, REPO, TRAIN_DATA, head_lines, recipe_problems, small_recipe

CPU = World(size=1, cuda=False)


def child(tmp_path, base: str, text: str, *, name: str = "child.toml") -> str:
    """A recipe extending ``base`` with ``text`` (TOML tables) on top."""
    path = tmp_path / name
    path.write_text(f'extends = "{base}"\n{text}')
    return str(path)


def preflight_problems(path: str, *, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        preflight(path, overrides=overrides, world=CPU)
    return info.value.problems


# ------------------------------------------------- 1. every problem in one pass


def test_range_errors_come_in_the_same_pass_as_unknown_keys_and_type_errors(tmp_path):
    recipe = small_recipe(
        tmp_path,
        extra="[schedule]\nlerning_rate = 1e-5\nlr = -1e-5\nbatch_size = 0\n"
        "[checkpoint]\nkep = 3\nstop_budget_seconds = 0\n"
        '[eval]\ninterval_steps = "10"\n',
    )
    assert recipe_problems(recipe) == [
        f"{recipe}: [schedule].lerning_rate: unknown key",
        f'{recipe}: [checkpoint].kep: unknown key (did you mean "keep"?)',
        f"{recipe}: [eval].interval_steps: expected an integer, got '10'",
        f"{recipe}: [schedule].batch_size: must be at least 1, got 0",
        f"{recipe}: [schedule].lr: must be positive, got -1e-05",
        f"{recipe}: [checkpoint].stop_budget_seconds: must be positive, got 0",
    ]


def test_a_set_with_an_unknown_key_hides_no_range_error_of_its_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = small_recipe(tmp_path)
    assert recipe_problems(recipe, overrides=["schedule.lerning_rate=1", "schedule.batch_size=0"]) == [
        f"{recipe}: --set schedule.lerning_rate=1: unknown key schedule.lerning_rate",
        f"{recipe}: --set schedule.batch_size=0: [schedule].batch_size: must be at least 1, got 0",
    ]


def test_cross_field_checks_still_skip_a_table_with_an_unknown_key(tmp_path):
    # "nme" may be the plugin's name misspelt: "tp needs the 3d plugin" would be a false alarm.
    recipe = small_recipe(tmp_path, extra='[plugin]\nnme = "3d"\ntp = 2\nmixed_precision = "fp32"\n')
    assert recipe_problems(recipe) == [f'{recipe}: [plugin].nme: unknown key (did you mean "name"?)']


def test_a_key_that_failed_to_decode_is_not_range_checked(tmp_path):
    # data.train failed (a number in the list): "needs at least one file" would be a false alarm.
    recipe = small_recipe(tmp_path)
    assert recipe_problems(recipe, overrides=["data.train=[3]"]) == [
        f"{recipe}: --set data.train=[3]: [data].train[0]: expected a string, got 3"
    ]


# ---------------------------------------------------------- 2. warmup, eval, export


def test_warmup_longer_than_max_steps_is_refused_at_load(tmp_path):
    recipe = small_recipe(tmp_path, extra="[schedule]\nmax_steps = 10\nwarmup_steps = 20\n")
    assert recipe_problems(recipe) == [
        f"{recipe}: [schedule].warmup_steps: 20 is more than the run's optimizer steps (at most max_steps = 10); "
        "use at most 10, or leave it out for 2.5% of the steps"
    ]


def test_warmup_longer_than_the_run_is_refused_once_the_pairs_are_counted(tmp_path):
    # 64 pairs, 16 per step (quickstart's batch_size), 2 epochs: 8 optimizer steps.
    recipe = small_recipe(tmp_path, extra="[schedule]\nwarmup_steps = 9\n")
    assert preflight_problems(recipe) == [
        f"{recipe}: [schedule].warmup_steps: 9 is more than the run's 8 optimizer steps (4 per epoch x 2 "
        "epoch(s), 64 pairs at 16 per step); use at most 8, or leave it out for 2.5% of the steps"
    ]
    loaded, _, pairs = preflight(recipe, overrides=["schedule.warmup_steps=8"], world=CPU)
    assert make_plan(loaded, world_size=1, num_pairs=pairs).warmup_steps == 8
    with pytest.raises(RecipeError, match=r"warmup_steps: 9 is more than the run's 8 optimizer steps \(4 per epoch"):
        preflight(recipe, overrides=["schedule.max_steps=100"], world=CPU)


def test_an_eval_file_that_is_a_training_file_is_refused(tmp_path):
    base = small_recipe(tmp_path)
    os.symlink(tmp_path / "train.jsonl", tmp_path / "link.jsonl")
    for spelling, resolved in (
        ("sub/../train.jsonl", tmp_path / "train.jsonl"),
        ("link.jsonl", tmp_path / "link.jsonl"),
    ):
        recipe = child(tmp_path, base, f'[data]\neval = ["eval.jsonl", "{spelling}"]\n')
        assert recipe_problems(recipe) == [
            f"{recipe}: [data].eval: {resolved} is also a training file ([data].train); evaluate on held-out pairs"
        ]


@pytest.mark.parametrize(
    "out, where",
    [("state/models", "is inside"), ("state/export/x", "is inside"), ("state", "is")],
)
def test_an_export_inside_the_state_root_is_refused(tmp_path, out, where):
    recipe = small_recipe(tmp_path)
    state, text = tmp_path / "state", f"output.dir={tmp_path / out}"
    assert recipe_problems(recipe, overrides=[text]) == [
        f"{recipe}: --set {text}: [output].dir: {tmp_path / out} {where} the state root {state} ([run].state), "
        f"whose folders rmrun manages; export elsewhere, or leave output.dir out for {state}/export"
    ]


@pytest.mark.parametrize("out", ["state/export", "state/export/", "export", "state-export"])
def test_the_default_export_place_and_places_outside_the_state_root_load(tmp_path, out):
    recipe = small_recipe(tmp_path)
    assert load_recipe(recipe, overrides=[f"output.dir={tmp_path / out}"]).output.dir.startswith(str(tmp_path))


def test_an_export_inside_a_remote_or_default_state_root_is_refused(tmp_path, monkeypatch):
    recipe = small_recipe(tmp_path)
    remote = ["run.state=memory://runs/a", "output.dir=memory://runs/a/out"]
    [problem] = recipe_problems(recipe, overrides=remote)
    assert problem.endswith(
        "[output].dir: memory://runs/a/out is inside the state root memory://runs/a ([run].state), "
        "whose folders rmrun manages; export elsewhere, or leave output.dir out for "
        "memory://runs/a/export"
    )
    assert load_recipe(recipe, overrides=["run.state=memory://runs/a", "output.dir=memory://runs/ab"])
    # No run.state: the state root is state/<run.name> in the working directory.
    monkeypatch.chdir(tmp_path)
    text = (tmp_path / "recipe.toml").read_text().replace(f'state = "{tmp_path / "state"}"', 'name = "r1"')
    bare = tmp_path / "bare.toml"
    bare.write_text(text + '[output]\ndir = "state/r1/out"\n')
    assert recipe_problems(str(bare)) == [
        f"{bare}: [output].dir: {tmp_path}/state/r1/out is inside the state root state/r1 ([run].state), "
        "whose folders rmrun manages; export elsewhere, or leave output.dir out for state/r1/export"
    ]


# ------------------------------------------------------------------------ 3. a BOM


def test_a_recipe_starting_with_a_utf8_bom_loads(tmp_path):
    recipe = small_recipe(tmp_path)
    with_bom = tmp_path / "bom.toml"
    with_bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "recipe.toml").read_bytes())
    assert load_recipe(str(with_bom)) == load_recipe(recipe)
    broken = tmp_path / "broken.toml"
    broken.write_bytes(b'\xef\xbb\xbf[run]\nname = "\xff"\n')
    assert recipe_problems(str(broken)) == [f"{broken}: invalid TOML: not UTF-8 text (byte 17)"]


# ---------------------------------------------------------------- 4. chat templates

UNCLOSED_FOR = (
    "invalid Jinja chat template (template line 3): Unexpected end of template. Jinja was looking for the "
    "following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'."
)


def test_a_broken_inline_chat_template_is_refused_at_check(tmp_path):
    base = small_recipe(tmp_path)
    recipe = child(tmp_path, base, '[data]\nchat_template = """{{ bos_token }}\n{% for m in messages %}\n{{ m }}"""\n')
    assert preflight_problems(recipe) == [f"{recipe}: [data].chat_template: {UNCLOSED_FOR}"]


def test_a_broken_chat_template_file_is_refused_at_check(tmp_path):
    base = small_recipe(tmp_path)
    jinja = tmp_path / "chat.jinja"
    jinja.write_text("{{ bos_token }}\n{% for m in messages %}\n{{ m['content'] }}\n")
    recipe = child(tmp_path, base, '[data]\nchat_template = "chat.jinja"\n')
    assert preflight_problems(recipe) == [f"{recipe}: [data].chat_template: {jinja}: {UNCLOSED_FOR}"]
    colossal = tmp_path / "chat.json"
    colossal.write_text(json.dumps({"chat_template": "{{ m | nofilter }}", "end_of_assistant": "</s>"}))
    recipe = child(tmp_path, base, '[data]\nchat_template = "chat.json"\n', name="json.toml")
    with pytest.raises(
        RecipeError,
        match=r"\[data\]\.chat_template: .*chat\.json: invalid Jinja chat template "
        r"\(template line 1\): No filter named 'nofilter'\.$",
    ):
        preflight(recipe, overrides=(), world=CPU)


def test_a_good_chat_template_file_passes_check(tmp_path):
    base = small_recipe(tmp_path)
    template = os.path.join(REPO, "tests", "data", "colossalchat_template_tiny-llama.json")
    recipe = child(tmp_path, base, f'[data]\nchat_template = "{template}"\n')
    preflight(recipe, overrides=(), world=CPU)


TEMPLATES = [
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | tojson }}\n{% endfor %}",
    "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
    "{% else %}{{ m.content }}{% continue %}{% endif %}{% endfor %}",
    "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ raise_exception('x') }}{% endfor %}",
    "{{ strftime_now('%Y') }}",
    "{% for m in messages %}{{ m }}",
    "a\nb\n{{ x | nofilter }}",
    "{% generation %}x",
    "{{ }}",
    "{% if %}",
]


@pytest.mark.parametrize("jinja", TEMPLATES)
def test_the_torch_free_compiler_agrees_with_transformers(jinja):
    """check compiles without transformers (it imports torch); a run compiles with it."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from rmrun.data.template import compile_jinja

    def outcome(compile_):
        try:
            compile_(jinja)
        except jinja2.TemplateSyntaxError as error:
            return type(error).__name__, error.lineno, error.message
        return "ok"

    assert outcome(compile_jinja) == outcome(_compile_jinja_template)


# ---------------------------------------------------------------- 5. LoRA targets


def test_lora_targets_that_match_no_layer_are_refused_at_check(tmp_path):
    base = small_recipe(tmp_path)
    recipe = child(tmp_path, base, '[model.lora]\ntarget_modules = ["q_proj", "self_attn.v_proj", "qproj", "mlp"]\n')
    assert preflight_problems(recipe) == [
        f"{recipe}: [model.lora].target_modules: 'qproj', 'mlp' match no layer of a llama model; its layers are "
        "down_proj, embed_tokens, gate_proj, k_proj, o_proj, q_proj, score, up_proj, v_proj"
    ]
    preflight(recipe, overrides=['model.lora.target_modules=["q_proj", "self_attn.v_proj"]'], world=CPU)


def test_lora_targets_are_not_judged_where_the_names_are_unknown(tmp_path):
    nothing = LoraSection(target_modules=("nothing",))

    def model(model_type: str, *, lora: LoraSection | None = nothing, **config) -> ModelSection:
        directory = tmp_path / model_type
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
        return ModelSection(pretrain=str(directory), lora=lora)

    assert lora_target_problem(model("gpt_bigcode")) is None  # a type not in the table
    assert lora_target_problem(model("llama", auto_map={"AutoModel": "x.Y"})) is None  # its own code
    assert lora_target_problem(model("llama", lora=None)) is None
    assert lora_target_problem(ModelSection(pretrain="org/hub-id", lora=LoraSection())) is None
    assert lora_target_problem(model("bert")) == (
        "[model.lora].target_modules: 'nothing' matches no layer of a bert model; its layers are classifier, "
        "dense, key, position_embeddings, query, token_type_embeddings, value, word_embeddings"
    )


# Configs that add layers to a model type (LORA_TARGETS holds them all).
VARIANTS = {
    "opt": {"word_embed_proj_dim": 384},
    "gpt2": {"add_cross_attention": True},
    "deberta": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "embedding_size": 32},
    "deberta-v2": {
        "relative_attention": True,
        "share_att_key": False,
        "pos_att_type": ["p2c", "c2p"],
        "conv_kernel_size": 3,
        "embedding_size": 32,
    },
}
SMALL = {"num_hidden_layers": 2, "num_experts": 4, "num_local_experts": 4}


@pytest.mark.parametrize("model_type", sorted(LORA_TARGETS))
def test_the_lora_target_table_matches_transformers(model_type):
    """Every layer peft can adapt in the model type's sequence-classification model, built on
    the meta device from its default config and from the configs that add layers."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)

    def layer_names(**config) -> set[str]:
        with torch.device("meta"):
            net = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **SMALL, **config))
        return {name.rsplit(".", 1)[-1] for name, module in net.named_modules() if isinstance(module, adaptable)}

    assert LORA_TARGETS[model_type] == layer_names() | layer_names(**VARIANTS.get(model_type, {}))


# ------------------------------------------------------- 6. directories and globs


@pytest.fixture
def data_dir(tmp_path):
    """A folder of data files (and others), 32 pairs in each .jsonl."""
    folder = tmp_path / "pairs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl", ".hidden.jsonl"):
        head_lines(TRAIN_DATA, str(folder / name), 32)
    for name in ("d.json.gz", "e.parquet", "notes.txt", "f.JSONL"):
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "given, expected",
    [
        ("pairs", ["a.jsonl", "b.jsonl", "d.json.gz", "e.parquet", "f.JSONL"]),
        ("pairs/", ["a.jsonl", "b.jsonl", "d.json.gz", "e.parquet", "f.JSONL"]),
        ("pairs/*.jsonl", ["a.jsonl", "b.jsonl"]),
        ("pairs/**/*.jsonl", ["a.jsonl", "b.jsonl", "sub/c.jsonl"]),
        ("pairs/[ab].jsonl", ["a.jsonl", "b.jsonl"]),
        ("pairs/*", ["a.jsonl", "b.jsonl", "d.json.gz", "e.parquet", "f.JSONL"]),
    ],
)
def test_a_directory_or_glob_expands_to_its_data_files_sorted(tmp_path, data_dir, given, expected):
    base = small_recipe(tmp_path)
    recipe = load_recipe(child(tmp_path, base, f'[data]\ntrain = ["{given}", "train.jsonl"]\n'))
    assert recipe.data.train == (*(str(data_dir / name) for name in expected), str(tmp_path / "train.jsonl"))


def test_the_expanded_files_are_what_check_reads(tmp_path, data_dir):
    base = small_recipe(tmp_path)
    recipe = child(tmp_path, base, '[data]\ntrain = "pairs/**/*.jsonl"\n')
    _, _, pairs = preflight(recipe, overrides=(), world=CPU)
    assert pairs == 3 * 32


def test_a_directory_or_glob_with_no_data_files_is_one_line(tmp_path, data_dir, monkeypatch):
    (tmp_path / "empty").mkdir()
    base = small_recipe(tmp_path)
    recipe = child(tmp_path, base, '[data]\ntrain = ["pairs/*.csv"]\neval = ["empty"]\n')
    files = "data files (.jsonl, .json, .parquet, maybe compressed)"
    assert recipe_problems(recipe) == [
        f"{recipe}: [data].train: {data_dir}/*.csv matches no {files}",
        f"{recipe}: [data].eval: directory {tmp_path / 'empty'} holds no {files}",
    ]
    monkeypatch.chdir(tmp_path)
    assert recipe_problems(base, overrides=["data.eval=nothing/*.jsonl"]) == [
        f"{base}: --set data.eval=nothing/*.jsonl: [data].eval: {tmp_path}/nothing/*.jsonl matches no {files}"
    ]
    # A list that a later file or the command line replaces is not the one that runs.
    assert load_recipe(recipe, overrides=["data.train=train.jsonl", "data.eval=eval.jsonl"])
    assert load_recipe(child(tmp_path, recipe, '[data]\ntrain = ["pairs"]\neval = ["eval.jsonl"]\n', name="c2.toml"))


def test_files_with_glob_characters_and_urls_stay_as_given(tmp_path):
    head_lines(TRAIN_DATA, str(tmp_path / "x[1].jsonl"), 32)
    base = small_recipe(tmp_path)
    recipe = load_recipe(child(tmp_path, base, '[data]\ntrain = ["x[1].jsonl", "s3://bucket/pairs/*.jsonl"]\n'))
    assert recipe.data.train == (str(tmp_path / "x[1].jsonl"), "s3://bucket/pairs/*.jsonl")


def test_the_data_suffixes_are_the_ones_the_readers_take(tmp_path):
    from rmrun.data.formats import DataError, read_pairs

    names = [
        f"x{data}{packed}" for data in (*DATA_FILE_SUFFIXES, ".csv", ".txt") for packed in ("", *COMPRESSION_SUFFIXES)
    ]
    for name in names:
        with pytest.raises(DataError) as info:  # a missing file, or one of no known type
            list(read_pairs([str(tmp_path / name)], format="colossalchat"))
        assert is_data_file_name(name) is ("unknown file type" not in str(info.value)), name


# ---------------------------------------------------------------- 7. fresh run hint


def test_the_fresh_run_hint_names_run_state_where_it_is_set(tmp_path):
    recipe = load_recipe(small_recipe(tmp_path))
    assert fresh_run_hint(recipe) == f"set a new run.state (it is set to {tmp_path / 'state'})"
    assert fresh_run_hint(load_recipe(QUICKSTART)) == "use a new run.name"
