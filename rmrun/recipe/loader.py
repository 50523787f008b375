"""TOML → frozen, typed :class:`Recipe`, reporting every problem in one pass.

Merge rules for ``extends = "base.toml"`` (a path relative to the extending file):
the base is loaded first (recursively); then each table of the extending file is
merged key by key into the base's table of the same name, so a recipe overrides
single keys without repeating a table. Lists and scalars replace; tables merge.
``--set section.key=value`` overrides apply last, typed by the schema.

Data file lists (``path="files"``) are expanded here, so the plan and every step see
files: a local directory stands for the data files directly in it, a glob pattern
(``*``, ``?``, ``[...]``, ``**``) for the data files it matches, each sorted by name.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
import typing
from typing import Any, get_args, get_origin

from rmrun.recipe.decode import (
    _dataclass_in,
    _Decoder,
    _did_you_mean,
    _field_type,
    _label,
    _section_fields,
    _table_list_in,
)
from rmrun.recipe.schema import DATA_FILE_SUFFIXES, PACKAGE_PREFIX, Recipe, is_data_file_name, is_template_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class RecipeError(ValueError):
    """One or more problems with a recipe; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


URL_SCHEMES = ("://",)


def _is_url(value: str) -> bool:
    return "://" in value


def _resolve_field(field_path, value: str, base_dir: str) -> str:
    if field_path == "or-template" and is_template_text(value):
        return value  # the template itself, not a file name
    if field_path == "or-name" and value.startswith(PACKAGE_PREFIX):
        from rmrun.recipe.backbone import package_directory

        return package_directory(value) or value  # not installed: check names the package
    resolved = _resolve_path(value, base_dir)
    if field_path == "or-name" and not os.path.exists(resolved):
        return value  # a hub id, not a local directory
    return resolved


GLOB_MAGIC = re.compile(r"[*?[]")
DATA_FILES = f"data files ({', '.join(DATA_FILE_SUFFIXES)}, maybe compressed)"


def _expand_files(values: list, base_dir: str, *, label: str) -> tuple[list, list[str]]:
    """``values`` resolved against ``base_dir``, each local directory or glob replaced by the data
    files it holds, sorted; and a problem line for each that holds none (it is kept as given).

    A path that is a file stays, even with glob characters in its name; a missing one stays
    for preflight to name; URLs stay as they are (remote files are listed by the tokenize step).
    """
    files: list = []
    problems = []
    for value in values:
        if not isinstance(value, str):
            files.append(value)  # the decoder reports the type
            continue
        path = _resolve_path(value, base_dir)
        if not path or _is_url(path) or os.path.isfile(path):
            files.append(path)
            continue
        if os.path.isdir(path):
            found = [os.path.join(path, name) for name in os.listdir(path) if not name.startswith(".")]
            what = f"directory {path} holds no"
        elif GLOB_MAGIC.search(path):
            found = glob.glob(path, recursive=True)
            what = f"{path} matches no"
        else:
            files.append(path)
            continue
        found = sorted(f for f in found if is_data_file_name(f) and os.path.isfile(f))
        if not found:
            problems.append(f"{label}: {what} {DATA_FILES}")
            found = [path]
        files += found
    return files, problems


def _resolve_path(value: str, base_dir: str) -> str:
    if _is_url(value) or os.path.isabs(value) or not value:
        return value
    if value.startswith("~"):
        return os.path.expanduser(value)
    return os.path.normpath(os.path.join(base_dir, value))


# --------------------------------------------------------------------------- TOML


BOM = b"\xef\xbb\xbf"  # editors on Windows start UTF-8 files with it; TOML has no use for it


def _read_toml(path: str, problems: list[str]) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
        return None
    except IsADirectoryError:
        problems.append(f"{path}: is a directory, not a recipe file")
        return None
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror}")
        return None
    skipped = len(BOM) if data.startswith(BOM) else 0
    try:
        return tomllib.loads(data[skipped:].decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: invalid TOML: {e}")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: invalid TOML: not UTF-8 text (byte {e.start + skipped})")
    return None


def _resolve_paths_in(raw: dict, cls, base_dir: str, expansions: list[tuple[str, str]], where: str = "") -> dict:
    """Resolve path fields of one file's raw tables against that file's directory; a problem
    expanding a data file list goes to ``expansions`` as (key path, line)."""
    out = {}
    fields = _section_fields(cls)
    for key, value in raw.items():
        f = fields.get(key)
        path = f"{where}.{key}" if where else key
        if f is None:
            out[key] = value
            continue
        sub = _dataclass_in(f.type if not isinstance(f.type, str) else _field_type(cls, key))
        listed = _table_list_in(f.type if not isinstance(f.type, str) else _field_type(cls, key))
        if sub is not None and isinstance(value, dict):
            out[key] = _resolve_paths_in(value, sub, base_dir, expansions, path)
        elif listed is not None and isinstance(value, list):
            out[key] = [
                _resolve_paths_in(v, listed, base_dir, expansions, f"{path}[{i}]") if isinstance(v, dict) else v
                for i, v in enumerate(value)
            ]
        elif f.metadata.get("path") == "files" and isinstance(value, (str, list)):
            values = [value] if isinstance(value, str) else value
            out[key], problems = _expand_files(values, base_dir, label=_label(path))
            expansions += [(path, problem) for problem in problems]
        elif f.metadata.get("path") and isinstance(value, str):
            out[key] = _resolve_field(f.metadata["path"], value, base_dir)
        elif f.metadata.get("path") and isinstance(value, list):
            out[key] = [_resolve_path(v, base_dir) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _key_origins(raw: dict, path: str, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    out = {}
    for key, value in raw.items():
        out[prefix + (key,)] = path
        if isinstance(value, dict):
            out.update(_key_origins(value, path, prefix + (key,)))
    return out


def _load_raw(
    path: str, problems: list[str], origins: dict, expansions: list[tuple[str, str, str]], seen: tuple[str, ...] = ()
) -> dict:
    """The merged tables of ``path`` and its bases; ``origins`` gets the file that set each key,
    ``expansions`` the data file lists that expanded to nothing, as (key path, file, problem)."""
    real = os.path.realpath(path)
    if real in seen:
        problems.append(f"{path}: extends: forms a cycle ({' -> '.join(seen + (real,))})")
        return {}
    raw = _read_toml(path, problems)
    if raw is None:
        return {}
    base_dir = os.path.dirname(os.path.abspath(path))
    parent = raw.pop("extends", None)
    found: list[tuple[str, str]] = []
    raw = _resolve_paths_in(raw, Recipe, base_dir, found)
    expansions += [(key, path, problem) for key, problem in found]
    merged = raw
    if parent is None:
        pass
    elif not isinstance(parent, str):
        problems.append(f"{path}: extends: expected a file name (string), got {type(parent).__name__}")
    elif not os.path.exists(parent_path := _resolve_path(parent, base_dir)):
        problems.append(f"{path}: extends: file not found: {parent_path}")
    else:
        merged = _merge(_load_raw(parent_path, problems, origins, expansions, seen + (real,)), raw)
    origins.update(_key_origins(raw, path))
    return merged


# ---------------------------------------------------------------- overrides


def _parse_override(text: str, problems: list[str]) -> tuple[list[str], Any] | None:
    if "=" not in text:
        problems.append(f"--set {text}: expected KEY=VALUE, e.g. --set schedule.lr=1e-5")
        return None
    key, _, literal = text.partition("=")
    parts = key.strip().split(".")
    try:
        value = tomllib.loads(f"v = {literal.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = literal.strip()  # bare strings need no quotes on the command line
    return parts, value


def _apply_override(raw: dict, parts: list[str], value, problems: list[str], text: str) -> None:
    cls: type = Recipe
    node = raw
    for i, part in enumerate(parts):
        fields = _section_fields(cls)
        if part not in fields:
            where = ".".join(parts[:i] + [part])
            problems.append(f"--set {text}: unknown key {where}{_did_you_mean(part, fields)}")
            return
        if i == len(parts) - 1:
            tp = _field_type(cls, part)
            if _dataclass_in(tp) is not None:
                optional = type(None) in get_args(tp)
                if optional and isinstance(value, bool):
                    # An optional table turned on (its defaults) or off: --set model.lora=false.
                    if not value:
                        node.pop(part, None)
                    elif not isinstance(node.get(part), dict):
                        node[part] = {}
                    return
                hint = " (or true/false to turn it on or off)" if optional else ""
                problems.append(f"--set {text}: {'.'.join(parts)} is a table; set one of its keys{hint}")
                return
            if get_origin(tp) is tuple and isinstance(value, str) and fields[part].metadata.get("path"):
                value = [value]
            listed = _table_list_in(tp)
            if listed is not None and isinstance(value, list):  # --set data.sources=[{...}, ...]
                expansions: list[tuple[str, str]] = []
                value = _resolve_paths_in({part: value}, cls, os.getcwd(), expansions, ".".join(parts[:-1]))[part]
                problems += [f"--set {text}: {problem}" for _, problem in expansions]
            if fields[part].metadata.get("path") == "files" and isinstance(value, list):
                value, expanded = _expand_files(value, os.getcwd(), label=_label(".".join(parts)))
                problems += [f"--set {text}: {problem}" for problem in expanded]
            elif fields[part].metadata.get("path") and isinstance(value, str):
                value = _resolve_field(fields[part].metadata["path"], value, os.getcwd())
            elif fields[part].metadata.get("path") and isinstance(value, list):
                value = [_resolve_path(v, os.getcwd()) if isinstance(v, str) else v for v in value]
            node[part] = value
            return
        sub = _dataclass_in(_field_type(cls, part))
        if sub is None:
            problems.append(f"--set {text}: {'.'.join(parts[: i + 1])} is not a table")
            return
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return  # the recipe has a non-table here; decoding reports it
        cls = sub


# ------------------------------------------------------------------- public


def load_recipe(path: str, *, overrides: typing.Sequence[str] = (), validate: bool = True) -> Recipe:
    """Load, merge, override, decode and (with ``validate``) statically validate a recipe file.

    Raises :class:`RecipeError` holding every problem found, one line each. ``validate=False``
    leaves the cross-field checks to the caller (``rmrun bench`` reports a combination of
    swept values that fails them, and goes on).
    """
    problems: list[str] = []
    origins: dict[tuple[str, ...], str] = {}
    expansions: list[tuple[str, str, str]] = []
    raw = _load_raw(path, problems, origins, expansions)
    if problems:
        raise RecipeError(problems)
    decoder = _Decoder(path, origins)
    replaced = _overridden(overrides)
    for key, source, problem in expansions:
        # A list a later file or the command line replaces is not the one that runs.
        if origins.get(tuple(key.split("."))) == source and key not in replaced:
            problems.append(f"{source}: {problem}")
            decoder.failed_keys.add(key)
            decoder.failed_tables.add(key.split(".")[0])
    for text in overrides:
        override_problems: list[str] = []
        parsed = _parse_override(text, override_problems)
        if parsed is not None:
            _apply_override(raw, parsed[0], parsed[1], override_problems, text)
            if override_problems:
                decoder.failed_tables.add(parsed[0][0])
            else:
                origins[tuple(parsed[0])] = f"{path}: --set {text}"
        problems += [f"{path}: {p}" for p in override_problems]
    recipe = decoder.section("", Recipe, raw)
    problems += decoder.problems
    if not validate:
        if problems:
            raise RecipeError(problems)
        return recipe
    from rmrun.recipe.validate import cross_field_problems, value_problems

    # Every problem in one pass. A key's own value is judged whatever else is wrong, unless
    # that value is unknown (it failed to decode); cross-field checks skip a table with any
    # problem (its defaults, or a misspelt key, would give false alarms).
    for problem in value_problems(recipe):
        where = _key_of(problem)
        if decoder.value_known(where):
            problems.append(f"{decoder.source_of(where)}: {problem}")
    for problem in cross_field_problems(recipe):
        where = _key_of(problem)
        if where.split(".")[0] not in decoder.failed_tables:
            problems.append(f"{decoder.source_of(where)}: {problem}")
    if problems:
        raise RecipeError(problems)
    return recipe


def _key_of(problem: str) -> str:
    """The dotted key (or table) a problem line names: ``[model.lora].r: ...`` → ``model.lora.r``."""
    table, _, rest = problem[1:].partition("]")
    return table + (rest.split(":")[0] if rest.startswith(".") else "")


def _overridden(overrides: typing.Sequence[str]) -> set[str]:
    """The dotted keys the ``--set`` overrides replace."""
    return {text.partition("=")[0].strip() for text in overrides if "=" in text}


def recipe_to_dict(recipe) -> dict:
    """The recipe as plain data (tuples become lists), for plans and fingerprints."""

    def convert(value):
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    return convert(recipe)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def recipe_from_keys(keys: dict[str, Any], *, source: str) -> Recipe:
    """A recipe back from its flattened keys (``flatten(recipe_to_dict(...))``, e.g. the result
    keys a run stored); absent keys take their defaults. Paths are used as stored."""
    raw: dict = {}
    for path, value in keys.items():
        if value is None:  # an absent optional table or key
            continue
        *tables, key = path.split(".")
        table = raw
        for name in tables:
            table = table.setdefault(name, {})
        table[key] = value
    decoder = _Decoder(source, {})
    recipe = decoder.section("", Recipe, raw)
    if decoder.problems:
        raise RecipeError(decoder.problems)
    return recipe
