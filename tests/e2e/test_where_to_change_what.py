"""docs/architecture.md's "where to change what" table, followed as a newcomer would: in a copy of
the package, a toy loss, a toy data format and a toy step are added exactly where the table
says and nowhere else, and a real run uses all three."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import QUICKSTART, REPO, child_env

TOY_LOSS = '''

def toy_hinge_loss(chosen, rejected, *, margin: float = 0.0):
    """Per-pair hinge: max(0, 1 + margin - (r_c - r_r))."""
    return (1.0 + margin - (chosen - rejected)).clamp(min=0.0)


LOSSES["toy_hinge"] = toy_hinge_loss
'''

TOY_FORMAT = '''

def _parse_toy_row(row, *, source):
    """``{"q", "good", "bad"}``: a question, the better answer, the worse one."""
    row = _require_object(row)
    pairwise = {"prompt": row.get("q"), "chosen": row.get("good"), "rejected": row.get("bad")}
    return _parse_pairwise_row(pairwise, source=source)


_ROW_PARSERS["toy"] = _parse_toy_row
'''

TOY_STEP = '''"""The toy step: after the export, commits a note (its state) and says so in a file."""

import os


def toy_note(ctx, step):
    if not ctx.rank.is_main:
        return
    staged = ctx.stage(step.key, meta={"step": "toy"})
    staged.write_bytes("note.txt", b"ran")
    staged.commit()
    with open(os.environ["TOY_NOTE"], "a") as f:
        f.write(f"{step.name} ran after the export\\n")
'''


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the table's place for the change moved ({old!r})"
    path.write_text(text.replace(old, new))


def _toy_package(root: Path) -> Path:
    package = root / "rmrun"
    shutil.copytree(Path(REPO) / "rmrun", package, ignore=shutil.ignore_patterns("__pycache__"))
    # a loss: a function in LOSSES, its name in LossSection.name
    (package / "train" / "loss.py").write_text((package / "train" / "loss.py").read_text() + TOY_LOSS)
    _edit(
        package / "recipe" / "schema.py",
        'name: Literal["log_sig", "log_exp"]',
        'name: Literal["log_sig", "log_exp", "toy_hinge"]',
    )
    # a data format: a parser in _ROW_PARSERS, its name in FORMATS and in DataFormat
    (package / "data" / "rows.py").write_text((package / "data" / "rows.py").read_text() + TOY_FORMAT)
    _edit(
        package / "data" / "formats.py",
        'FORMATS = ("colossalchat", "pairwise", "hh", *RATED_FORMATS)',
        'FORMATS = ("colossalchat", "pairwise", "hh", *RATED_FORMATS, "toy")',
    )
    _edit(
        package / "recipe" / "data_section.py",
        'DataFormat = Literal["colossalchat", "pairwise", "hh", "rated", "ultrafeedback", "helpsteer2"]',
        'DataFormat = Literal["colossalchat", "pairwise", "hh", "rated", "ultrafeedback", "helpsteer2", "toy"]',
    )
    # a step: a module in run/steps/ named for its kind, its STEP_KINDS entry, a Step in build_graph
    (package / "run" / "steps" / "toy.py").write_text(TOY_STEP)
    _edit(
        package / "run" / "graph.py", "STEP_KINDS = {\n", 'STEP_KINDS = {\n    "toy": "rmrun.run.steps.toy:toy_note",\n'
    )
    # a persistent step commits its state under its key (a name in store/keys.py)
    _edit(package / "store" / "keys.py", 'EXPORT_KEY = "export"', 'TOY_KEY = "toy-note"\nEXPORT_KEY = "export"')
    _edit(
        package / "run" / "graph.py",
        "EVAL_FINAL_KEY, EXPORT_KEY, epoch_key",
        "EVAL_FINAL_KEY, EXPORT_KEY, TOY_KEY, epoch_key",
    )
    _edit(
        package / "run" / "graph.py",
        "    check_graph(steps)\n    return steps\n",
        '    steps.append(Step("toy", "toy", needs=("save",), produces=TOY_KEY))\n    check_graph(steps)\n    return steps\n',
    )
    return root


def _recipe(tmp_path: Path, *, train: str, evaluation: str) -> str:
    path = tmp_path / "toy.toml"
    path.write_text(
        f'extends = "{QUICKSTART}"\n[run]\nstate = "{tmp_path / "state"}"\n'
        f'[data]\ntrain = ["{train}"]\neval = ["{evaluation}"]\nformat = "toy"\n'
        '[loss]\nname = "toy_hinge"\n[schedule]\nbatch_size = 8\n[log]\nprogress = "lines"\n'
    )
    return str(path)


def _toy_rows(source: str, target: Path, count: int) -> str:
    rows = []
    with open(source) as f:
        for line in f:
            row = json.loads(line)
            rows.append(
                {
                    "q": row["context"][-1]["content"],
                    "good": row["chosen"][-1]["content"],
                    "bad": row["rejected"][-1]["content"],
                }
            )
            if len(rows) == count:
                break
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(target)


def test_a_toy_loss_format_and_step_added_where_the_table_says_are_used_by_a_run(tmp_path):
    root = _toy_package(tmp_path / "copy")
    train = _toy_rows(os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl"), tmp_path / "train.jsonl", 32)
    evaluation = _toy_rows(os.path.join(REPO, "recipes", "data", "quickstart_eval.jsonl"), tmp_path / "eval.jsonl", 8)
    recipe = _recipe(tmp_path, train=train, evaluation=evaluation)
    note = tmp_path / "toy-note.txt"
    env = child_env(PYTHONPATH=str(root), TOY_NOTE=str(note))

    def rmrun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rmrun", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )

    checked = rmrun("check", recipe)
    assert checked.returncode == 0, checked.stderr
    assert "steps: tokenize -> boost -> train/epoch-0 -> train/epoch-1 -> evaluate -> save -> toy" in checked.stdout
    assert "data: 32 pairs read" in checked.stdout
    done = rmrun("run", recipe)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert note.read_text() == "toy ran after the export\n"
    assert (tmp_path / "state" / "states" / "toy-note" / "COMMIT").is_file()
    again = rmrun("run", recipe)  # done: the toy step's state counts like any other
    assert again.returncode == 0 and "is complete" in again.stdout, again.stderr
    assert note.read_text() == "toy ran after the export\n"
    recipe_used = (tmp_path / "state" / "export" / "recipe.toml").read_text()
    assert 'name = "toy_hinge"' in recipe_used and 'format = "toy"' in recipe_used


def test_negative_control_without_the_copy_the_toy_names_are_refused(tmp_path):
    train = _toy_rows(os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl"), tmp_path / "train.jsonl", 8)
    recipe = _recipe(tmp_path, train=train, evaluation=train)
    done = subprocess.run(
        [sys.executable, "-m", "rmrun", "check", recipe],
        env=child_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "[data].format" in done.stderr and "[loss].name" in done.stderr
