"""The seeded image stream of iteration-based fine-tuning (detection and classification).

Epochs of a seeded permutation, cut into global batches: iteration ``i`` always gets the same
images for a given seed, whatever iteration training was resumed from, and rank ``r`` of ``W``
processes takes every W-th image of the global batch. :func:`iteration_seed` gives every
(seed, iteration, rank) its own seed, for the randomness a step draws (flips, crops, sampling).
Detection (:mod:`transfer.detection.train`) and classification fine-tuning
(:mod:`transfer.finetune.loop`) both read their images from here, which is what makes their
resumes exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def iteration_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, iteration, rank)."""
    return (seed * 1_000_003 + iteration * 7_919 + rank * 104_729) % (2**63 - 1)


def batch_indices(num_images: int, batch_size: int, iteration: int, seed: int,
                  rank: int = 0, world_size: int = 1) -> list[int]:
    """Dataset indices of this rank's share of global batch ``iteration``.

    The stream is epoch after epoch of ``torch.randperm(num_images)`` seeded by
    ``(seed, epoch)``; global batch ``i`` is items ``[i * B, (i + 1) * B)`` of the stream.
    """
    if num_images < 1:
        raise ValueError("no images to sample from")
    start = iteration * batch_size
    out: list[int] = []
    epoch, offset = divmod(start, num_images)
    while len(out) < batch_size:
        gen = torch.Generator().manual_seed(iteration_seed(seed, epoch) ^ 0x5EED)
        perm = torch.randperm(num_images, generator=gen).tolist()
        take = perm[offset: offset + batch_size - len(out)]
        out += take
        epoch, offset = epoch + 1, 0
    return out[rank::world_size]


class IterationSampler(torch.utils.data.Sampler):
    """Yields the per-iteration index lists from ``start_iter`` to ``max_iter`` (a batch sampler)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, start_iter: int,
                 max_iter: int, rank: int = 0, world_size: int = 1) -> None:
        self.args = (num_images, batch_size, seed, rank, world_size)
        self.start_iter, self.max_iter = start_iter, max_iter

    def __len__(self) -> int:
        return max(0, self.max_iter - self.start_iter)

    def __iter__(self) -> Iterator[list[int]]:
        n, b, seed, rank, world = self.args
        for it in range(self.start_iter, self.max_iter):
            yield batch_indices(n, b, it, seed, rank, world)
