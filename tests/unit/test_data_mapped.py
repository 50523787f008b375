"""Token arrays are memory-mapped from their safetensors file, not loaded (rmrun/data/mapped.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy

from rmrun.data import TokenizedPairs
from rmrun.data.mapped import map_safetensors, mapping_of
from rmrun.run.steps.tokenize import ARRAY_FILES, _load
from tests.helpers import pairs_of

SPLIT = pairs_of(
    [[1, 5, 6, 7], [1, 8], [1, 9, 9, 9, 9, 2]],
    [[1, 5, 6], [1, 8, 4, 4], [1, 3]],
)


def _write_state(directory, splits: dict[str, TokenizedPairs]) -> None:
    for split, tokenized in splits.items():
        safetensors.numpy.save_file(tokenized.to_arrays(), os.path.join(directory, ARRAY_FILES[split]))
    with open(os.path.join(directory, "stats.json"), "w") as f:
        json.dump({split: {"pairs": len(t)} for split, t in splits.items()}, f)


def test_the_tokenize_step_maps_every_array_and_they_equal_the_stored_ones(tmp_path):
    _write_state(tmp_path, {"train": SPLIT, "eval": SPLIT.subset(np.array([2, 0]))})
    loaded = _load(str(tmp_path))
    assert set(loaded) == {"train", "eval"}
    for split, tokenized in loaded.items():
        stored = safetensors.numpy.load_file(str(tmp_path / ARRAY_FILES[split]))
        for name, array in tokenized.to_arrays().items():
            assert mapping_of(getattr(tokenized, name)) is not None, f"{split} {name} is loaded, not mapped"
            assert array.dtype == stored[name].dtype and array.tobytes() == stored[name].tobytes(), name
    train = loaded["train"]
    assert [train.chosen(i).tolist() for i in range(3)] == [[1, 5, 6, 7], [1, 8], [1, 9, 9, 9, 9, 2]]
    np.testing.assert_array_equal(train.lengths(), SPLIT.lengths())


def test_a_mapping_outlives_its_file(tmp_path):
    """The node copy's folder is removed once every rank has mapped it."""
    path = str(tmp_path / "train.safetensors")
    safetensors.numpy.save_file(SPLIT.to_arrays(), path)
    arrays = map_safetensors(path)
    os.unlink(path)
    assert arrays["rejected_ids"].tolist() == [1, 5, 6, 1, 8, 4, 4, 1, 3]


def test_an_empty_array_is_an_empty_array(tmp_path):
    path = str(tmp_path / "empty.safetensors")
    safetensors.numpy.save_file({"pair_index": np.zeros(0, dtype=np.int64)}, path)
    empty = map_safetensors(path)["pair_index"]
    assert empty.dtype == np.int64 and empty.shape == (0,)


def test_only_1d_arrays_of_known_dtypes_are_mapped(tmp_path):
    path = str(tmp_path / "odd.safetensors")
    safetensors.numpy.save_file({"grid": np.zeros((2, 3), dtype=np.int32)}, path)
    with pytest.raises(ValueError, match=r"tensor grid has shape \[2, 3\]; only 1-d arrays are mapped"):
        map_safetensors(path)
    safetensors.numpy.save_file({"halves": np.zeros(4, dtype=np.float16)}, path)
    with pytest.raises(ValueError, match="tensor halves has dtype F16"):
        map_safetensors(path)
