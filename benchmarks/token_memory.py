"""A rank's memory for the token arrays: loaded into RAM (``safetensors.numpy.load_file``, what
rmrun did before) against memory-mapped (``rmrun.data.mapped.map_safetensors``, what it does).

One fresh process per variant builds the data set from a synthetic tokenized split (random ids,
64-511 tokens a side), computes the sampler's lengths and collates 512 batches of 8 pairs spread
over the whole file (sorted by length, as length grouping does), and reports how much its
anonymous resident memory (``RssAnon``: private to the rank, not reclaimable) and its file-backed
resident memory (``RssFile``: clean page-cache pages, shared by the ranks of a node, dropped under
pressure) grew.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

VARIANTS = ("load", "map")

_CHILD = """
import json, sys
import numpy as np
import torch  # noqa: F401  (imported before the baseline: training has it loaded)
from rmrun.data import TokenizedPairs, collate

def resident():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}

variant, path = sys.argv[1], sys.argv[2]
before = resident()
if variant == "load":
    from safetensors.numpy import load_file
    arrays = load_file(path)
else:
    from rmrun.data.mapped import map_safetensors
    arrays = map_safetensors(path)
data = TokenizedPairs.from_arrays(arrays, {})
order = np.argsort(data.lengths().max(axis=1), kind="stable")
for start in range(0, min(len(order), 4096), 8):
    collate(data, order[start : start + 8], pad_token_id=0)
after = resident()
print(json.dumps({name: after[name] - before[name] for name in before}))
"""


def write_split(path: str, *, num_pairs: int) -> int:
    """A synthetic tokenized split of ``num_pairs`` pairs at ``path``; its size in bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {}
    for side in ("chosen", "rejected"):
        lengths = rng.integers(64, 512, num_pairs)
        arrays[f"{side}_ids"] = rng.integers(0, 32000, int(lengths.sum()), dtype=np.int32)
        arrays[f"{side}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays["pair_index"] = np.arange(num_pairs, dtype=np.int64)
    save_file(arrays, path)
    return os.path.getsize(path)


def measure(variant: str, *, path: str) -> dict:
    """MiB of growth of RssAnon and RssFile in a fresh process reading ``path`` as ``variant``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, variant, path], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
