"""The SimCLR paper's linear evaluation: a linear layer trained with SGD on augmented images.

Chen et al. 2020, Appendix B.5/B.6: the encoder is frozen (BatchNorm in eval mode, no gradient),
images get random resized crops and horizontal flips, the linear classifier is trained with
Nesterov-momentum SGD, learning rate 0.1 x B / 256 with a cosine schedule, no weight decay, for
90 epochs, and the final model is evaluated once on the test set (no selection on test).

One classifier per tap is trained from the same forward pass, so ``--tap all`` costs one pass
per batch. Test images use the deterministic evaluation transform (cached features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from pretrain.augment import ViewRecipe
from pretrain.data import ImageDataset, TransformedDataset
from pretrain.model import SimCLRModel
from probes.metrics import classification_metrics


def crop_flip_transform(recipe: ViewRecipe, scale_min: float = 0.08) -> T.Compose:
    """Random resized crop (area ``scale_min``-1, 0.08 as Inception) + horizontal flip,
    normalised (SimCLR App. B.6; its fine-tuning, App. B.5 and B.8, uses the same)."""
    return T.Compose([
        T.RandomResizedCrop(recipe.image_size, scale=(scale_min, 1.0)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(recipe.mean, recipe.std),
    ])


def cosine_schedule(base_lr: float, total_steps: int) -> list[float]:
    """Per-step learning rates base_lr * 0.5 * (1 + cos(pi * t / total)), t = 0..total-1."""
    lrs = [base_lr * 0.5 * (1.0 + math.cos(math.pi * t / total_steps)) for t in range(total_steps)]
    assert len(lrs) == total_steps
    return lrs


def train_linear_sgd(
    model: SimCLRModel,
    train_set: ImageDataset,
    recipe: ViewRecipe,
    taps: Sequence[str],
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
) -> dict[str, nn.Linear]:
    """Train one linear classifier per tap on the frozen ``model``; returns ``{tap: Linear}``.

    ``lr`` is per 256 images (scaled linearly with ``batch_size``). The model stays in eval mode
    and receives no gradient; its parameters are not modified.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TransformedDataset(train_set, crop_flip_transform(recipe)), batch_size=batch_size,
        shuffle=True, drop_last=len(train_set) > batch_size, generator=gen,
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    with torch.no_grad():
        dims = {t: v.shape[1] for t, v in model.forward_taps(
            torch.zeros(2, 3, recipe.image_size, recipe.image_size, device=device)).items()}
    torch.manual_seed(seed)
    heads = {tap: nn.Linear(dims[tap], num_classes).to(device) for tap in taps}
    for head in heads.values():
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    params = [p for h in heads.values() for p in h.parameters()]
    opt = torch.optim.SGD(params, lr=lr * batch_size / 256, momentum=momentum, nesterov=True,
                          weight_decay=weight_decay)
    lrs = cosine_schedule(lr * batch_size / 256, epochs * len(loader))
    step = 0
    loss_fn = nn.CrossEntropyLoss()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(epochs):
                for images, labels in loader:
                    with torch.no_grad():
                        out = model.forward_taps(images.to(device, non_blocking=True))
                    labels = labels.to(device)
                    loss = sum(loss_fn(heads[t](out[t].flatten(1)), labels) for t in taps)
                    for group in opt.param_groups:
                        group["lr"] = lrs[step]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
    finally:
        model.train(was_training)
    return heads


@torch.no_grad()
def evaluate_linear(
    head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Top-1/top-5/mean per-class accuracy (percent) of ``head`` on features (N, D)."""
    device = head.weight.device
    return classification_metrics(head(feats.to(device)), labels.to(device))
