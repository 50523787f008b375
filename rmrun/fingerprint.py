"""Fingerprints: what a run's result depends on, hashed.

The run fingerprint covers the recipe keys that change results (not logging cadence
or output paths) and the versions of rmrun, ColossalAI and torch. Resuming under a
different fingerprint is refused with the list of keys that changed. The world size
is recorded beside it: a change is allowed and reported, because the data position
is kept sample-exact across it.

The data fingerprint names the tokenized data set (its state key): the files'
contents, the tokenizer files, the template, max_length, the overflow and bad-row
policies. Runs that agree on it share one tokenized copy in a state root.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata

from rmrun.recipe.loader import flatten, recipe_to_dict
from rmrun.recipe.schema import NON_RESULT_KEYS, DataSection, ModelSection, Recipe, is_template_text
from rmrun.store import keys


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


def _file_digest(url: str) -> str:
    from rmrun.data import DataError

    try:
        return file_digest(url)
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None
    except OSError as e:
        raise DataError(f"{url}: cannot read: {e}") from None


def data_fingerprint(data: DataSection, model: ModelSection) -> str:
    from rmrun.recipe.backbone import backbone_family

    return digest(
        {
            "train": [_file_digest(u) for u in data.train],
            "eval": [_file_digest(u) for u in data.eval],
            "format": data.format,
            # How rendered text becomes ids; a new rule must not reuse data tokenized by an old one.
            "rule": "scored-text-2",
            "max_length": data.max_length,
            "overflow": data.overflow,
            "bad_rows": data.bad_rows,
            "template": _template_digest(data.chat_template),
            "tokenizer": directory_digest(model.tokenizer or model.pretrain),
            "family": backbone_family(model.pretrain),
        }
    )


def _template_digest(chat_template: str | None) -> str | None:
    if chat_template is None:
        return None
    return digest({"text": chat_template}) if is_template_text(chat_template) else _file_digest(chat_template)


def tokenize_key(data: DataSection, model: ModelSection) -> str:
    """The state key of the tokenized data set."""
    return keys.tokenize_key(data_fingerprint(data, model))
