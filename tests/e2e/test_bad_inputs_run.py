"""A problem only tokenizing finds, through ``rmrun run`` in a subprocess: exit 2, one line."""

from __future__ import annotations

from rmrun.errors import EXIT_USAGE
from tests.helpers import quickstart_slice


def test_every_pair_dropped_at_tokenize_is_an_error_with_the_counts(tmp_path):
    """Only tokenizing knows that every pair is longer than max_length: exit 2, one line."""
    from tests.helpers import child_env, rmrun

    recipe = quickstart_slice(tmp_path, None)
    done = rmrun(
        "run",
        recipe,
        "--set",
        "data.overflow=drop",
        "--set",
        "data.max_length=8",
        env=child_env(CUDA_VISIBLE_DEVICES=""),
    )
    assert done.returncode == EXIT_USAGE, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("rmrun: ")]
    assert "[data].train: no preference pairs left in" in line and "32 dropped as longer than max_length 8" in line
