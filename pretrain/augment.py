"""SimCLR views on the CPU with torchvision transforms (Chen et al. 2020, Appendix A).

The recipe: random resized crop (area 0.08-1, aspect 3/4-4/3), horizontal flip (p=0.5),
colour jitter (brightness, contrast, saturation 0.8s, hue 0.2s) applied with p=0.8, grayscale
with p=0.2, and Gaussian blur (p=0.5, sigma 0.1-2.0, kernel 10% of the image) for large images.

Presets by dataset family:

========  ===  =====  =================================================
preset     s   blur   source
========  ===  =====  =================================================
imagenet  1.0  on     SimCLR App. A
cifar     0.5  off    SimCLR App. B.9 ("we remove the Gaussian blur")
digits    0.5  off    like CIFAR; grayscale images, small crops kept
========  ===  =====  =================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

from pretrain.config import AugmentConfig
from pretrain.data import DatasetInfo
from pretrain.errors import ConfigError

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Preset:
    """Augmentation strength and input normalisation of one dataset family.

    Attributes:
        name: ``imagenet``, ``cifar`` or ``digits``.
        color_strength: s of the colour jitter (0.8s, 0.8s, 0.8s, 0.2s).
        blur: Gaussian blur on (p = 0.5).
        mean, std: per-channel normalisation of images in 0-1 (RGB).
    """

    name: str
    color_strength: float
    blur: bool
    mean: RGB
    std: RGB


IMAGENET = Preset("imagenet", 1.0, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = Preset("cifar", 0.5, False, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
DIGITS = Preset("digits", 0.5, False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PRESETS: dict[str, Preset] = {p.name: p for p in (IMAGENET, CIFAR, DIGITS)}


def get_preset(name: str, key: str = "augment.preset") -> Preset:
    """The preset called ``name``; an unknown name is a :class:`ConfigError` listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown {key} {name!r}; valid: auto, {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class ViewRecipe:
    """Resolved augmentation settings for one dataset (what a config's "auto" values become)."""

    image_size: int
    crop_scale_min: float
    color_strength: float
    color_p: float
    gray_p: float
    blur: bool
    mean: RGB
    std: RGB


def resolve_recipe(cfg: AugmentConfig, info: DatasetInfo) -> ViewRecipe:
    """Fill a config's ``auto`` values from the dataset's preset."""
    preset = get_preset(info.preset if cfg.preset == "auto" else cfg.preset)
    if cfg.blur not in ("auto", "on", "off"):
        raise ConfigError(f"augment.blur must be auto, on or off; got {cfg.blur!r}")
    return ViewRecipe(
        image_size=cfg.image_size or info.image_size,
        crop_scale_min=cfg.crop_scale_min,
        color_strength=preset.color_strength if cfg.color_strength < 0 else cfg.color_strength,
        color_p=cfg.color_p,
        gray_p=cfg.gray_p,
        blur=preset.blur if cfg.blur == "auto" else cfg.blur == "on",
        mean=preset.mean,
        std=preset.std,
    )


def simclr_transform(recipe: ViewRecipe) -> Callable[[Image.Image], torch.Tensor]:
    """One random SimCLR view: PIL image -> normalised float tensor (3, S, S)."""
    s = recipe.color_strength
    steps: list[Callable] = [
        T.RandomResizedCrop(recipe.image_size, scale=(recipe.crop_scale_min, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=recipe.color_p),
        T.RandomGrayscale(p=recipe.gray_p),
    ]
    if recipe.blur:
        kernel = max(3, int(0.1 * recipe.image_size) // 2 * 2 + 1)  # odd, 10% of the side
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
    return T.Compose(steps)


class TwoViews:
    """Two independent views of the same image: ``img -> (view1, view2)``."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform(img)


def eval_transform(recipe: ViewRecipe) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation transform: resize (shorter side to S/0.875 for large images,
    as in the ImageNet protocol) and centre-crop to S, then normalise."""
    size = recipe.image_size
    resize = size if size <= 64 else int(round(size / 0.875))
    return T.Compose(
        [T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
    )
