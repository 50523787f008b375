"""The layering the design depends on, checked on the source (STYLE.md, "The shape of the house").

- exactly one module imports ``colossalai.booster`` (rmrun/boost.py);
- exactly one module reads RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / GROUP_RANK (rmrun/dist.py);
- the recipe layer (rmrun/recipe/) imports only the standard library and itself, plus the
  plugin table and the backbone families (data only, standard library only themselves);
- only the CLI calls ``sys.exit`` (a worker process may end itself with ``os._exit``);
- state keys and record names are spelled out only in rmrun/store/keys.py;
- the runner (rmrun/runner.py, rmrun/graph.py) never imports a step's module: each step's
  function is named in ``STEP_KINDS`` and imported when it runs; no other module defines
  a function with a step function's name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rmrun"
SOURCES = sorted(PACKAGE.rglob("*.py"))
RANK_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"}


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_the_sources_are_found():
    assert len(SOURCES) > 30 and PACKAGE / "boost.py" in SOURCES


def test_only_boost_imports_the_colossalai_booster():
    importers = [_relative(p) for p in SOURCES if any(n.startswith("colossalai.booster") for n in _imported(p))]
    assert importers == ["rmrun/boost.py"]


def test_the_recipe_layer_imports_nothing_heavy():
    allowed_rmrun = ("rmrun.recipe", "rmrun.plugins", "rmrun.backbone")
    for path in sorted((PACKAGE / "recipe").glob("*.py")):
        for name in _imported(path):
            top = name.split(".")[0]
            if top == "rmrun":
                assert name.startswith(allowed_rmrun), (_relative(path), name)
            else:
                # tomli: tomllib's backport on Python 3.10, pure Python
                assert top in sys.stdlib_module_names | {"__future__", "tomli"}, (_relative(path), name)
    for helper in ("plugins.py", "backbone.py"):
        for name in _imported(PACKAGE / helper):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names | {"__future__"} or name.startswith(allowed_rmrun), (helper, name)


def _reads_rank_variable(node: ast.AST) -> bool:
    def is_environ(value) -> bool:
        return isinstance(value, ast.Attribute) and value.attr == "environ"

    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        reading = (isinstance(func, ast.Attribute) and func.attr == "get" and is_environ(func.value)) or \
            (isinstance(func, ast.Attribute) and func.attr == "getenv")
        return reading and node.args[0].value in RANK_VARIABLES
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value):
        return isinstance(node.slice, ast.Constant) and node.slice.value in RANK_VARIABLES
    return False


def test_only_dist_reads_the_rank_variables():
    readers = [_relative(p) for p in SOURCES if any(_reads_rank_variable(n) for n in ast.walk(_tree(p)))]
    assert readers == ["rmrun/dist.py"]


@pytest.mark.parametrize("source,expected", [
    ('import os\nos.environ.get("WORLD_SIZE")', True),
    ('import os\nos.environ["RANK"]', True),
    ('import os\nos.getenv("LOCAL_RANK")', True),
    ('import os\nos.environ["RANK"] = "0"', False),
    ('import os\nos.environ.get("HOME")', False),
])
def test_the_rank_reading_check_itself(source, expected):
    assert any(_reads_rank_variable(n) for n in ast.walk(ast.parse(source))) is expected


def test_only_the_cli_calls_sys_exit():
    callers = []
    for path in SOURCES:
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "sys"):
                callers.append(_relative(path))
    assert sorted(set(callers)) == ["rmrun/cli.py"]


STORE_NAMING_METHODS = {"stage", "open_verified", "open_unverified", "latest", "committed_keys", "retain", "delete",
                        "quarantine", "quarantined", "attempt_writer", "write_record", "read_record", "read_records"}


def _names_a_key_in_place(node: ast.AST) -> bool:
    """A call of a store method whose first argument is a string literal or an f-string."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in STORE_NAMING_METHODS and bool(node.args)
            and (isinstance(node.args[0], ast.JoinedStr)
                 or isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)))


def test_store_keys_are_named_only_in_keys_py():
    offenders = [f"{_relative(p)}:{n.lineno}" for p in SOURCES for n in ast.walk(_tree(p))
                 if _names_a_key_in_place(n) and _relative(p) != "rmrun/store/keys.py"]
    assert offenders == []


@pytest.mark.parametrize("source,expected", [
    ('store.open_unverified("export")', True),
    ('ctx.store.write_record(f"starts/{n}", {}, lease=lease)', True),
    ("store.open_unverified(EXPORT_KEY)", False),
    ('record.get("export")', False),
])
def test_the_key_literal_check_itself(source, expected):
    assert any(_names_a_key_in_place(n) for n in ast.walk(ast.parse(source))) is expected


RUNNER_MODULES = ("runner.py", "graph.py", "context.py", "commands.py")


def test_the_runner_never_imports_a_step_module():
    for name in RUNNER_MODULES:
        imported = [n for n in _imported(PACKAGE / name) if n == "rmrun.steps" or n.startswith("rmrun.steps.")]
        assert imported == [], (name, imported)


def _top_level_functions(path: Path) -> set[str]:
    return {n.name for n in _tree(path).body if isinstance(n, ast.FunctionDef)}


def test_each_step_kind_names_a_step_function_whose_name_is_its_own():
    from rmrun.graph import STEP_KINDS

    elsewhere = set().union(*(_top_level_functions(p) for p in SOURCES if p.parent != PACKAGE / "steps"))
    for kind, target in STEP_KINDS.items():
        module, _, function = target.partition(":")
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert module.startswith("rmrun.steps.") and path.is_file(), (kind, target)
        assert function in _top_level_functions(path), (kind, target)
        assert function not in elsewhere, f"{target}: another module defines {function}() too"
