"""A seeded, sharded, resumable order over a dataset's indices.

Each epoch is a permutation of ``range(n)`` drawn from ``(seed, epoch)`` alone, padded by
wrapping around so every process gets the same number of batches, then cut into global
batches of ``batch_size * world_size``; process ``rank`` takes its ``batch_size`` slice of
each. A position is the number of batches one process has consumed since the start, so a
resumed run continues with exactly the batch it would have seen next.

``collate`` turns decoder token sequences into shifted, padded ``(input, label)`` batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ShardedOrder:
    """Batches of dataset indices for one process; see the module docstring."""

    n_items: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError("the dataset is empty: nothing to train on")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_items / (self.batch_size * self.world_size))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of epoch ``epoch`` (the same on every process)."""
        if not self.shuffle:
            return np.arange(self.n_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_items)

    def batch(self, position: int) -> tuple[int, list[int]]:
        """``(epoch, indices)`` of this process's batch number ``position``."""
        epoch, index = divmod(position, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        span = self.batch_size * self.world_size
        start = index * span + self.rank * self.batch_size
        picks = [(start + i) % self.n_items for i in range(self.batch_size)]
        return epoch, [int(order[p]) for p in picks]

    def iterate(self, start: int = 0) -> Iterator[tuple[int, int, list[int]]]:
        """``(position, epoch, indices)`` from ``start`` on, without end."""
        position = start
        while True:
            epoch, indices = self.batch(position)
            yield position, epoch, indices
            position += 1


@dataclass
class Batch:
    """Padded to the longest sequence of the batch. ``input_ids``/``labels``/``labels_mask``:
    ``(batch, seq)``; ``audio``: the rows' audio files."""

    audio: list[str]
    input_ids: torch.Tensor
    labels: torch.Tensor
    labels_mask: torch.Tensor
    margins: list[float] | None = None  # dynamic audio context: each row's padding draw


def collate(sequences: list[tuple[list[int], int]], audio: list[str], pad_id: int) -> Batch:
    """Shift each sequence into (input, label) pairs and pad them to the longest."""
    width = max(len(seq) for seq, _ in sequences) - 1
    inputs = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full_like(inputs, pad_id)
    mask = torch.zeros_like(inputs, dtype=torch.bool)
    for row, (seq, sot_index) in enumerate(sequences):
        n = len(seq) - 1
        inputs[row, :n] = torch.tensor(seq[:-1])
        labels[row, :n] = torch.tensor(seq[1:])
        mask[row, sot_index:n] = True
    return Batch(audio, inputs, labels, mask)
