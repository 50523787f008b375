"""The recipe schema's one field constructor: a dataclass field with its documentation."""

from __future__ import annotations

from dataclasses import field


def doc(text: str, default=None, *, factory=None, path: bool | str = False, required: bool = False):
    """A dataclass field with its user-facing documentation attached."""
    metadata = {"doc": text, "path": path, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
