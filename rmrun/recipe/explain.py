"""Every recipe key with its type, default and documentation, from the schema itself.

One walk over the schema (:func:`tables`) gives both ``rmrun explain``'s text and the
manual's recipe reference (:func:`reference_markdown`), so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

from rmrun.recipe.decode import _dataclass_in, _table_list_in, _type_name
from rmrun.recipe.schema import Recipe

EXTENDS_DOC = "inherit another recipe; tables merge key by key."


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str  # "required", "unset" or the default's repr
    doc: str


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # "schedule", "model.lora"
    doc: str
    keys: tuple[Key, ...]
    many: bool = False  # an array of tables, [[data.sources]]

    @property
    def header(self) -> str:
        return f"[[{self.name}]]" if self.many else f"[{self.name}]"


def _default(f: dataclasses.Field) -> str:
    if f.metadata.get("required"):
        return "required"
    if f.default is not dataclasses.MISSING:
        default = f.default
    else:
        assert f.default_factory is not dataclasses.MISSING, f"{f.name} has a default"
        default = list(f.default_factory())
    return "unset" if default is None else repr(default)


def _walk(cls, table: str, *, many: bool = False) -> Iterator[Table]:
    """``cls``'s table, then the tables nested in it, in schema order."""
    hints = typing.get_type_hints(cls)
    keys, nested = [], []
    for f in dataclasses.fields(cls):
        sub, listed = _dataclass_in(hints[f.name]), _table_list_in(hints[f.name])
        if sub is not None or listed is not None:
            nested.append((sub or listed, f"{table}.{f.name}", listed is not None))
        else:
            keys.append(Key(f.name, _type_name(hints[f.name]), _default(f), f.metadata.get("doc", "")))
    yield Table(table, (cls.__doc__ or "").strip().partition(":")[2].strip(), tuple(keys), many)
    for nested_cls, name, many_of in nested:
        yield from _walk(nested_cls, name, many=many_of)


def tables() -> list[Table]:
    """Every table of a recipe, each followed by the tables nested in it."""
    hints = typing.get_type_hints(Recipe)
    return [t for f in dataclasses.fields(Recipe) for t in _walk(hints[f.name], f.name)]


def explain_text(names=()) -> str:
    """Every table and key, or only those ``names`` name (a table, "data.sources", or a key,
    "data.pair_rule"); ValueError naming one that is neither, with the nearest key."""
    lines = []
    chosen = _chosen(names)
    for table in tables():
        keys = [k for k in table.keys if not names or table.name in chosen or f"{table.name}.{k.name}" in chosen]
        if not keys:
            continue
        lines.append(f"{table.header}  {table.doc}")
        for key in keys:
            default = key.default if key.default == "required" else f"default {key.default}"
            lines.append(f"  {key.name} ({key.type}; {default})")
            lines.append(f"      {key.doc}")
    if not names or "extends" in chosen:
        lines.append(f'extends = "base.toml" (top level): {EXTENDS_DOC}')
    return "\n".join(lines)


def _chosen(names) -> set[str]:
    import difflib

    known = {"extends"} | {t.name for t in tables()} | {f"{t.name}.{k.name}" for t in tables() for k in t.keys}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ValueError(f"{name}: not a recipe table or key{hint}; `rmrun explain` lists them all")
    return set(names)


def anchor(table: str, key: str | None = None) -> str:
    """The reference's anchor for a table or a key: ``schedule``, ``schedule-lr``, ``model-lora-r``."""
    return "-".join([*table.split("."), *([key] if key else [])])


# What Markdown would read as HTML, emphasis or a cell's end, outside code spans.
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "*": "\\*", "|": "\\|"})


def _markdown_text(text: str) -> str:
    """``text`` for a Markdown table cell, its code spans kept as they are."""
    parts = text.split("`")
    parts[::2] = [part.translate(_ESCAPES) for part in parts[::2]]  # the parts outside code spans
    return "`".join(parts)


def reference_markdown() -> str:
    """The recipe reference as Markdown: per table a heading, its doc and a row per key
    (name, type, default, doc); every table and key has an anchor (:func:`anchor`)."""
    out = [
        "Every key a recipe may set, table by table, with its type and default. `rmrun explain` "
        "prints the same, and so does `rmrun run --help`.",
        "",
    ]
    for table in tables():
        doc = _markdown_text(table.doc[:1].upper() + table.doc[1:])
        out += [f"## `{table.header}` {{#{anchor(table.name)}}}", "", doc, ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in table.keys:
            default = key.default if key.default in ("required", "unset") else f"`{key.default}`"
            out.append(
                f"| `{key.name}`{{#{anchor(table.name, key.name)}}} | {_markdown_text(key.type)} "
                f"| {default} | {_markdown_text(key.doc)} |"
            )
        out.append("")
    out += ["## Top level {#top-level}", "", f'`extends = "base.toml"`{{#extends}}: {EXTENDS_DOC}', ""]
    return "\n".join(out)
