"""Image retrieval on frozen features: Recall@K, precision@1, mAP@R and mAP.

Every image queries all the others (leave-one-out) ranked by cosine similarity; an item is
relevant when it has the query's class. With R the number of relevant items for a query and
rel(i), P(i) the relevance and precision at rank i:

* Recall@K (metric-learning usage, Song et al. 2016; Oh Song's CUB/SOP benchmarks): 1 if any of
  the top K is relevant, averaged over queries;
* precision@1 = rel(1) averaged (equal to Recall@1 under this definition; kept for tables);
* mAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check"):
  (1/R) * sum_{i<=R} P(i) rel(i);
* mAP over the full ranking: (1/R) * sum_i P(i) rel(i).

Queries with R = 0 (a class with one image) are left out and counted in ``retrieval/queries``.

Two modes: ``within`` (all classes of the split) and ``class-disjoint``: the classes are split in
two halves by a seeded permutation, and retrieval is evaluated on the unseen half only, as in
the CUB-200 / SOP protocol where the first half is reserved for training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_RECALL_KS = (1, 2, 4, 8)


@torch.no_grad()
def retrieval_metrics(
    feats: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    batch_size: int = 512,
) -> dict[str, float]:
    """Leave-one-out retrieval metrics (percent) of ``feats`` (N, D) with ``labels`` (N,).

    Queries are processed in chunks of ``batch_size``; ties in similarity keep index order.
    """
    n = feats.shape[0]
    if n < 2:
        raise ValueError("retrieval needs at least two images")
    gallery = F.normalize(feats.float(), dim=1)
    labels = labels.to(gallery.device)
    recall_hits = torch.zeros(len(ks))
    p1_sum, map_r_sum, map_sum = 0.0, 0.0, 0.0
    n_queries = 0
    ranks = torch.arange(1, n + 1, device=gallery.device, dtype=torch.float32)
    for start in range(0, n, batch_size):
        q_idx = torch.arange(start, min(start + batch_size, n), device=gallery.device)
        sim = gallery[q_idx] @ gallery.t()
        rows = torch.arange(len(q_idx), device=sim.device)
        sim[rows, q_idx] = float("-inf")  # a query never retrieves itself
        order = sim.argsort(dim=1, descending=True, stable=True)[:, : n - 1]  # self is last
        rel = (labels[order] == labels[q_idx][:, None]).float()  # (B, N-1)
        r = rel.sum(1)
        keep = r > 0
        rel, r = rel[keep], r[keep]
        if not len(r):
            continue
        precision = rel.cumsum(1) / ranks[: n - 1]
        within_r = ranks[: n - 1][None, :] <= r[:, None]
        map_r_sum += ((precision * rel * within_r).sum(1) / r).sum().item()
        map_sum += ((precision * rel).sum(1) / r).sum().item()
        p1_sum += rel[:, 0].sum().item()
        hits = rel.cumsum(1) > 0
        for j, k in enumerate(ks):
            recall_hits[j] += hits[:, min(k, n - 1) - 1].float().sum().item()
        n_queries += int(len(r))
    q = max(n_queries, 1)
    out = {f"retrieval/R@{k}": 100.0 * recall_hits[j].item() / q for j, k in enumerate(ks)}
    out.update({
        "retrieval/P@1": 100.0 * p1_sum / q,
        "retrieval/mAP@R": 100.0 * map_r_sum / q,
        "retrieval/mAP": 100.0 * map_sum / q,
        "retrieval/queries": float(n_queries),
    })
    return out


def class_disjoint_classes(labels: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
    """The evaluation ("unseen") half of the classes: a seeded permutation's last ceil(C/2)."""
    classes = np.unique(np.asarray(labels))
    perm = np.random.default_rng(seed).permutation(classes)
    return np.sort(perm[len(classes) // 2 :])


def class_disjoint_retrieval(
    feats: torch.Tensor,
    labels: torch.Tensor,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_RECALL_KS,
    batch_size: int = 512,
) -> dict[str, float]:
    """Retrieval restricted to the unseen half of the classes (see the module docstring)."""
    unseen = torch.as_tensor(class_disjoint_classes(labels.cpu().numpy(), seed))
    mask = torch.isin(labels.cpu(), unseen)
    return retrieval_metrics(feats[mask.to(feats.device)], labels[mask.to(labels.device)], ks,
                             batch_size)
