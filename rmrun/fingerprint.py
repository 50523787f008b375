"""Fingerprints: what a run's result depends on, hashed.

The run fingerprint covers the recipe keys that change results (not logging cadence
or output paths) and the versions of rmrun, ColossalAI and torch. Resuming under a
different fingerprint is refused with the list of keys that changed. The world size
is recorded beside it: a change is allowed and reported, because the data position
is kept sample-exact across it.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata

from rmrun.recipe.loader import flatten, recipe_to_dict
from rmrun.recipe.schema import NON_RESULT_KEYS, Recipe


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def result_keys(recipe: Recipe) -> dict:
    """The flattened recipe keys that change what a run computes, with their values."""
    return {k: v for k, v in sorted(flatten(recipe_to_dict(recipe)).items()) if k not in NON_RESULT_KEYS}


def versions() -> dict:
    return {name: _version(name) for name in ("rmrun", "colossalai", "torch", "transformers")}


def run_identity(recipe: Recipe) -> dict:
    return {"keys": result_keys(recipe), "versions": versions()}


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def changed_keys(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between two run identities."""
    out = []
    for group in ("keys", "versions"):
        old, new = stored.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def file_digest(url: str, hasher=None) -> str:
    import fsspec

    hasher = hasher or hashlib.sha256()
    with fsspec.open(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def directory_digest(path: str) -> str:
    """Hash of a local directory's files (a tokenizer), or of the name for a hub id."""
    hasher = hashlib.sha256()
    if not os.path.isdir(path):
        hasher.update(path.encode())
        return hasher.hexdigest()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            hasher.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                hasher.update(f.read())
    return hasher.hexdigest()
