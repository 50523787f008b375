"""A kill during tokenization keeps every finished piece: the next start tokenizes only the
missing ones (at another world size too), and the run ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import re

import pytest

from tests.resume_harness import (
    EXIT_OK,
    ONE_LOCAL,
    TWO_LOCAL,
    Harness,
    assert_identical,
    assert_killed,
    read_export,
)

PIECE_LINE = re.compile(r"tokenize (train|eval): piece (\d+)/(\d+) kept", re.M)
TRAIN_PIECE = re.compile(r"piece-tokenize-[0-9a-f]{20}-train-0000(\d)-of-00004")


def pieces_tokenized(output: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {"train": [], "eval": []}
    for m in PIECE_LINE.finditer(output):
        found[m.group(1)].append(int(m.group(2)))
    return found


def piece_states(run) -> list[str]:
    """The committed pieces (a staged one has a folder but no COMMIT)."""
    states = (run.local_state / "states").iterdir()
    return sorted(p.name for p in states if p.name.startswith("piece-") and (p / "COMMIT").exists())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return Harness(tmp_path_factory.mktemp("pieces"))


@pytest.mark.parametrize(
    ("config", "restart_nproc"), [(ONE_LOCAL, 1), (TWO_LOCAL, 2)], ids=["same-world", "one-then-two-processes"]
)
def test_a_kill_mid_tokenize_keeps_finished_pieces_and_the_run_ends_identical(lab, config, restart_nproc):
    reference = lab.new_run(config, "reference")
    lab.run(reference, expect=EXIT_OK)

    run = lab.new_run(config, "killed")
    killed = lab.run(run, nproc=1, faults="kill@tokenize_piece:2")  # the third piece staged, two committed
    assert_killed(killed, 1)
    assert pieces_tokenized(killed.output) == {"train": [1, 2], "eval": []}, killed.describe()
    kept = [TRAIN_PIECE.fullmatch(name) for name in piece_states(run)]
    assert [m and int(m.group(1)) for m in kept] == [0, 1], piece_states(run)

    resumed = lab.run(run, nproc=restart_nproc, expect=EXIT_OK)
    assert "tokenize train: 100 pairs in 4 pieces, 2 kept from an earlier start" in resumed.output, resumed.describe()
    # Rank 0 commits the pieces as they finish, its own and the other rank's: in any order.
    assert {k: sorted(v) for k, v in pieces_tokenized(resumed.output).items()} == {
        "train": [3, 4],
        "eval": [1, 2, 3, 4],
    }, resumed.describe()
    if restart_nproc == 2:
        assert "2 ranks share the 2 missing" in resumed.output, resumed.describe()
    assert piece_states(run) == [], "the pieces are deleted once the whole data set is committed"
    assert_identical(read_export(reference.export), read_export(run.export))
