"""The one comparison of exported tensors (``rmrun.run.verify.differing_tensors``): rmrun
verify-resume and the resume tests' harness both use it, on numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from rmrun.run.verify import differing_tensors


def test_equal_tensors_do_not_differ_and_one_bit_does():
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    b = {name: t.clone() for name, t in a.items()}
    assert differing_tensors(a, b) == []
    b["w"][0, 0] = -0.0  # equal as a number, not as bits
    assert differing_tensors(a, b) == ["w"]
    b["b"] = b["b"].float()
    assert differing_tensors(a, b) == ["b", "w"]


def test_numpy_arrays_shapes_and_names_held_by_one_side():
    a = {"w": np.zeros((2, 3), dtype=np.float32), "only_a": np.zeros(1)}
    assert differing_tensors(a, {"w": np.zeros((2, 3), dtype=np.float32), "only_a": np.zeros(1)}) == []
    assert differing_tensors(a, {"w": np.zeros((3, 2), dtype=np.float32), "only_b": np.zeros(1)}) == [
        "only_a",
        "only_b",
        "w",
    ]
