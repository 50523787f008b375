"""The manual without MkDocs: the pages written from the code document every recipe key with its
default, every exit code and every fault point; the nav names pages that exist; every relative link
in docs/ and README.md reaches a file (and a key's anchor, in the recipe reference); the TOML
examples use real keys. tests/e2e/test_docs.py builds the manual itself."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import typing
from pathlib import Path

import pytest
import yaml

from rmrun import errors
from rmrun.errors import exit_codes_markdown
from rmrun.recipe.explain import reference_markdown
from rmrun.recipe.schema import Recipe
from rmrun.runtime.faults import FAULT_POINTS, fault_points_markdown

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_generate_hook", DOCS / "hooks" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATED = _hook().PAGES  # docs-relative path -> the function writing that page


# ------------------------------------------------------------------ the recipe reference


def schema_defaults(cls=Recipe, table: str = "") -> dict[tuple[str, str], object]:
    """(table, key) -> the key's default ("required" for a required key), read from the dataclasses."""
    out: dict[tuple[str, str], object] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = next((a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)), hints[f.name])
        if dataclasses.is_dataclass(inner):
            out |= schema_defaults(inner, f"{table}.{f.name}" if table else f.name)
        elif f.metadata.get("required"):
            out[(table, f.name)] = "required"
        elif f.default is not dataclasses.MISSING:
            out[(table, f.name)] = f.default
        else:
            out[(table, f.name)] = f.default_factory()
    return out


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


def reference_problems(markdown: str) -> list[str]:
    """What the recipe reference lacks: a key without its row, anchor or default, or with a wrong one."""
    rows: dict[tuple[str, str], str] = {}
    table = None
    for line in markdown.splitlines():
        if heading := re.match(r"## `\[\[?([\w.]+)\]\]?`", line):
            table = heading[1]
        elif table and line.startswith("| `"):
            name, _type, default = (cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:4])
            key, anchor = re.fullmatch(r"`(\w+)`\{#([\w-]+)\}", name).groups()  # type: ignore[union-attr]
            assert anchor == f"{table.replace('.', '-')}-{key}", f"{table}.{key}: anchor {anchor}"
            rows[(table, key)] = default
    problems = []
    for (table, key), default in schema_defaults().items():
        cell = rows.get((table, key))
        if cell is None:
            problems.append(f"{table}.{key}: missing")
        elif default == "required" or default is None:
            if cell != ("required" if default == "required" else "unset"):
                problems.append(f"{table}.{key}: default {cell}, not {default!r}")
        elif _listed(ast.literal_eval(cell.strip("` "))) != _listed(default):
            problems.append(f"{table}.{key}: default {cell}, not {default!r}")
    return problems


def test_the_recipe_reference_has_every_key_with_its_default():
    markdown = reference_markdown()
    assert len(schema_defaults()) == 86
    assert reference_problems(markdown) == []
    assert "| `lr`{#schedule-lr} | number | `5e-06` | Peak learning rate. |" in markdown
    assert "## `[model.lora]` {#model-lora}" in markdown and "{#extends}" in markdown
    assert "## `[[data.sources]]` {#data-sources}" in markdown  # an array of tables


def test_the_reference_check_sees_a_missing_key_and_a_wrong_default():
    lines = reference_markdown().splitlines()
    without_lr = "\n".join(line for line in lines if "{#schedule-lr}" not in line)
    assert reference_problems(without_lr) == ["schedule.lr: missing"]
    wrong = "\n".join(line.replace("`5e-06`", "`1e-05`") for line in lines)
    assert reference_problems(wrong) == ["schedule.lr: default `1e-05`, not 5e-06"]


def test_the_reference_escapes_what_markdown_would_swallow():
    markdown = reference_markdown()
    assert "state/&lt;name&gt;" in markdown and "state/<name>" not in markdown
    assert '"colossalchat" \\| "pairwise" \\| "hh"' in markdown


# ------------------------------------------------------------------ exit codes, fault points


def exit_code_constants() -> dict[str, int]:
    return {name: value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int)}


def missing_exit_codes(markdown: str) -> list[str]:
    return [name for name, code in exit_code_constants().items() if f"| **{code}**{{#exit-{code}}} |" not in markdown]


def test_the_exit_code_table_has_every_exit_code():
    assert set(exit_code_constants().values()) == {0, 1, 2, 3, 75, 130}
    assert sorted(e.code for e in errors.EXIT_CODES) == sorted(exit_code_constants().values())
    assert missing_exit_codes(exit_codes_markdown()) == []


def test_the_exit_code_check_sees_a_missing_code():
    table = "\n".join(line for line in exit_codes_markdown().splitlines() if "{#exit-75}" not in line)
    assert missing_exit_codes(table) == ["EXIT_PREEMPTED"]


def test_the_fault_point_list_has_every_point_in_run_order():
    markdown = fault_points_markdown()
    positions = [markdown.find(f"| `{point}` | {where} |") for point, where in FAULT_POINTS.items()]
    assert -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_each_generated_page_has_a_title(path):
    assert GENERATED[path]().startswith("# ")


# ------------------------------------------------------------------ nav and links


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return [page for item in nav for page in _nav_pages(item)]


def test_the_nav_names_every_page_and_only_pages_that_exist():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert [p for p in nav if not (DOCS / p).is_file() and p not in GENERATED] == []
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert written | set(GENERATED) == set(nav)
    assert [hook for hook in config["hooks"] if not (REPO / hook).is_file()] == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, code blocks and code spans left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def broken_links(path: Path, docs: Path = DOCS) -> list[str]:
    """Links of ``path`` to no file (a page of ``docs`` may link to a generated page), or to an
    anchor a generated page lacks."""
    anchors = {p: set(re.findall(r"\{#([\w-]+)\}", page())) for p, page in GENERATED.items()}
    broken = []
    for target in relative_links(path.read_text()):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve()
        generated = resolved.relative_to(docs).as_posix() if resolved.is_relative_to(docs) else None
        if generated in anchors:
            if anchor and anchor not in anchors[generated]:
                broken.append(target)
        elif not resolved.exists():
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md"))])
def test_every_relative_link_reaches_a_file(page):
    assert broken_links(REPO / page) == []


def test_the_link_check_sees_a_broken_link(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# rmrun\n")
    planted = docs / "planted.md"
    planted.write_text(
        "[a](index.md) [b](nowhere.md) [c](reference/recipe.md#schedule-lr) [d](reference/recipe.md#schedule-lrr)\n"
        "`[e](in-code.md)`\n\n```\n[f](in-a-block.md)\n```\n"
    )
    assert broken_links(planted, docs) == ["nowhere.md", "reference/recipe.md#schedule-lrr"]


def test_the_readme_opens_with_the_two_commands_and_links_into_the_manual():
    readme = (REPO / "README.md").read_text()
    assert readme.startswith(
        "# rmrun\n\n```bash\n"
        "make quickstart   # creates .venv, installs rmrun, trains recipes/quickstart.toml on CPU (about a minute)\n"
        "make test         # creates .venv, installs rmrun with its test extras, runs the test suite\n```\n"
    )
    assert len(readme.splitlines()) <= 90 and "docs/resume.md" in relative_links(readme)


# ------------------------------------------------------------------ examples


def _toml_keys(data: dict, table: str = "") -> list[tuple[str, str]]:
    """(table, key) of every value in ``data``; a nested table ([log.wandb]) named with dots."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _toml_keys(value, f"{table}.{key}" if table else key)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # [[data.sources]]
            for item in value:
                out += _toml_keys(item, f"{table}.{key}" if table else key)
        else:
            out.append((table, key))
    return out


def test_the_toml_examples_use_only_recipe_keys():
    keys = set(schema_defaults())
    unknown = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), flags=re.S):
            unknown += [f"{page.name}: {t}.{k}" for t, k in _toml_keys(tomllib.loads(block)) if (t, k) not in keys]
    assert unknown == []
    assert _toml_keys({"log": {"trackers": [], "wandb": {"projct": "x"}}, "data": {"sources": [{"nme": "a"}]}}) == [
        ("log", "trackers"),
        ("log.wandb", "projct"),
        ("data.sources", "nme"),
    ]
