"""Token arrays memory-mapped from the safetensors file they are stored in, never loaded.

A tokenized split is one ``safetensors`` file (``TokenizedPairs.to_arrays``, written with
``safetensors.numpy.save``). That format is an 8-byte little-endian header length, a JSON
header giving each tensor's dtype, shape and ``[begin, end)`` byte range, then the raw
little-endian bytes: so each array can be opened as a read-only ``np.memmap`` of its byte
range, with no copy. ``safetensors``' own ``safe_open(framework="numpy")`` copies each
tensor into RAM, which is what this module avoids: a rank's resident memory then does not
grow with the number of pairs' tokens (only the pages a batch touches are read, and they
are clean file pages the kernel can drop and share between the ranks of a node).

A mapping stays valid after its file is unlinked (POSIX), so the node-local copy of the
tokenized state can be removed as soon as every process has mapped it; its disk space is
freed when the last mapping closes.
"""

from __future__ import annotations

import json
import struct

import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F32": np.dtype("<f4"),
    "U8": np.dtype("u1"),
}


def map_safetensors(path: str) -> dict[str, np.ndarray]:
    """The 1-d tensors of the safetensors file ``path`` by name, each a read-only ``np.memmap``
    (an empty tensor, which cannot be mapped, is an empty in-RAM array)."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    data_start = 8 + header_size
    arrays: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, not one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // dtype.itemsize
        if list(entry["shape"]) != [count]:
            raise ValueError(f"{path}: tensor {name} has shape {entry['shape']}; only 1-d arrays are mapped")
        if count == 0:
            arrays[name] = np.zeros(0, dtype=dtype)
            continue
        arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=(count,))
    return arrays
