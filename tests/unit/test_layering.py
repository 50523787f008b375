"""The layering the design depends on, checked on the source (STYLE.md, "The shape of the house").

Import rules, read with ``ast`` from every module under a source root, function-level and
relative imports included (``layering_violations``):

- ``recipe-layer``: rmrun/recipe/ imports only the standard library and rmrun.recipe
  itself (a guest list admits data-only tables still outside it; each guest must itself
  import only the standard library and rmrun.recipe);
- ``runner-steps``: the runner (rmrun/run/runner.py, rmrun/run/graph.py, whichever exist) never
  imports ``rmrun.run.steps`` or anything under it: steps are looked up by importlib strings;
- ``booster``: only rmrun/model/boost.py imports ``colossalai.booster``, in any spelling.

Each rule has a negative control: a copy of rmrun/ with one planted violation, which the
checker must report as exactly that file and rule. Besides these:

- exactly one module reads RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / GROUP_RANK (rmrun/runtime/dist.py);
- only the CLI calls ``sys.exit`` (a worker process may end itself with ``os._exit``);
- state keys and record names are spelled out only in rmrun/store/keys.py.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rmrun"
SOURCES = sorted(PACKAGE.rglob("*.py"))
RANK_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_the_sources_are_found():
    assert len(SOURCES) > 30 and PACKAGE / "model" / "boost.py" in SOURCES


# ------------------------------------------------------------------ import rules


RECIPE_LAYER = "recipe-layer"
RUNNER_STEPS = "runner-steps"
BOOSTER = "booster"

# tomli: tomllib's backport on Python 3.10, pure Python.
STANDARD_LIBRARY = frozenset(sys.stdlib_module_names) | {"__future__", "tomli"}
# The run's owner and what it hands to steps: none imports a step module.
RUNNER_MODULES = ("run/runner.py", "run/graph.py", "run/context.py", "run/commands.py")
BOOSTER_IMPORTER = "rmrun/model/boost.py"

# Modules outside rmrun/recipe/ that the recipe layer may import (none: the plugin table
# and the backbone families live in it). A test below shows how a listed guest is admitted.
RECIPE_LAYER_GUESTS: tuple[str, ...] = ()


class Violation(NamedTuple):
    path: str  # relative to the source root's parent, e.g. "rmrun/recipe/plan.py"
    rule: str
    name: str  # the dotted name the import binds, e.g. "colossalai.booster.Booster"
    line: int


def _module_parts(root: Path, path: Path) -> list[str]:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) for every import in the module at any depth, relative ones resolved:
    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a.b`` (b may be a module)."""
    package = _module_parts(root, path)
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module if alias.name == "*" else f"{module}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _relative_to(root: Path, path: Path) -> str:
    return path.relative_to(root.parent).as_posix()


def _standard_or_recipe(name: str) -> bool:
    return name.split(".")[0] in STANDARD_LIBRARY or _under(name, "rmrun.recipe")


def recipe_layer_violations(root: Path, *, guests: tuple[str, ...] = ()) -> list[Violation]:
    """Rule a: rmrun/recipe/ imports only the standard library, rmrun.recipe and the guests."""
    return [
        Violation(_relative_to(root, path), RECIPE_LAYER, name, line)
        for path in sorted((root / "recipe").rglob("*.py"))
        for line, name in imported_names(root, path)
        if not _standard_or_recipe(name) and not any(_under(name, guest) for guest in guests)
    ]


def runner_steps_violations(root: Path) -> list[Violation]:
    """Rule b: the runner modules never import rmrun.run.steps or anything under it."""
    steps = f"{root.name}.run.steps"
    return [
        Violation(_relative_to(root, path), RUNNER_STEPS, name, line)
        for path in (root / module for module in RUNNER_MODULES)
        if path.exists()
        for line, name in imported_names(root, path)
        if _under(name, steps)
    ]


def booster_violations(root: Path) -> list[Violation]:
    """Rule c: no module but rmrun/model/boost.py imports colossalai.booster."""
    return [
        Violation(_relative_to(root, path), BOOSTER, name, line)
        for path in sorted(root.rglob("*.py"))
        if _relative_to(root, path) != BOOSTER_IMPORTER
        for line, name in imported_names(root, path)
        if _under(name, "colossalai.booster")
    ]


def layering_violations(root: Path, *, recipe_guests: tuple[str, ...] = ()) -> list[Violation]:
    return [
        *recipe_layer_violations(root, guests=recipe_guests),
        *runner_steps_violations(root),
        *booster_violations(root),
    ]


def test_the_real_tree_keeps_the_import_rules():
    assert layering_violations(PACKAGE, recipe_guests=RECIPE_LAYER_GUESTS) == []


def test_boost_is_the_one_importer_of_the_colossalai_booster():
    importers = {
        _relative(p) for p in SOURCES for _, name in imported_names(PACKAGE, p) if _under(name, "colossalai.booster")
    }
    assert importers == {BOOSTER_IMPORTER}


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import os.path", ["os.path"]),
        ("from rmrun.run.steps import train", ["rmrun.run.steps.train"]),
        ("from . import schema", ["rmrun.recipe.schema"]),
        ("from .schema import Recipe", ["rmrun.recipe.schema.Recipe"]),
        ("from .. import steps", ["rmrun.steps"]),
        ("def f():\n    from colossalai import booster", ["colossalai.booster"]),
    ],
)
def test_imported_names_resolve_relative_and_function_level_imports(tmp_path, source, expected):
    module = tmp_path / "rmrun" / "recipe" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(source + "\n")
    assert [name for _, name in imported_names(tmp_path / "rmrun", module)] == expected


def _copy_of_the_package(tmp_path: Path) -> Path:
    root = tmp_path / "rmrun"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert layering_violations(root, recipe_guests=RECIPE_LAYER_GUESTS) == []
    return root


def _plant(path: Path, line: str) -> None:
    """Append a function whose body is ``line``: the import runs only when it is called."""
    existing = path.read_text() if path.exists() else ""
    path.write_text(existing + f"\n\ndef _planted():\n    {line}\n")


@pytest.mark.parametrize(
    "line,name",
    [
        ("import torch", "torch"),
        ("from rmrun.model.model import build_reward_model", "rmrun.model.model.build_reward_model"),
        ("from .. import store", "rmrun.store"),
        ("import colossalai", "colossalai"),
    ],
)
def test_negative_control_an_import_planted_in_the_recipe_layer_is_reported(tmp_path, line, name):
    root = _copy_of_the_package(tmp_path)
    _plant(root / "recipe" / "planted.py", line)
    violations = layering_violations(root, recipe_guests=RECIPE_LAYER_GUESTS)
    assert [(v.path, v.rule, v.name) for v in violations] == [("rmrun/recipe/planted.py", RECIPE_LAYER, name)]


@pytest.mark.parametrize(
    "line,name",
    [
        ("from rmrun.run.steps import train", "rmrun.run.steps.train"),
        ("import rmrun.run.steps.tokenize", "rmrun.run.steps.tokenize"),
        ("from rmrun.run import steps", "rmrun.run.steps"),
        ("from .steps.evaluate import run", "rmrun.run.steps.evaluate.run"),
    ],
)
def test_negative_control_a_step_import_planted_in_the_runner_is_reported(tmp_path, line, name):
    root = _copy_of_the_package(tmp_path)
    runner = next((root / m for m in RUNNER_MODULES if (root / m).exists()), root / RUNNER_MODULES[0])
    _plant(runner, line)
    violations = layering_violations(root, recipe_guests=RECIPE_LAYER_GUESTS)
    assert [(v.path, v.rule, v.name) for v in violations] == [(_relative_to(root, runner), RUNNER_STEPS, name)]


def test_negative_control_every_runner_module_is_checked(tmp_path):
    root = _copy_of_the_package(tmp_path)
    for module in RUNNER_MODULES:
        _plant(root / module, "from rmrun.run.steps import save")
    violations = layering_violations(root, recipe_guests=RECIPE_LAYER_GUESTS)
    assert sorted((v.path, v.rule) for v in violations) == [
        (f"rmrun/{m}", RUNNER_STEPS) for m in sorted(RUNNER_MODULES)
    ]


@pytest.mark.parametrize(
    "line,name",
    [
        ("import colossalai.booster", "colossalai.booster"),
        ("import colossalai.booster.plugin as plugins", "colossalai.booster.plugin"),
        ("from colossalai.booster import Booster", "colossalai.booster.Booster"),
        ("from colossalai import booster", "colossalai.booster"),
    ],
)
def test_negative_control_a_booster_import_planted_outside_boost_is_reported(tmp_path, line, name):
    root = _copy_of_the_package(tmp_path)
    _plant(root / "planted.py", line)
    violations = layering_violations(root, recipe_guests=RECIPE_LAYER_GUESTS)
    assert [(v.path, v.rule, v.name) for v in violations] == [("rmrun/planted.py", BOOSTER, name)]


def test_negative_control_a_recipe_guest_is_admitted_only_when_listed(tmp_path):
    root = tmp_path / "rmrun"
    (root / "recipe").mkdir(parents=True)
    (root / "recipe" / "plan.py").write_text("import json\nfrom rmrun.recipe.schema import Recipe\n")
    _plant(root / "recipe" / "plan.py", "from rmrun.plugins import plugin_call")
    assert layering_violations(root, recipe_guests=("rmrun.plugins",)) == []
    assert [(v.path, v.rule, v.name) for v in layering_violations(root)] == [
        ("rmrun/recipe/plan.py", RECIPE_LAYER, "rmrun.plugins.plugin_call")
    ]


def _reads_rank_variable(node: ast.AST) -> bool:
    def is_environ(value) -> bool:
        return isinstance(value, ast.Attribute) and value.attr == "environ"

    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        reading = (isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value)) or (
            isinstance(func, ast.Attribute) and func.attr == "getenv"
        )
        return reading and node.args[0].value in RANK_VARIABLES
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value):
        return isinstance(node.slice, ast.Constant) and node.slice.value in RANK_VARIABLES
    return False


def test_only_dist_reads_the_rank_variables():
    readers = [_relative(p) for p in SOURCES if any(_reads_rank_variable(n) for n in ast.walk(_tree(p)))]
    assert readers == ["rmrun/runtime/dist.py"]


@pytest.mark.parametrize(
    "source,expected",
    [
        ('import os\nos.environ.get("WORLD_SIZE")', True),
        ('import os\nos.environ["RANK"]', True),
        ('import os\nos.getenv("LOCAL_RANK")', True),
        ('import os\nos.environ["RANK"] = "0"', False),
        ('import os\nos.environ.get("HOME")', False),
    ],
)
def test_the_rank_reading_check_itself(source, expected):
    assert any(_reads_rank_variable(n) for n in ast.walk(ast.parse(source))) is expected


def test_only_the_cli_calls_sys_exit():
    callers = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "exit"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "sys"
            ):
                callers.append(_relative(path))
    assert sorted(set(callers)) == ["rmrun/cli/main.py"]


STORE_NAMING_METHODS = {
    "stage",
    "open_verified",
    "open_unverified",
    "latest",
    "committed_keys",
    "retain",
    "delete",
    "quarantine",
    "quarantined",
    "attempt_writer",
    "write_record",
    "read_record",
    "read_records",
}


def _names_a_key_in_place(node: ast.AST) -> bool:
    """A call of a store method whose first argument is a string literal or an f-string."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in STORE_NAMING_METHODS
        and bool(node.args)
        and (
            isinstance(node.args[0], ast.JoinedStr)
            or isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        )
    )


def test_store_keys_are_named_only_in_keys_py():
    offenders = [
        f"{_relative(p)}:{n.lineno}"
        for p in SOURCES
        for n in ast.walk(_tree(p))
        if _names_a_key_in_place(n) and _relative(p) != "rmrun/store/keys.py"
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "source,expected",
    [
        ('store.open_unverified("export")', True),
        ('ctx.store.write_record(f"starts/{n}", {}, lease=lease)', True),
        ("store.open_unverified(EXPORT_KEY)", False),
        ('record.get("export")', False),
    ],
)
def test_the_key_literal_check_itself(source, expected):
    assert any(_names_a_key_in_place(n) for n in ast.walk(ast.parse(source))) is expected


def _top_level_functions(path: Path) -> set[str]:
    return {n.name for n in _tree(path).body if isinstance(n, ast.FunctionDef)}


def test_each_step_kind_names_a_step_function_whose_name_is_its_own():
    from rmrun.run.graph import STEP_KINDS

    elsewhere = set().union(*(_top_level_functions(p) for p in SOURCES if p.parent != PACKAGE / "run" / "steps"))
    for kind, target in STEP_KINDS.items():
        module, _, function = target.partition(":")
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert module.startswith("rmrun.run.steps.") and path.is_file(), (kind, target)
        assert function in _top_level_functions(path), (kind, target)
        assert function not in elsewhere, f"{target}: another module defines {function}() too"


# ------------------------------------------------------------------ import cycles


def _module_name(root: Path, path: Path) -> str:
    return ".".join(_module_parts(root, path))


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (module-level, in functions and under
    TYPE_CHECKING alike); ``from a import b`` counts as a.b when b is a module, else a."""
    modules = {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, imported in imported_names(root, path):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_package_has_no_import_cycles():
    assert import_cycles(PACKAGE) == []


def test_negative_control_a_planted_import_cycle_is_reported(tmp_path):
    root = tmp_path / "rmrun"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert import_cycles(root) == []
    # errors imports rmrun.runtime.process in a function; an import back, in a function too, closes a loop.
    _plant(root / "runtime" / "process.py", "from rmrun.errors import EXIT_OK")
    assert import_cycles(root) == [["rmrun.errors", "rmrun.runtime.process"]]


def test_negative_control_a_type_checking_cycle_counts(tmp_path):
    root = tmp_path / "rmrun"
    (root / "a").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a" / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text("from rmrun.a import y\n")
    (root / "a" / "y.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rmrun.a.x import Thing\n"
    )
    assert import_cycles(root) == [["rmrun.a.x", "rmrun.a.y"]]


# ------------------------------------------------------------------ module sizes

MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 8  # directly in rmrun/, besides __init__.py and __main__.py


def oversized_modules(root: Path) -> list[str]:
    return [
        f"{_relative_to(root, p)}: {n} lines"
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]


def top_level_modules(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_no_module_is_over_400_lines():
    assert oversized_modules(PACKAGE) == []


def test_few_modules_sit_directly_in_the_package():
    assert len(top_level_modules(PACKAGE)) <= MAX_TOP_LEVEL_MODULES, top_level_modules(PACKAGE)


def test_negative_control_an_oversized_module_and_a_crowded_package_are_reported(tmp_path):
    root = tmp_path / "rmrun"
    root.mkdir()
    (root / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (root / "small.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    assert oversized_modules(root) == [f"rmrun/big.py: {MAX_MODULE_LINES + 1} lines"]
    for i in range(MAX_TOP_LEVEL_MODULES):
        (root / f"m{i}.py").write_text("")
    assert len(top_level_modules(root)) > MAX_TOP_LEVEL_MODULES
