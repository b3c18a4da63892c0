"""Label-free representation quality: RankMe, alignment and uniformity.

* RankMe (Garrido et al. 2023, "RankMe: Assessing the Downstream Performance of Pretrained
  Self-Supervised Representations by Their Rank"): the effective rank of an embedding matrix
  Z (N, D): with singular values s_k and p_k = s_k / ||s||_1 + eps (eps = 1e-7),
  RankMe = exp(-sum_k p_k log p_k), between 1 and min(N, D). Computed on un-augmented images.
* Alignment and uniformity (Wang and Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere"), on L2-normalised features of
  two augmented views x, x+ of the same images:
  alignment = E ||f(x) - f(x+)||^2 (lower is better, in [0, 4]);
  uniformity = log E_{i != j} exp(-2 ||f(x_i) - f(x_j)||^2) (lower is better), averaged over the
  two views as in the authors' code.

:func:`quality_metrics` needs no labels, so the training loop logs it every
``train.quality_every`` epochs; the ``quality`` probe reports the same numbers from cached
features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.augment import ViewRecipe, eval_transform, simclr_transform
from pretrain.data import ImageDataset
from pretrain.features import extract_features
from pretrain.model import SimCLRModel


@torch.no_grad()
def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of ``z`` (N, D) (Garrido et al. 2023, Eq. 1)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||z1_i - z2_i||^alpha over rows of L2-normalised (N, D) views."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return float((z1 - z2).norm(dim=1).pow(alpha).mean())


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0, batch_size: int = 1024) -> float:
    """log E_{i != j} exp(-t ||z_i - z_j||^2) of L2-normalised ``z`` (N, D), N >= 2.

    Computed as a chunked logsumexp, so memory is O(batch_size * N) and no exp underflows.
    """
    n = z.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two samples")
    z = F.normalize(z.double(), dim=1)
    parts = []
    for start in range(0, n, batch_size):
        rows = z[start : start + batch_size]
        sq = (2.0 - 2.0 * rows @ z.t()).clamp_min(0.0)  # ||a - b||^2 of unit vectors
        logits = -t * sq
        idx = torch.arange(rows.shape[0], device=z.device)
        logits[idx, idx + start] = float("-inf")  # drop i == j
        parts.append(torch.logsumexp(logits.flatten(), 0))
    return float(torch.logsumexp(torch.stack(parts), 0) - math.log(n * (n - 1)))


def quality_from_features(
    clean: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor
) -> dict[str, float]:
    """``{"quality/rankme", "quality/alignment", "quality/uniformity"}`` for one tap."""
    return {
        "quality/rankme": rankme(clean),
        "quality/alignment": alignment(view1, view2),
        "quality/uniformity": 0.5 * (uniformity(view1) + uniformity(view2)),
    }


def view_features(
    model: SimCLRModel,
    dataset: ImageDataset,
    recipe: ViewRecipe,
    taps: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    local: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Features of two seeded SimCLR views of every image: ({tap: (N, D)}, {tap: (N, D)}).

    The global RNG is forked, so a training loop calling this keeps its own random stream.
    ``local``: see :func:`pretrain.features.extract_features`.
    """
    views = []
    with torch.random.fork_rng(devices=[]):
        for i in range(2):
            torch.manual_seed(seed * 2 + i)
            views.append(extract_features(
                model, dataset, simclr_transform(recipe), taps, batch_size, device, num_workers,
                local,
            ))
    return views[0], views[1]


def quality_metrics(
    model: SimCLRModel,
    dataset: ImageDataset,
    recipe: ViewRecipe,
    taps: Sequence[str] | None = None,
    num_samples: int = 2048,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    local: bool = False,
) -> dict[str, float]:
    """RankMe, alignment and uniformity of ``model`` at every tap, without labels.

    Uses ``num_samples`` images drawn from ``dataset`` with ``seed`` (all when fewer): RankMe on
    their evaluation-transform features, alignment/uniformity on two SimCLR views (``recipe``).
    The model is evaluated in eval mode and its train/eval mode restored afterwards. Under
    torchrun every rank must call it, unless ``local`` (one rank extracts everything alone).

    Returns:
        ``{"quality/rankme/h": ..., "quality/alignment/h": ..., "quality/uniformity/h": ...,
        "quality/rankme/z": ..., ...}`` (one triple per tap; default taps: all of the model).
    """
    taps = list(taps) if taps is not None else model.tap_names()
    n = len(dataset)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(num_samples, n), replace=False))
    sample = dataset.select(idx)
    clean = extract_features(
        model, sample, eval_transform(recipe), taps, batch_size, device, num_workers, local
    )
    v1, v2 = view_features(model, sample, recipe, taps, batch_size, device, seed, num_workers,
                           local)
    out: dict[str, float] = {}
    for tap in taps:
        for key, value in quality_from_features(clean[tap], v1[tap], v2[tap]).items():
            out[f"{key}/{tap}"] = value
    return out
