"""Reading a W&B run's local record file (``run-<id>.wandb``), which its own package cannot.

W&B writes every record of a run (its history rows, summary, files...) to this file as it
runs, in LevelDB's log format: a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0), then
32 KiB blocks of chunks, each ``crc32c (4) | length (2, little-endian) | type (1) | data``,
a record's data split over chunks of type FULL, or FIRST, MIDDLE..., LAST; each record is a
``wandb_internal_pb2.Record``. A file cut short (its writer killed) ends at its last whole
record. The checksums are not verified (reading only, never uploading).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> Iterator:
    """Every whole record of the file, as ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B record file")
    position, parts = len(HEADER), []
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        chunk = data[position + 7 : position + 7 + length]
        if kind == 0 or len(chunk) < length:
            break  # zeros past the last write, or a chunk cut short
        position += 7 + length
        if kind in (FULL, FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated code
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def history(path: str) -> Iterator[tuple[int, dict]]:
    """``(step, {key: value})`` of each history row of the file, in the order written."""
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    row[key] = json.loads(item.value_json)
            yield record.history.step.num, row


def held_steps(path: str) -> dict[str, int]:
    """The last step of each metric in the file's history."""
    held: dict[str, int] = {}
    for step, row in history(path):
        for key in row:
            held[key] = max(step, held.get(key, -1))
    return held
