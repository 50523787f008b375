"""Which model ``rmrun score``/``eval``/``report`` open for a path: an export directory, the
export a state root published, or, before a run has exported, its newest checkpoint."""

from __future__ import annotations

import os

from rmrun.serve.exported import Export, load_export
from rmrun.serve.snapshot import open_newest_checkpoint


def _export_of_state(model: str) -> str | None:
    """The export URL a state root (``run.state``) published, if ``model`` is one."""
    from rmrun.store import StateStore
    from rmrun.store.errors import NewerFormat, StoreUnreachable
    from rmrun.store.keys import EXPORT_KEY

    try:
        record = StateStore(model).open_unverified(EXPORT_KEY)
    except (NewerFormat, StoreUnreachable):  # a state, but one this rmrun must not read now
        raise
    except Exception:  # not a state root at all: the caller reports the path as it was given
        return None
    return record.manifest["meta"].get("url") if record is not None else None


def open_export(model: str, *, device=None) -> Export:
    """Load an export directory (local path or fsspec URL) made by ``rmrun run``, or the export
    a state root published."""
    local_export = "://" not in model and os.path.exists(os.path.join(model, "config.json"))
    if not local_export:
        published = _export_of_state(model)
        if published is not None:
            model = published
        else:  # a state whose run has not exported yet: its newest committed checkpoint
            snapshot = open_newest_checkpoint(model, device=device)
            if snapshot is not None:
                return snapshot
    return load_export(model, device=device)
