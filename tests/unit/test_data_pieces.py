"""Tokenizing in pieces gives exactly the arrays one pass gives (rmrun/data/pieces.py)."""

from __future__ import annotations

import os

import pytest

from rmrun.data import read_pairs, tokenize_pairs
from rmrun.data.arrays import ARRAY_NAMES
from rmrun.data.pieces import assemble, piece_bounds, tokenize_piece


@pytest.fixture(scope="module")
def pairs_and_tokenizer():
    from rmrun.model.model import load_tokenizer
    from rmrun.recipe.schema import ModelSection
    from tests.helpers import REPO, TINY_LLAMA, TINY_TOKENIZER

    tokenizer = load_tokenizer(ModelSection(pretrain=TINY_LLAMA, tokenizer=TINY_TOKENIZER))
    train = os.path.join(REPO, "recipes", "data", "quickstart_train.jsonl")
    return list(read_pairs([train], format="colossalchat", bad_rows="error"))[:41], tokenizer


def test_piece_bounds_are_contiguous_and_depend_on_counts_only():
    assert piece_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert piece_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]
    assert piece_bounds(0, 2) == [(0, 0), (0, 0)]
    for num_pairs in (0, 1, 7, 100):
        for num_pieces in (1, 2, 3, 8):
            bounds = piece_bounds(num_pairs, num_pieces)
            assert bounds[0][0] == 0 and bounds[-1][1] == num_pairs
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError, match="num_pieces must be at least 1, got 0"):
        piece_bounds(5, 0)


@pytest.mark.parametrize("overflow", ["truncate", "drop"])
@pytest.mark.parametrize("num_pieces", [1, 2, 3])
def test_assembled_pieces_are_bit_identical_to_one_pass(pairs_and_tokenizer, num_pieces, overflow):
    pairs, tokenizer = pairs_and_tokenizer
    options = {"max_length": 64, "overflow": overflow, "template": None}
    whole = tokenize_pairs(pairs, tokenizer, **options)
    assert whole.stats["truncated" if overflow == "truncate" else "dropped"] > 0, "the overflow policy should act"
    pieces = [tokenize_piece(pairs, tokenizer, piece=i, num_pieces=num_pieces, **options) for i in range(num_pieces)]
    assembled = assemble(pieces)
    for name in ARRAY_NAMES:
        expected, got = getattr(whole, name), getattr(assembled, name)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), name
    for name in ("pairs", "truncated", "dropped", "tokens"):
        assert assembled.stats[name] == whole.stats[name], name


def test_pieces_from_a_stream_are_the_wanted_pieces_in_order_and_stop_early():
    from rmrun.data.pieces import pieces_from

    bounds = piece_bounds(10, 4)  # (0,3) (3,6) (6,8) (8,10)
    read = []

    def stream():
        for i in range(10):
            read.append(i)
            yield i

    assert list(pieces_from(stream(), bounds, [2, 0])) == [(0, [0, 1, 2]), (2, [6, 7])]
    assert read == list(range(8)), "the stream is left once the last wanted piece is complete"
    assert list(pieces_from(iter(range(2)), piece_bounds(2, 4), [3, 2, 1])) == [(1, [1]), (2, []), (3, [])]
    with pytest.raises(ValueError, match="ran out before piece 3"):
        list(pieces_from(iter(range(9)), bounds, [3]))


def test_the_shares_of_the_missing_pieces_are_contiguous_disjoint_and_cover_them():
    from rmrun.run.steps.tokenize import share

    missing = [0, 2, 3, 5, 6, 9, 11]
    for world_size in (1, 2, 3, 8):
        shares = [share(missing, rank=r, world_size=world_size) for r in range(world_size)]
        assert [i for s in shares for i in s] == missing
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert share(missing, rank=1, world_size=2) == [6, 9, 11]


def test_a_file_assembled_on_disk_reads_back_as_the_pieces_assembled(pairs_and_tokenizer, tmp_path):
    from safetensors.numpy import load_file

    from rmrun.data.mapped import map_safetensors
    from rmrun.data.pieces import AssembledFile

    pairs, tokenizer = pairs_and_tokenizer
    options = {"max_length": 64, "overflow": "drop", "template": None}
    pieces = [tokenize_piece(pairs, tokenizer, piece=i, num_pieces=3, **options) for i in range(3)]
    in_memory = assemble(pieces)
    on_disk = AssembledFile(str(tmp_path))
    for piece in pieces:
        on_disk.add(piece)
    stats = on_disk.finish(str(tmp_path / "t.safetensors"), seconds=2.0)
    for read in (load_file(str(tmp_path / "t.safetensors")), map_safetensors(str(tmp_path / "t.safetensors"))):
        for name in ARRAY_NAMES:
            expected = getattr(in_memory, name)
            assert read[name].dtype == expected.dtype and read[name].tobytes() == expected.tobytes(), name
    assert stats == {**in_memory.stats, "seconds": 2.0, "pairs_per_second": stats["pairs_per_second"]}
    assert os.listdir(tmp_path) == ["t.safetensors"], "the scratch files are removed"


def _file_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("RssFile:")[1].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssFile from /proc")
def test_the_pages_a_pass_over_random_pairs_maps_are_let_go(tmp_path):
    """A mapped data set read at random maps (nearly) every page it touches and their
    neighbours; release_pages unmaps them, and a subset gathers chunk by chunk, so neither
    a sample nor an epoch keeps the whole file resident. Negative control: the same reads
    without the release keep it."""
    import numpy as np
    from safetensors.numpy import save_file

    from rmrun.data.arrays import TokenizedPairs
    from rmrun.data.mapped import map_safetensors

    rng = np.random.default_rng(0)
    n, side = 40_000, 400  # 2 x 64 MB of token ids
    arrays = {
        "chosen_ids": rng.integers(1, 1000, size=n * side, dtype=np.int32),
        "rejected_ids": rng.integers(1, 1000, size=n * side, dtype=np.int32),
        "chosen_offsets": np.arange(0, n * side + 1, side, dtype=np.int64),
        "rejected_offsets": np.arange(0, n * side + 1, side, dtype=np.int64),
        "pair_index": np.arange(n, dtype=np.int64),
    }
    path = str(tmp_path / "big.safetensors")
    save_file(TokenizedPairs.from_arrays(arrays, {}).to_arrays(), path)
    del arrays
    mapped = TokenizedPairs.from_arrays(map_safetensors(path), {})
    before = _file_rss_mb()
    for i in rng.permutation(n):  # an epoch's reads, one pair at a time
        mapped.chosen(int(i))[0], mapped.rejected(int(i))[0]
    touched = _file_rss_mb()
    assert touched - before > 100, (before, touched)  # the negative control: all of it is resident
    mapped.release_pages()
    assert _file_rss_mb() - before < 10, (before, _file_rss_mb())
    sample = np.sort(rng.choice(n, size=4000, replace=False))
    subset = mapped.subset(sample)
    assert _file_rss_mb() - before < 20, "a subset lets its pages go chunk by chunk"
    assert subset.chosen(7).tolist() == mapped.chosen(int(sample[7])).tolist()
