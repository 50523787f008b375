"""The manual builds as ``make docs`` builds it: ``python -m mkdocs build --strict`` from the
repository root, where a broken link or anchor, or a nav page that does not exist, fails the
build; the recipe reference it writes documents every recipe key. The pages written from the
code import no torch, so building the manual needs none."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import typing

from rmrun.recipe.schema import Recipe
from tests.helpers import REPO, child_env

HEAVY = ("torch", "numpy", "transformers", "colossalai", "fsspec")


def recipe_keys(cls=Recipe, table: str = "") -> set[tuple[str, str]]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), hints[f.name])
        if dataclasses.is_dataclass(inner):
            keys |= recipe_keys(inner, f"{table}.{f.name}" if table else f.name)
        else:
            keys.add((table, f.name))
    return keys


def test_the_manual_builds_strict_and_its_reference_has_every_key(tmp_path):
    missing = [name for name in ("mkdocs", "material") if importlib.util.find_spec(name) is None]
    assert not missing, (
        f"{', '.join(missing)} not installed in {sys.executable}: install the test extra "
        '(pip install -e ".[test]", as make install does), which brings mkdocs and mkdocs-material'
    )
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        env=child_env(NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    reference = (site / "reference" / "recipe" / "index.html").read_text()
    absent = sorted(
        f"{table}.{key}"
        for table, key in recipe_keys()
        if f'<code id="{table.replace(".", "-")}-{key}">{key}</code>' not in reference
    )
    assert absent == [] and len(recipe_keys()) == 86
    for page in ("exit-codes", "fault-points"):
        assert (site / "reference" / page / "index.html").is_file()
    assert (site / "report.png").is_file()


def test_the_generated_pages_import_no_torch():
    probe = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('hook', sys.argv[1])\n"
        "hook = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(hook)\n"
        "pages = {path: len(page()) for path, page in hook.PAGES.items()}\n"
        f"print(json.dumps({{'pages': pages, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    hook = os.path.join(REPO, "docs", "hooks", "generate.py")
    done = subprocess.run(
        [sys.executable, "-c", probe, hook], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["heavy"] == [] and all(report["pages"].values()), report
