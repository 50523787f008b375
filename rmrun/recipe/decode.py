"""Raw TOML tables to the frozen dataclasses of :mod:`rmrun.recipe.schema`, typed by the schema.

A :class:`_Decoder` checks every value against its field's type and collects every problem
as one line, ``file: [table].key: message``, naming the file (or ``--set``) that set the
key. Both the key and its table are remembered: a check of one key's value skips a key
whose value is unknown (it failed to decode, or its table did), and a cross-field check
skips a table with any problem (an unknown key there may be a misspelt key the check reads).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Literal, Union, get_args, get_origin


def _section_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _dataclass_in(tp) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``Optional[X]``), if any."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                return arg
    return None


def _table_list_in(tp) -> type | None:
    """The dataclass of an array of tables (``tuple[X, ...]``: ``[[data.sources]]``), if ``tp`` is one."""
    if get_origin(tp) is tuple:
        return _dataclass_in(get_args(tp)[0])
    return None


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(f'"{a}"' for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _label(path: str) -> str:
    """``schedule.lr`` → ``[schedule].lr``; a top-level name → ``[name]``."""
    table, dot, key = path.rpartition(".")
    if not dot:
        return f"[{path}]"
    return f"[{table}].{key}"


def _did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Decoder:
    def __init__(self, source: str, origins: dict[tuple[str, ...], str]):
        self.source = source
        self.origins = origins  # key path -> the file (or --set) that set it
        self.problems: list[str] = []
        self.failed_tables: set[str] = set()  # top-level tables with a problem
        self.failed_keys: set[str] = set()  # dotted paths whose value is unknown (list indexes dropped)

    def source_of(self, where: str) -> str:
        parts = tuple(part.split("[")[0] for part in where.split("."))
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.origins:
                return self.origins[parts[:n]]
        return self.source

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source_of(where)}: {_label(where)}: {message}")
        self.failed_tables.add(where.split(".")[0].split("[")[0])
        self.failed_keys.add(where.split("[")[0])

    def value_known(self, key: str) -> bool:
        """Whether the dotted ``key`` holds what the recipe says: neither it nor a table
        above it failed to decode (an absent value is its default, which is known)."""
        parts = key.split(".")
        return not any(".".join(parts[:n]) in self.failed_keys for n in range(1, len(parts) + 1))

    def value(self, where: str, tp, value):
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if value is None:
                return None
            return self.value(where, options[0], value)
        sub = _dataclass_in(tp)
        if sub is not None:
            if not isinstance(value, dict):
                self.fail(where, f"expected a table, got {type(value).__name__}")
                return None
            return self.section(where, sub, value)
        if origin is Literal:
            allowed = get_args(tp)
            if value not in allowed:
                hint = _did_you_mean(str(value), [str(a) for a in allowed])
                self.fail(where, f"{value!r} is not one of {', '.join(map(repr, allowed))}{hint}")
                return None
            return value
        if origin is tuple:
            if not isinstance(value, list):
                if isinstance(value, str):
                    value = [value]
                else:
                    self.fail(where, f"expected a list, got {type(value).__name__}")
                    return None
            item = get_args(tp)[0]
            return tuple(self.value(f"{where}[{i}]", item, v) for i, v in enumerate(value))
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(where, f"expected true or false, got {value!r}")
                return None
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(where, f"expected an integer, got {value!r}")
                return None
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(where, f"expected a number, got {value!r}")
                return None
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(where, f"expected a string, got {value!r}")
                return None
            return value
        raise AssertionError(f"unsupported schema type {tp!r}")

    def section(self, where: str, cls, raw: dict):
        hints = typing.get_type_hints(cls)
        fields = _section_fields(cls)
        kwargs = {}
        for key, value in raw.items():
            path = f"{where}.{key}" if where else key
            if key not in fields:
                self.fail(path, f"unknown {'key' if where else 'table'}{_did_you_mean(key, fields)}")
                continue
            decoded = self.value(path, hints[key], value)
            if decoded is not None or value is None:
                kwargs[key] = decoded
        for name, f in fields.items():
            sub = hints[name] if dataclasses.is_dataclass(hints[name]) else None
            if sub is not None and name not in raw:
                # An absent table still has required keys (Optional tables stay absent).
                kwargs[name] = self.section(f"{where}.{name}" if where else name, sub, {})
            if f.metadata.get("required") and name not in raw:
                self.fail(f"{where}.{name}" if where else name, "required key is missing")
        return cls(**kwargs)
