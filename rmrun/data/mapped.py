"""Token arrays memory-mapped from the safetensors file they are stored in, never loaded.

A tokenized split is one ``safetensors`` file (``TokenizedPairs.to_arrays``, written with
``safetensors.numpy.save``). That format is an 8-byte little-endian header length, a JSON
header giving each tensor's dtype, shape and ``[begin, end)`` byte range, then the raw
little-endian bytes: so each array can be opened as a read-only array over an ``mmap`` of its byte
range, with no copy. ``safetensors``' own ``safe_open(framework="numpy")`` copies each
tensor into RAM, which is what this module avoids: a rank's resident memory then does not
grow with the number of pairs' tokens (only the pages a batch touches are read, and they
are clean file pages the kernel can drop and share between the ranks of a node).

A mapping stays valid after its file is unlinked (POSIX), so the node-local copy of the
tokenized state can be removed as soon as every process has mapped it; its disk space is
freed when the last mapping closes.

Reading a page of a mapping maps its neighbours too (the kernel's fault-around, 64 KB), and
a mapped page counts as the process's resident memory until it is unmapped: a pass over
pairs drawn at random (an epoch, a sample) would map the whole file. :func:`release_pages`
drops the process's mapping of an array's pages (``madvise(MADV_DONTNEED)``; the pages stay
in the page cache, and the next read maps them again, a minor fault), so the trainer calls
it after each step and a gather of many pairs after each chunk.
"""

from __future__ import annotations

import json
import mmap
import struct

import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "F32": np.dtype("<f4"),
    "U8": np.dtype("u1"),
}


def map_safetensors(path: str) -> dict[str, np.ndarray]:
    """The 1-d tensors of the safetensors file ``path`` by name, each a read-only mapped array
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
        start = data_start + begin
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), start - aligned + end - begin, access=mmap.ACCESS_READ, offset=aligned)
        arrays[name] = np.frombuffer(mapping, dtype=dtype, count=count, offset=start - aligned)
    return arrays


def mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The mapping ``array`` (or the array it is a view of) reads, None for an array in RAM."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's view of the mapping
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages of ``array``'s mapping from this process (nothing for an array in RAM)."""
    mapping = mapping_of(array)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)
