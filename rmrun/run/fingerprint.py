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
from rmrun.recipe.results import LATER_KEYS, NON_RESULT_KEYS
from rmrun.recipe.schema import DataSection, ModelSection, Recipe, is_template_text
from rmrun.store import keys
from rmrun.store.streams import remote_stamp


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def result_keys(recipe: Recipe) -> dict:
    """The flattened recipe keys that change what a run computes, with their values."""
    return {
        k: v
        for k, v in sorted(flatten(recipe_to_dict(recipe)).items())
        if k not in NON_RESULT_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])
    }


def versions() -> dict:
    return {name: _version(name) for name in ("rmrun", "colossalai", "torch", "transformers")}


def run_identity(recipe: Recipe, digests: InputDigests | None = None) -> dict:
    """What the run is: its result-changing keys (as resolved, paths included, for the
    readers of the state), the versions it runs under, the contents of its inputs, and
    ``fingerprint``, a digest of all of it but the input paths (moved inputs are the same run)."""
    identity: dict = {
        "keys": result_keys(recipe),
        "versions": versions(),
        "inputs": input_contents(recipe, digests or InputDigests()),
    }
    compared = {**identity, "keys": _without_paths(identity["keys"])}
    identity["fingerprint"] = digest(compared)
    return identity


def _without_paths(keys: dict) -> dict:
    """Result keys less the inputs' paths (the identity holds their contents): the input keys
    left out, and each of data.sources without its files."""
    out = {k: v for k, v in keys.items() if k not in INPUT_KEYS}
    if out.get("data.sources"):
        out["data.sources"] = [{k: v for k, v in s.items() if k not in SOURCE_FILE_KEYS} for s in out["data.sources"]]
    return out


def _source_paths(keys: dict) -> dict:
    """The paths of the data.sources input keys (INPUT_KEYS), from the result keys."""
    sources = keys.get("data.sources") or []
    return {f"data.sources.{k}": [u for s in sources for u in s.get(k, [])] for k in SOURCE_FILE_KEYS}


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def changed_keys(stored: dict, current: dict) -> list[str]:
    """Human-readable differences between two run identities: a key whose value changed, or
    an input whose content did (named by its path now); an input that only moved is the same."""
    by_content = "inputs" in stored and "inputs" in current
    out = []
    for group in ("keys", "versions"):
        old, new = stored.get(group, {}), current.get(group, {})
        if by_content and group == "keys":
            old, new = _without_paths(old), _without_paths(new)
        for key in sorted(set(old) | set(new)):
            if by_content and group == "keys" and key in INPUT_KEYS:
                continue
            if old.get(key) != new.get(key):
                out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if by_content:
        paths = {**current.get("keys", {}), **_source_paths(current.get("keys", {}))}
        for key in INPUT_KEYS:
            out += _changed_input(key, stored["inputs"].get(key), current["inputs"].get(key), paths.get(key))
    return out


def _changed_input(key: str, old, new, path) -> list[str]:
    if old == new:
        return []
    if isinstance(old, list) and isinstance(new, list) and isinstance(path, list):
        if len(old) != len(new):
            return [f"{key}: {len(old)} file(s) in the stored run, {len(new)} now"]
        if sorted(old) == sorted(new):
            return [f"{key}: the same files in another order (the order of the pairs is part of the run)"]
        return [
            f"{key}: {p}: its content differs from the file the stored run read"
            for p, a, b in zip(path, old, new)
            if a != b
        ]
    if old is None or new is None:
        return [
            f"{key}: {'set' if old is None else 'unset'} now, {'unset' if old is None else 'set'} in the stored run"
        ]
    return [f"{key}: {path}: its content differs from what the stored run read"]


def file_digest(url: str, hasher=None) -> str:
    import fsspec

    hasher = hasher or hashlib.sha256()
    with fsspec.open(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


# What a backend's file listing says about a file's version, most specific first: a
# remote file whose stamp and size are unchanged is not read again.


class InputDigests:
    """Content digests (sha256) of the files a run reads, each computed once per version.

    A run is what its inputs contain, wherever they live: the identity and the tokenized
    data's key hold these digests, not paths. A file is read in full only when its version
    stamp is new (local: size and mtime; remote: size and the store's ETag or checksum);
    ``cache`` maps stamps to digests and is kept in the state (``records/input-digests``),
    so a start does not re-read terabytes of data or weights it has hashed before.
    """

    def __init__(self, cache: dict | None = None):
        self.cache = dict(cache or {})
        self.used: dict[str, str] = {}

    def file(self, url: str) -> str:
        stamp = _stamp(url)
        digest_ = (self.used.get(stamp) or self.cache.get(stamp)) if stamp else None
        if digest_ is None:
            digest_ = _file_digest(url)
        if stamp:
            self.used[stamp] = digest_
        return digest_

    def path(self, path: str) -> str:
        """A file's digest, a directory's (its files' names and digests), or, for a name
        that is neither (a hub id), the name."""
        if "://" in path or os.path.isfile(path):
            return self.file(path)
        if not os.path.isdir(path):
            return digest({"name": path})
        files = {}
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                files[os.path.relpath(full, path).replace(os.sep, "/")] = self.file(full)
        return digest(files)

    def record(self) -> dict:
        """The cache to store: the stamps this start used (older versions are dropped)."""
        return dict(sorted(self.used.items()))


def _stamp(url: str) -> str | None:
    """A string that changes whenever the file at ``url`` may have changed; None when the
    store tells nothing reliable (the file is then hashed every time)."""
    if "://" not in url or url.startswith("file://"):
        path = os.path.abspath(url.split("://", 1)[-1])
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - no stamp: the read that follows reports the real error
        return None
    stamp = remote_stamp(info)
    return f"{url}|{stamp}" if stamp is not None else None


# Recipe keys that name inputs: the identity compares their contents, not their paths.
INPUT_KEYS = (
    "data.train",
    "data.eval",
    "data.sources.files",
    "data.sources.eval",
    "data.chat_template",
    "model.pretrain",
    "model.tokenizer",
)
SOURCE_FILE_KEYS = ("files", "eval")  # the keys of a data.sources table that name files


def input_contents(recipe: Recipe, digests: InputDigests) -> dict:
    """{recipe key: content digest (a list for a list of files)} of the inputs a recipe names."""
    out: dict = {
        "data.train": [digests.file(u) for u in recipe.data.train],
        "data.eval": [digests.file(u) for u in recipe.data.eval],
        "model.pretrain": digests.path(recipe.model.pretrain),
        "model.tokenizer": digests.path(recipe.model.tokenizer) if recipe.model.tokenizer else None,
    }
    if recipe.data.sources:  # (absent without: the inputs of earlier runs kept)
        for k in SOURCE_FILE_KEYS:
            out[f"data.sources.{k}"] = [digests.file(u) for source in recipe.data.sources for u in getattr(source, k)]
    template = recipe.data.chat_template
    out["data.chat_template"] = _template_digest(template, digests) if template is not None else None
    return out


def _template_digest(chat_template: str, digests: InputDigests) -> str:
    return digest({"text": chat_template}) if is_template_text(chat_template) else digests.file(chat_template)


def _file_digest(url: str) -> str:
    from rmrun.data import DataError

    try:
        return file_digest(url)
    except FileNotFoundError:
        raise DataError(f"{url}: file not found") from None
    except OSError as e:
        raise DataError(f"{url}: cannot read: {e}") from None


def pair_count_key(urls, *, format: str, bad_rows: str, margins: str = "none", extra: dict | None = None) -> str | None:
    """The key of ``urls``' pair count in ``records/pair-counts``: their version stamps (cheap:
    no read) and the policies that decide what a pair is (``extra``: which side of a prompt
    split, say); None when a file has no stamp."""
    stamps = [_stamp(u) for u in urls]
    if not stamps or None in stamps:
        return None
    policies = {"format": format, "bad_rows": bad_rows, **({"margins": margins} if margins != "none" else {})}
    return digest({"files": stamps, **policies, **(extra or {})})


def data_fingerprint(data: DataSection, model: ModelSection, digests: InputDigests | None = None) -> str:
    from rmrun.recipe.backbone import backbone_family

    digests = digests or InputDigests()
    return digest(
        {
            "train": [digests.file(u) for u in data.train],
            "eval": [digests.file(u) for u in data.eval],
            "format": data.format,
            **({"sources": _sources_digest(data, digests)} if data.sources else {}),
            # How rendered text becomes ids; a new rule must not reuse data tokenized by an old one.
            "rule": "scored-text-2",
            "max_length": data.max_length,
            "overflow": data.overflow,
            "bad_rows": data.bad_rows,
            **({"margins": data.margins} if data.margins != "none" else {}),  # (keys of earlier runs kept)
            **({"eval_split": [data.eval_split, data.eval_split_seed]} if data.eval_split is not None else {}),
            "template": _template_digest(data.chat_template, digests) if data.chat_template else None,
            "tokenizer": digests.path(model.tokenizer or model.pretrain),
            "family": backbone_family(model.pretrain),
        }
    )


def _sources_digest(data: DataSection, digests: InputDigests) -> list:
    """What of data.sources the tokenized pairs depend on (not the weights: they pick pairs, later)."""
    return [
        {
            "name": s.name,
            "format": s.format or data.format,
            "files": [digests.file(u) for u in s.files],
            "eval": [digests.file(u) for u in s.eval],
        }
        for s in data.sources
    ]


def tokenize_key(data: DataSection, model: ModelSection, digests: InputDigests | None = None) -> str:
    """The state key of the tokenized data set."""
    return keys.tokenize_key(data_fingerprint(data, model, digests))
