"""Deterministic, resumable data order and augmentation.

Exact resume needs the same batches, in the same order, with the same random augmentations,
whether the run was interrupted or not, however many loader workers there are and on however
many DDP ranks. Two pieces give that:

- :class:`ResumableSampler` draws epoch ``e``'s permutation from ``seed + e``, shards it over
  ranks, and can start part-way through an epoch;
- it yields ``(epoch, index)`` pairs, and :class:`SeededSamples` seeds Python's and torch's
  random generators from that pair before running the dataset's random transforms, so a
  sample's augmentation depends on nothing but the seed, the epoch and the sample.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler):
    """Per-epoch seeded permutation, sharded over ``world_size`` ranks, skippable."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size=1):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # samples of this rank's share already consumed in this epoch
        self.per_rank = -(-size // world_size)  # ceil: ranks get equal shares (padded)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.per_rank * self.world_size - self.size]  # pad to equal shares
        return order[self.rank :: self.world_size]

    def __iter__(self):
        for index in self.indices()[self.start :]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        return self.per_rank - self.start


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is transformed with a fixed seed."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + index
        py_state, torch_state = random.getstate(), torch.get_rng_state()
        random.seed(sample_seed)
        torch.manual_seed(sample_seed % (2**63))
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            torch.set_rng_state(torch_state)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    train: bool,
    collate_fn,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader over ``dataset`` with a :class:`ResumableSampler` (``loader.sampler``).

    ``collate_fn`` is the task's (``task.collate``): samples -> a batch with ``inputs``.
    """
    sampler = ResumableSampler(len(dataset), seed, shuffle=train, rank=rank, world_size=world_size)
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=train,
        # An explicit generator: making an iterator must not consume the global torch RNG,
        # which drives dropout and must match between interrupted and uninterrupted runs.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
