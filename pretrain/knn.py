"""Weighted k-nearest-neighbour votes on features: the one implementation of the k-NN rule.

The rule of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination") as used by DINO (Caron et al. 2021, ``eval_knn.py``) and lightly's
``knn_predict``: features are L2-normalised, the k bank images most cosine-similar to a query
vote for their class with weight exp(sim / T), and a class's score is its total vote. The k-NN
probe (:mod:`probes.knn`) and the training loop's online monitor (:mod:`pretrain.monitor`) both
score with :func:`knn_scores`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    ks: Sequence[int],
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Class scores of every test image for every k: ``{k: (M, C)}``.

    Args:
        train_feats: (N, D) features of the labelled "memory bank" (need not be normalised).
        train_labels: (N,) int64 in [0, C).
        test_feats: (M, D) query features.
        ks: neighbour counts, each clamped to N.
        temperature: T in the vote weight exp(cos / T).
        num_classes: C; default ``max(train_labels) + 1``.
        batch_size: test rows per chunk (memory is O(batch_size * N)).
    """
    if train_feats.shape[0] == 0:
        raise ValueError("k-NN needs at least one train image")
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device)
    k_max = min(max(ks), bank.shape[0])
    out = {k: torch.empty(test_feats.shape[0], num_classes, device=bank.device) for k in ks}
    for start, weight, idx in nearest(bank, test_feats, k_max, temperature, batch_size):
        neighbour = labels[idx]
        for k in ks:
            kk = min(k, k_max)
            scores = torch.zeros(idx.shape[0], num_classes, device=bank.device)
            scores.scatter_add_(1, neighbour[:, :kk], weight[:, :kk])
            out[k][start : start + idx.shape[0]] = scores
    return out


def nearest(bank: torch.Tensor, test_feats: torch.Tensor, k: int, temperature: float,
            batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per chunk of ``batch_size`` test rows: (first row, vote weights exp(cos / T) (B, k),
    indices into ``bank`` (B, k)) of the k nearest bank rows, most similar first.
    ``bank``: (N, D) L2-normalised; ``test_feats``: (M, D), normalised here."""
    for start in range(0, test_feats.shape[0], batch_size):
        q = F.normalize(test_feats[start : start + batch_size].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.t()).topk(k, dim=1)
        yield start, (sim / temperature).exp(), idx
