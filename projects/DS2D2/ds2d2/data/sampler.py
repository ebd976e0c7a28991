"""A training data order that a resumed run reproduces exactly.

Detectron2's ``TrainingSampler`` restarts its stream at 0 on ``--resume`` and its augmentations draw from
the global RNGs of whichever worker maps a sample, so a resumed run sees other batches than an uninterrupted
one. Here the stream of *global* batches (``SOLVER.IMS_PER_BATCH`` images, before the split across processes)
is a function of the seed alone: global batch ``b`` is the same in every run, and each rank takes its slice of
it. A run resumed at iteration ``k`` starts the stream at batch ``k`` (replaying the index arithmetic before
it; no image is read). Each sample is mapped with the global RNGs seeded by (seed, position in the stream), so
augmentations depend neither on the number of workers nor on the process or the history.
"""
import contextlib
import itertools
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator
from torch.utils.data import DataLoader, Dataset, Sampler

Key = Tuple[int, int]  # (index in the dataset, position in the sample stream)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def seed_from(*key: int) -> int:
    """A 32-bit seed that is a fixed function of the integers ``key``."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU global RNGs with ``seed`` in the block; restore them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ResumableBatchSampler(Sampler):
    """This rank's batches of ``(index, position)`` keys, an infinite stream that can start at any batch.

    Each epoch is a permutation of the dataset drawn from (seed, epoch), with each index repeated according to
    ``repeat_factors`` (rounded stochastically per epoch, as Detectron2's RepeatFactorTrainingSampler does).
    Indices go to buckets by ``group_ids`` (aspect-ratio grouping); a global batch is emitted when a bucket
    holds ``total_batch_size`` indices. Rank ``r`` of ``world_size`` takes slice r of each global batch.
    """

    def __init__(
        self,
        dataset_size: int,
        total_batch_size: int,
        seed: int,
        *,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_ids: Optional[Sequence[int]] = None,
        repeat_factors: Optional[Sequence[float]] = None,
    ):
        if dataset_size <= 0:
            raise ValueError(f"ResumableBatchSampler needs a non-empty dataset, got {dataset_size} samples.")
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be a positive multiple of the number of "
                f"processes ({world_size})."
            )
        self.dataset_size = dataset_size
        self.total_batch_size = total_batch_size
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.rank, self.world_size = rank, world_size
        self.group_ids = np.zeros(dataset_size, np.int64) if group_ids is None else np.asarray(group_ids)
        self.repeat_factors = None if repeat_factors is None else np.asarray(repeat_factors, np.float64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch``, in the order they enter the buckets."""
        rng = _rng(self.seed, epoch)
        indices = np.arange(self.dataset_size)
        if self.repeat_factors is not None:
            whole = np.floor(self.repeat_factors)
            counts = whole + (rng.random(self.dataset_size) < self.repeat_factors - whole)
            indices = np.repeat(indices, counts.astype(np.int64))
        return rng.permutation(indices)

    def global_batches(self) -> Iterator[List[int]]:
        """The infinite stream of global batches (dataset indices), from batch 0."""
        buckets = {g: [] for g in np.unique(self.group_ids).tolist()}
        for epoch in itertools.count():
            for index in self.epoch_order(epoch).tolist():
                bucket = buckets[int(self.group_ids[index])]
                bucket.append(index)
                if len(bucket) == self.total_batch_size:
                    yield bucket[:]
                    bucket.clear()

    def __iter__(self) -> Iterator[List[Key]]:
        per_rank = self.total_batch_size // self.world_size
        first = self.rank * per_rank
        batches = itertools.islice(self.global_batches(), self.start_batch, None)
        for number, batch in enumerate(batches, start=self.start_batch):
            base = number * self.total_batch_size
            yield [(batch[j], base + j) for j in range(first, first + per_rank)]


class PositionSeededDataset(Dataset):
    """``mapper(dataset[index])`` with the global RNGs seeded by (seed, position); keys are (index, position).

    A mapper that returns None (Detectron2's "skip this sample") gets the next index instead, same seed.
    """

    def __init__(self, dataset: Dataset, mapper: Callable, seed: int):
        self.dataset, self.mapper, self.seed = dataset, mapper, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key):
        index, position = key
        with seeded_global_rngs(seed_from(self.seed, position)):
            for offset in range(len(self.dataset)):
                mapped = self.mapper(self.dataset[(index + offset) % len(self.dataset)])
                if mapped is not None:
                    return mapped
        raise RuntimeError("The dataset mapper returned None for every training sample.")


class ResumableTrainLoader:
    """This process's training batches (lists of mapped samples), from global batch ``start_batch`` on.

    The position and the seed are read when the first batch is requested, not when the object is built: a
    trainer builds the loader first and sets ``start_batch`` (and the checkpoint's seed) when it resumes.
    """

    def __init__(
        self,
        dataset: Dataset,
        mapper: Callable,
        *,
        total_batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_ids: Optional[Sequence[int]] = None,
        repeat_factors: Optional[Sequence[float]] = None,
    ):
        self.dataset, self.mapper, self.num_workers = dataset, mapper, num_workers
        self.seed, self.start_batch = int(seed), 0
        self._sampler_args = dict(
            total_batch_size=total_batch_size,
            rank=rank,
            world_size=world_size,
            group_ids=group_ids,
            repeat_factors=repeat_factors,
        )

    def __iter__(self) -> Iterator[list]:
        sampler = ResumableBatchSampler(
            len(self.dataset), seed=self.seed, start_batch=self.start_batch, **self._sampler_args
        )
        yield from DataLoader(
            PositionSeededDataset(self.dataset, self.mapper, self.seed),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            generator=torch.Generator().manual_seed(self.seed),  # keeps the global RNG untouched
        )
