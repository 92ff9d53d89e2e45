"""A seeded, sharded, resumable order over several datasets mixed by weight.

Mixing is by examples drawn: with weights 7 and 3, 70 % of the rows of every batch (on
average) come from the first dataset. The global stream of examples is cut into blocks of
``block`` draws; each block holds exactly ``round(block * share)`` draws of each source (the
largest-remainder rounding of the shares), in an order shuffled by ``(seed, block)``. So the
ratio holds exactly every ``block`` draws, and how many draws of a source came before any
point is known in closed form: a batch depends on its position alone, a resumed run continues
with exactly the batch it would have seen next, and every process agrees on the stream.

Within a source the draws walk through a permutation of its rows drawn from ``(seed, source,
epoch)``, a new one each time the source is used up (a small source repeats more often). As
in ``ShardedOrder``, a global batch is ``batch_size * world_size`` consecutive draws and
process ``rank`` takes its ``batch_size`` slice; a position counts one process's batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


def block_counts(weights: tuple[float, ...], block: int) -> np.ndarray:
    """Draws of each source in a block of ``block``: ``block * share`` rounded so they sum
    to ``block`` (largest remainders first, ties to the earlier source)."""
    shares = np.asarray(weights, dtype=np.float64) / sum(weights)
    exact = shares * block
    counts = np.floor(exact).astype(np.int64)
    rest = block - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


@dataclass(frozen=True)
class MixedOrder:
    """Batches of ``(source, row)`` pairs for one process; see the module docstring."""

    sizes: tuple[int, ...]  # rows of each source
    weights: tuple[float, ...]  # relative share of draws from each source
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    block: int = 1000  # draws per block; the ratio is exact over each
    _counts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.weights):
            raise ValueError("give one weight per source, and at least one source")
        if any(n < 1 for n in self.sizes):
            empty = [i for i, n in enumerate(self.sizes) if n < 1]
            raise ValueError(f"source(s) {empty} have no rows: nothing to draw from")
        if any(w <= 0 for w in self.weights):
            raise ValueError(f"weights must be > 0, not {list(self.weights)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        if self.batch_size < 1 or self.block < len(self.sizes):
            raise ValueError("batch_size must be >= 1 and block at least the number of sources")
        counts = block_counts(tuple(self.weights), self.block)
        if (counts == 0).any():
            raise ValueError(f"block {self.block} is too small for weights {list(self.weights)}")
        object.__setattr__(self, "_counts", counts)

    @property
    def shares(self) -> np.ndarray:
        """Fraction of draws from each source (exact over every block)."""
        return self._counts / self.block

    def _block_sources(self, block: int) -> np.ndarray:
        return _shuffled_sources(self._counts.tobytes(), self.seed, block)

    def draw(self, k: int) -> tuple[int, int]:
        """``(source, row)`` of global draw number ``k``."""
        block, offset = divmod(k, self.block)
        sources = self._block_sources(block)
        source = int(sources[offset])
        nth = block * int(self._counts[source]) + int((sources[:offset] == source).sum())
        epoch, index = divmod(nth, self.sizes[source])
        return source, int(_permutation(self.sizes[source], self.seed, source, epoch)[index])

    def batch(self, position: int) -> list[tuple[int, int]]:
        """This process's ``batch_size`` draws of its batch number ``position``."""
        start = position * self.batch_size * self.world_size + self.rank * self.batch_size
        return [self.draw(k) for k in range(start, start + self.batch_size)]

    def iterate(self, start: int = 0) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """``(position, draws)`` from ``start`` on, without end."""
        position = start
        while True:
            yield position, self.batch(position)
            position += 1

    def passes(self, position: int) -> float:
        """Passes over all rows (of every source together) after ``position`` batches of
        every process: draws so far / total rows."""
        return position * self.batch_size * self.world_size / sum(self.sizes)


@lru_cache(maxsize=8)
def _shuffled_sources(counts: bytes, seed: int, block: int) -> np.ndarray:
    per_source = np.frombuffer(counts, dtype=np.int64)
    sources = np.repeat(np.arange(len(per_source)), per_source)
    return np.random.default_rng([seed, block]).permutation(sources)


@lru_cache(maxsize=64)
def _permutation(n: int, seed: int, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, source, epoch]).permutation(n)
