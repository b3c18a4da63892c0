"""N-way K-shot classification with class prototypes on frozen features.

Each episode samples N classes, K support and Q query images per class; the prototype of a class
is the mean of its L2-normalised support features (Snell et al. 2017, "Prototypical Networks",
here without any training), and a query gets the class of the most cosine-similar prototype.
Accuracy is averaged over 600 episodes and reported with its 95% confidence interval
1.96 * std / sqrt(episodes), the convention of the few-shot literature (Chen et al. 2019,
"A Closer Look at Few-shot Classification").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.errors import UserError


@torch.no_grad()
def fewshot_accuracy(
    feats: torch.Tensor,
    labels: torch.Tensor,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    episodes: int = 600,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean accuracy and 95% interval half-width (both percent) over ``episodes`` episodes.

    feats: (N, D); labels: (N,). Only classes with at least ``shots + queries`` images are
    sampled; fewer than ``ways`` such classes is a :class:`UserError`.
    """
    labels_np = labels.cpu().numpy()
    classes, counts = np.unique(labels_np, return_counts=True)
    eligible = classes[counts >= shots + queries]
    if len(eligible) < ways:
        raise UserError(
            f"{ways}-way {shots}-shot needs {ways} classes with >= {shots + queries} images; "
            f"this split has {len(eligible)} (lower --ways or --queries)"
        )
    by_class = {c: np.flatnonzero(labels_np == c) for c in eligible}
    z = F.normalize(feats.float(), dim=1)
    rng = np.random.default_rng(seed)
    accs = np.empty(episodes)
    target = torch.arange(ways, device=z.device).repeat_interleave(queries)
    for e in range(episodes):
        chosen = rng.choice(eligible, size=ways, replace=False)
        picks = np.stack([rng.choice(by_class[c], size=shots + queries, replace=False)
                          for c in chosen])  # (ways, shots + queries)
        support = z[torch.as_tensor(picks[:, :shots].reshape(-1), device=z.device)]
        query = z[torch.as_tensor(picks[:, shots:].reshape(-1), device=z.device)]
        protos = F.normalize(support.view(ways, shots, -1).mean(1), dim=1)
        pred = (query @ protos.t()).argmax(1)
        accs[e] = (pred == target).float().mean().item()
    half_width = 1.96 * accs.std() / math.sqrt(episodes)
    return 100.0 * float(accs.mean()), 100.0 * float(half_width)
