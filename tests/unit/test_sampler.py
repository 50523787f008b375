"""The epoch order and the position: pure, exact-once, independent of the world size."""

from __future__ import annotations

import numpy as np
import pytest

from rmrun.train.sampler import epoch_order, optimizer_steps, reward_stats_sample

LENGTHS = np.random.default_rng(0).lognormal(4, 1, size=203).astype(np.int64)


@pytest.mark.parametrize("group", [True, False])
def test_order_is_a_pure_function_of_seed_and_epoch(group):
    a = epoch_order(seed=1, epoch=3, lengths=LENGTHS, batch_size=8, group_by_length=group)
    b = epoch_order(seed=1, epoch=3, lengths=LENGTHS, batch_size=8, group_by_length=group)
    c = epoch_order(seed=1, epoch=4, lengths=LENGTHS, batch_size=8, group_by_length=group)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == list(range(len(LENGTHS)))


def _pairs_seen(order, *, start, dp_size, batch_size=8, accumulation_steps=2):
    seen = []
    for rank in range(dp_size):
        for step in optimizer_steps(
            order,
            start=start,
            batch_size=batch_size,
            dp_size=dp_size,
            dp_rank=rank,
            accumulation_steps=accumulation_steps,
        ):
            for micro in step.micro_batches:
                seen += micro.indices.tolist()
    return seen


@pytest.mark.parametrize("dp_size", [1, 2, 3])
def test_each_pair_is_seen_once_per_epoch_across_ranks(dp_size):
    order = epoch_order(seed=0, epoch=0, lengths=LENGTHS, batch_size=8, group_by_length=True)
    assert sorted(_pairs_seen(order, start=0, dp_size=dp_size)) == list(range(len(LENGTHS)))


def test_resuming_at_a_position_with_another_world_size_continues_sample_exact():
    order = epoch_order(seed=0, epoch=0, lengths=LENGTHS, batch_size=8, group_by_length=True)
    consumed = 5 * 8 * 2  # five optimizer steps with two ranks, batch 8
    steps = list(optimizer_steps(order, start=0, batch_size=8, dp_size=2, dp_rank=0, accumulation_steps=1))
    assert sum(s.pairs for s in steps[:5]) == consumed
    before = _pairs_seen(order[:consumed], start=0, dp_size=2, accumulation_steps=1)
    after = _pairs_seen(order, start=consumed, dp_size=1, accumulation_steps=1)
    assert sorted(before + after) == list(range(len(LENGTHS)))
    assert not set(before) & set(after)


def test_length_grouping_reduces_padding():
    def padding(order):
        waste = 0
        for start in range(0, len(order), 8):
            block = LENGTHS[order[start : start + 8]]
            waste += int((block.max() - block).sum())
        return waste

    grouped = epoch_order(seed=0, epoch=0, lengths=LENGTHS, batch_size=8, group_by_length=True)
    plain = epoch_order(seed=0, epoch=0, lengths=LENGTHS, batch_size=8, group_by_length=False)
    assert padding(grouped) < 0.5 * padding(plain)


def test_steps_count_pairs_and_only_the_last_is_short():
    order = np.arange(203)
    steps = list(optimizer_steps(order, start=0, batch_size=8, dp_size=2, dp_rank=0, accumulation_steps=2))
    assert [s.pairs for s in steps] == [32] * 6 + [11]
    assert sum(s.pairs for s in steps) == 203


# --------------------------------------------------------------------------- reward statistics


def test_the_reward_stats_sample_is_a_pure_function_of_seed_pairs_and_size():
    a = reward_stats_sample(seed=42, num_pairs=1_000_000, num_samples=10_000)
    assert np.array_equal(a, reward_stats_sample(seed=42, num_pairs=1_000_000, num_samples=10_000))
    assert len(a) == len(np.unique(a)) == 10_000
    assert np.all(np.diff(a) > 0) and 0 <= a[0] and a[-1] < 1_000_000
    assert not np.array_equal(a, reward_stats_sample(seed=43, num_pairs=1_000_000, num_samples=10_000))
    assert not np.array_equal(a, reward_stats_sample(seed=42, num_pairs=999_999, num_samples=10_000))


@pytest.mark.parametrize("num_pairs", [0, 1, 96, 10_000])
def test_the_reward_stats_sample_is_every_pair_when_there_are_no_more(num_pairs):
    assert reward_stats_sample(seed=42, num_pairs=num_pairs, num_samples=10_000).tolist() == list(range(num_pairs))


def test_the_reward_stats_sample_is_uniform():
    # 10 000 of 100 000: each tenth of the data holds 1000 expected, std ~28; each pair is
    # drawn with probability 0.1 over seeds.
    sample = reward_stats_sample(seed=42, num_pairs=100_000, num_samples=10_000)
    per_tenth = np.bincount(sample // 10_000, minlength=10)
    assert np.all(np.abs(per_tenth - 1000) < 150), per_tenth
    hits = np.zeros(50, dtype=np.int64)
    for seed in range(2000):
        hits[reward_stats_sample(seed=seed, num_pairs=50, num_samples=5)] += 1
    assert np.all(np.abs(hits - 200) < 70), hits  # binomial(2000, 0.1): std ~13


def _order_by_blocks(*, seed, epoch, lengths, batch_size):
    """The length-grouped order by its definition, block by block (what the vectorized one must equal:
    a checkpoint's position in an epoch means the same pairs for every version)."""
    from rmrun.train.sampler import MEGA_CHUNK_BLOCKS

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * MEGA_CHUNK_BLOCKS
    blocks = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        blocks += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    full = [b for b in blocks if len(b) == batch_size]
    short = [b for b in blocks if len(b) < batch_size]
    shuffled = [full[i] for i in rng.permutation(len(full))]
    return np.concatenate(shuffled + short) if blocks else order


@pytest.mark.parametrize("num_pairs", [0, 1, 7, 8, 9, 511, 512, 513, 4097, 10_007])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_the_length_grouped_order_is_the_block_by_block_definition(num_pairs, batch_size):
    lengths = np.random.default_rng(num_pairs).integers(1, 50, size=num_pairs)  # many ties: the sort is stable
    for seed, epoch in ((0, 0), (42, 3)):
        got = epoch_order(seed=seed, epoch=epoch, lengths=lengths, batch_size=batch_size, group_by_length=True)
        expected = _order_by_blocks(seed=seed, epoch=epoch, lengths=lengths, batch_size=batch_size)
        assert np.array_equal(got, expected)
    if num_pairs > 1000:  # the negative control: another epoch is another order (of several mega-chunks)
        other = epoch_order(seed=0, epoch=1, lengths=lengths, batch_size=batch_size, group_by_length=True)
        assert not np.array_equal(other, _order_by_blocks(seed=0, epoch=0, lengths=lengths, batch_size=batch_size))
