"""The resumable data order: batches are a function of (seed, position), whatever the start or workers."""
import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch

from ds2d2.data.sampler import PositionSeededDataset, ResumableBatchSampler, ResumableTrainLoader


def take(iterable, n):
    return list(itertools.islice(iterable, n))


def test_a_stream_started_at_k_is_the_tail_of_the_stream_from_0():
    full = take(ResumableBatchSampler(10, 4, seed=5), 12)
    assert take(ResumableBatchSampler(10, 4, seed=5, start_batch=7), 5) == full[7:]
    assert full != take(ResumableBatchSampler(10, 4, seed=6), 12)
    positions = [position for batch in full for _, position in batch]
    assert positions == list(range(48))


def test_each_epoch_is_a_permutation():
    order = [i for batch in take(ResumableBatchSampler(10, 5, seed=0), 6) for i, _ in batch]
    assert [sorted(order[e * 10:(e + 1) * 10]) for e in range(3)] == [list(range(10))] * 3
    assert order[:10] != order[10:20]


def test_ranks_split_each_global_batch():
    single = take(ResumableBatchSampler(9, 4, seed=1, start_batch=3), 6)
    samplers = [ResumableBatchSampler(9, 4, seed=1, start_batch=3, rank=r, world_size=2) for r in (0, 1)]
    ranks = [take(sampler, 6) for sampler in samplers]
    assert [a + b for a, b in zip(*ranks)] == single
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH \\(3\\) must be a positive multiple"):
        ResumableBatchSampler(9, 3, seed=1, world_size=2)


def test_aspect_ratio_groups_never_mix():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    for batch in take(ResumableBatchSampler(11, 3, seed=2, group_ids=groups), 20):
        assert len({groups[i] for i, _ in batch}) == 1


def test_repeat_factors_repeat_rare_images():
    sampler = ResumableBatchSampler(4, 2, seed=3, repeat_factors=[1.0, 1.0, 3.0, 1.5])
    counts = Counter(int(i) for e in range(200) for i in sampler.epoch_order(e))
    assert counts[0] == counts[1] == 200 and counts[2] == 600 and 250 < counts[3] < 350


def random_mapper(value):
    """Augmentation stand-in: draws from the global Python, NumPy and torch RNGs."""
    return (value, random.random(), float(np.random.rand()), float(torch.rand(())))


def test_augmentation_depends_on_position_only_and_global_rngs_are_restored():
    dataset = PositionSeededDataset(list(range(5)), random_mapper, seed=9)
    torch.manual_seed(0)
    expected_next = torch.rand(())
    torch.manual_seed(0)
    first = dataset[(2, 17)]
    assert torch.equal(torch.rand(()), expected_next), "the global torch RNG was disturbed"
    assert dataset[(2, 17)] == first and dataset[(2, 18)] != first and dataset[(3, 17)][1:] == first[1:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_output_is_the_same_for_any_worker_count_and_start(num_workers):
    def loader(workers, start):
        data = ResumableTrainLoader(
            list(range(7)), random_mapper, total_batch_size=2, seed=4, num_workers=workers
        )
        data.start_batch = start  # set after building, as Trainer.resume_or_load does
        return take(data, 4)

    reference = loader(0, 0) + loader(0, 4)
    assert loader(num_workers, 2) == reference[2:6]
