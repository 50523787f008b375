"""The ``rmrun`` command as users run it: a subprocess, exit codes, stderr lines.

Every malformed recipe in tests/recipes_bad/ goes through ``rmrun check``: exit 2, one
``rmrun: FILE: ...`` line per problem, never a traceback. ``rmrun run`` fails the same
way before importing torch, and ``rmrun check`` of the quickstart answers in well under
a second without importing torch. ``rmrun run --help`` documents ``--set``; the in-process
help and ``rmrun explain`` checks are in tests/unit/test_cli_help.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import child_env, small_recipe

REPO = os.path.realpath(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BAD = "tests/recipes_bad"
BAD_REAL = os.path.join(REPO, BAD)
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "rmrun")
RMRUN = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "rmrun"]
HEAVY = ("torch", "colossalai", "transformers")

PLUGINS = "'ddp', 'zero2', 'zero2_cpu', 'gemini', 'gemini_auto', '3d'"
KEEP = "[checkpoint].keep: must be at least 2 so a corrupt newest checkpoint has a fallback, got 1"
GEMINI_AUTO = (
    '[schedule].accumulation_steps: plugin "gemini_auto" does not support gradient accumulation; '
    'use 1 or plugin "gemini"'
)
CYCLE = f"{BAD_REAL}/extends_cycle.toml"
PIPELINE = (
    "[plugin].pp: pipeline parallelism is not supported for reward models (one forward reads rewards "
    "from the whole batch); use tp, sp or zero_stage to spread the model"
)

# file in tests/recipes_bad/ -> the problem lines after "rmrun: FILE: " (FILE as passed),
# or, for lines that name another file, the whole line after "rmrun: ".
EXPECTED = {
    "unknown_key.toml": ['[schedule].batchsize: unknown key (did you mean "batch_size"?)'],
    "unknown_table.toml": ['[schedul]: unknown table (did you mean "schedule"?)'],
    "unknown_lora_key.toml": ['[model.lora].alpah: unknown key (did you mean "alpha"?)'],
    "wrong_type_int.toml": ["[schedule].batch_size: expected an integer, got '8'"],
    "wrong_type_float_for_int.toml": ["[data].max_length: expected an integer, got 2048.0"],
    "wrong_type_bool.toml": ["[plugin].flash_attn: expected true or false, got 'yes'"],
    "wrong_type_list.toml": ["[data].train: expected a list, got int"],
    "scalar_for_table.toml": ["[loss]: expected a table, got str"],
    "bad_enum_close.toml": [f"[plugin].name: 'zero3' is not one of {PLUGINS} (did you mean \"zero2\"?)"],
    "bad_enum_far.toml": [
        "[data].format: 'sharegpt' is not one of 'colossalchat', 'pairwise', 'hh', 'rated', 'ultrafeedback', 'helpsteer2'"
    ],
    "lora_with_gemini.toml": ['[model.lora]: LoRA is not supported with plugin "gemini"; use zero2, ddp or 3d'],
    "gemini_auto_accumulation.toml": [GEMINI_AUTO],
    "tp_without_3d.toml": ['[plugin].tp: only the "3d" plugin shards models; got tp=2'],
    "checkpoint_keep_one.toml": [KEEP],
    "invalid_toml.toml": ["invalid TOML: Invalid value (at line 6, column 5)"],
    "duplicate_table.toml": ["invalid TOML: Cannot declare ('run',) twice (at line 5, column 5)"],
    "extends_missing.toml": [f"extends: file not found: {BAD_REAL}/no-such-base.toml"],
    "extends_not_a_string.toml": ["extends: expected a file name (string), got int"],
    "extends_cycle.toml": [f"@{CYCLE}: extends: forms a cycle ({CYCLE} -> {BAD_REAL}/parts/cycle_b.toml -> {CYCLE})"],
    "missing_required.toml": ["[model].pretrain: required key is missing"],
    "required_empty.toml": ["[data].train: needs at least one file"],
    "three_mistakes.toml": [
        "[schedule].batch_size: expected an integer, got '8'",
        "[schedule].lerning_rate: unknown key",
        "[loss].name: 'hinge' is not one of 'log_sig', 'log_exp'",
    ],
    "decode_and_static_mistakes.toml": [
        '[log].interval: unknown key (did you mean "interval_steps"?)',
        KEEP,
        GEMINI_AUTO,
    ],
    "out_of_range.toml": [
        "[data].max_length: must be at least 8, got 4",
        "[schedule].lr: must be positive, got -1e-05",
    ],
    "offload_without_zero.toml": [
        "[plugin].zero_cpu_offload: offloads ZeRO optimizer state, so it needs zero_stage 1 or 2"
    ],
    "pipeline_parallel.toml": [PIPELINE],
    "zero2_on_cpu.toml": ['[plugin].name: "zero2" needs CUDA GPUs and this machine has none; use name = "ddp" on CPU'],
}


def cpu_env() -> dict:
    """The environment of a one-process run on a machine without CUDA (also on a GPU host)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    return env


def rmrun(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([*RMRUN, *args], cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def expected_lines(name: str) -> list[str]:
    rel = f"{BAD}/{name}"
    return [f"rmrun: {line[1:]}" if line.startswith("@") else f"rmrun: {rel}: {line}" for line in EXPECTED[name]]


def assert_user_error(done: subprocess.CompletedProcess, lines: list[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == lines
    assert done.stdout == ""


# ------------------------------------------------------------------ bad recipes


def test_there_are_twenty_malformed_recipes_and_each_is_checked():
    on_disk = {p.name for p in Path(BAD_REAL).glob("*.toml")}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_reports_each_malformed_recipe(name):
    done, _ = rmrun("check", f"{BAD}/{name}")
    assert_user_error(done, expected_lines(name))
    for line in done.stderr.splitlines():
        assert line.startswith("rmrun: ") and name in line


def test_run_on_a_bad_recipe_fails_in_a_few_seconds_without_a_traceback():
    done, seconds = rmrun("run", f"{BAD}/three_mistakes.toml")
    assert_user_error(done, expected_lines("three_mistakes.toml"))
    assert seconds < 5


@pytest.mark.parametrize(
    "argv",
    [
        ["run", f"{BAD}/unknown_key.toml"],
        [f"{BAD}/unknown_key.toml"],
        ["run", f"{BAD}/zero2_on_cpu.toml"],
        ["check", f"{BAD}/unknown_key.toml"],
    ],
)
def test_a_bad_recipe_fails_before_any_heavy_import(argv):
    code = (
        "import sys\n"
        "from rmrun.cli.main import main\n"
        f"code = main({argv!r})\n"
        f"print(code, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_cuda_plugin_on_this_cpu_machine_says_so_and_suggests_ddp(command):
    done, _ = rmrun(command, f"{BAD}/zero2_on_cpu.toml")
    assert_user_error(done, expected_lines("zero2_on_cpu.toml"))
    [line] = done.stderr.splitlines()
    assert "needs CUDA" in line and '"ddp"' in line


def test_set_through_the_cli():
    done, _ = rmrun("check", "recipes/quickstart.toml", "--set", "schedule.batchsize=3", "--set", "checkpoint.keep=1")
    assert_user_error(
        done,
        [
            "rmrun: recipes/quickstart.toml: --set schedule.batchsize=3: unknown key schedule.batchsize "
            '(did you mean "batch_size"?)',
            "rmrun: recipes/quickstart.toml: --set checkpoint.keep=1: " + KEEP,
        ],
    )
    done, _ = rmrun(
        "check", "recipes/quickstart.toml", "--set", "schedule.batch_size=40", "--set", "schedule.accumulation_steps=2"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.split("plan: ", 1)[1])["pairs_per_step"] == 80


def test_status_of_a_bad_recipe():
    done, _ = rmrun("status", f"{BAD}/unknown_key.toml")
    assert_user_error(done, expected_lines("unknown_key.toml"))


def test_a_missing_recipe_file():
    for command in ("check", "run"):
        done, _ = rmrun(command, "recipes/no-such.toml")
        assert_user_error(done, ["rmrun: recipes/no-such.toml: file not found"])


def test_usage_errors_exit_2():
    for args in ([], ["check"], ["check", "recipes/quickstart.toml", "--sett", "x=1"]):
        done, _ = rmrun(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr and "usage: rmrun" in done.stderr


# ------------------------------------------------------------------- quickstart


def test_check_quickstart_prints_the_plan_in_well_under_a_second():
    rmrun("check", "recipes/quickstart.toml")  # warm the file cache; the timed run is the second
    done, seconds = rmrun("check", "recipes/quickstart.toml")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith("recipe recipes/quickstart.toml: ok\n")
    assert "plugin: TorchDDPPlugin(find_unused_parameters=False, broadcast_buffers=False)" in out
    assert "\nfind_unused_parameters=False: every trainable parameter reaches the reward" in out
    plan = json.loads(out.split("plan: ", 1)[1])
    assert plan["plugin_class"] == "TorchDDPPlugin"
    assert plan["world_size"] == 1 and plan["num_epochs"] == 2
    assert plan["pairs_per_step"] == 16 and plan["total_steps"] == 2 * plan["steps_per_epoch"]
    assert seconds < 1.5, f"rmrun check took {seconds:.2f} s"


def test_check_quickstart_imports_no_torch():
    code = (
        "import sys\n"
        "import rmrun.run.commands, rmrun.recipe\n"
        "from rmrun.cli.main import main\n"
        "code = main(['check', 'recipes/quickstart.toml'])\n"
        f"print('HEAVY', code, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == "HEAVY 0 []", done.stdout + done.stderr


def test_run_help_documents_set():
    out = subprocess.run([*RMRUN, "run", "--help"], capture_output=True, text=True, env=cpu_env(), timeout=60).stdout
    assert "--set KEY=VALUE" in out and "schedule.lr=1e-5" in out


@pytest.mark.parametrize(
    "argv",
    [["explain"], ["status", "{tmp}/state"]],
    ids=["written-while-running", "flushed-at-exit"],
)
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, argv):
    """``rmrun status | head``: the reader may go before rmrun writes. ``explain`` writes more
    than a pipe's buffer while running; ``status`` of a fresh state writes only at exit."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    child = subprocess.Popen(
        [sys.executable, "-m", "rmrun", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
    )
    child.stdout.close()  # no reader: every write fails with EPIPE
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr.decode()
    assert stderr.decode() == ""


def test_a_run_whose_output_reader_goes_away_trains_on_to_its_export(tmp_path):
    """``rmrun run ... | head``, or a log collector that died: the run's prints must not stop it."""
    recipe = small_recipe(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "rmrun", "run", recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
    )
    child.stdout.close()
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr.decode()[-2000:]
    assert "Broken pipe" not in stderr.decode()
    assert (tmp_path / "state" / "export" / "model.safetensors").exists()
