"""Every recipe key with its type, default and documentation, from the schema itself."""

from __future__ import annotations

import dataclasses
import typing

from rmrun.recipe.decode import _dataclass_in, _type_name
from rmrun.recipe.schema import Recipe


def _lines(cls, table: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = [f"[{table}]  {(cls.__doc__ or '').strip().partition(':')[2].strip()}"]
    nested = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            nested.append((sub, f"{table}.{f.name}"))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{f.name} has a default"
            default = list(f.default_factory())
        default_text = "required" if f.metadata.get("required") else f"default {default!r}".replace("None", "unset")
        out.append(f"  {f.name} ({_type_name(hints[f.name])}; {default_text})")
        out.append(f"      {f.metadata.get('doc', '')}")
    for sub, name in nested:
        out += _lines(sub, name)
    return out


def explain_text() -> str:
    lines = []
    for f in dataclasses.fields(Recipe):
        lines += _lines(typing.get_type_hints(Recipe)[f.name], f.name)
    lines.append('extends = "base.toml" (top level): inherit another recipe; tables merge key by key.')
    return "\n".join(lines)
