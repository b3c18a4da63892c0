"""SimCLR views as batched per-sample tensor ops, on any device (Chen et al. 2020, Appendix A).

The same distribution as :func:`pretrain.augment.simclr_transform` (torchvision), but every
image of a batch is augmented at once by a handful of kernels, so the views can be made on the
GPU from uint8 images that already live there:

1. random resized crop + horizontal flip: one box per image, sampled exactly like
   ``T.RandomResizedCrop.get_params`` (area fraction uniform in [scale_min, 1], log-uniform
   aspect ratio in [3/4, 4/3], 10 tries, then the central-crop fallback), applied with
   bilinear ``F.grid_sample`` at ``TF.resized_crop``'s sample points (strictly inside the box);
   the flip reverses the sample columns;
2. colour jitter with probability p: brightness, contrast and saturation factors uniform in
   [max(0, 1 - 0.8s), 1 + 0.8s], hue shift uniform in [-0.2s, 0.2s] turns, applied in a random
   order per image, each op defined as in ``torchvision.transforms.v2.functional``;
3. grayscale with probability p (ITU-R 601-2 luma: 0.2989 R + 0.587 G + 0.114 B);
4. optional Gaussian blur (p = 0.5, sigma uniform in [0.1, 2.0] pixels, kernel 10% of the side,
   reflect padding) as a separable grouped convolution with per-image kernels;
5. optional solarisation (p, threshold 0.5; BYOL, Grill et al. 2020), then normalisation.

Every random number of a batch comes from one draw of an explicit ``torch.Generator``, so equal
seeds give equal views. Known difference to the PIL pipeline: the resize has no antialiasing,
so crops that shrink the image (large images, big crops) alias slightly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from pretrain.augment import ViewRecipe

CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio range of RandomResizedCrop (torchvision default)
CROP_TRIES = 10  # rejection-sampling tries before the central-crop fallback (torchvision)
BLUR_SIGMA = (0.1, 2.0)  # pixels (SimCLR App. A)
BLUR_P = 0.5
SOLARIZE_THRESHOLD = 0.5  # on [0, 1] intensities (BYOL)
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale
COLOR_OPS = ("brightness", "contrast", "saturation", "hue")  # indices used by ViewParams.order


@dataclass(frozen=True)
class ViewParams:
    """Per-image random parameters of a batch of B views (all tensors share one device)."""

    boxes: torch.Tensor  # (B, 4) int64: top, left, height, width of the crop, source pixels
    flip: torch.Tensor  # (B,) bool: mirror the crop horizontally
    jitter: torch.Tensor  # (B,) bool: apply colour jitter
    factors: torch.Tensor  # (B, 4) float32: brightness, contrast, saturation factor; hue turns
    order: torch.Tensor  # (B, 4) int64: a permutation of 0..3 (indices into COLOR_OPS)
    gray: torch.Tensor  # (B,) bool: convert to grayscale
    blur_sigma: torch.Tensor  # (B,) float32, pixels; 0 = no blur
    solarize: torch.Tensor  # (B,) bool

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device) -> ViewParams:
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)}
        return ViewParams(**moved)


def device_constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A small constant on ``like``'s device, made by fill kernels: ``torch.tensor(values,
    device=cuda)`` would be a blocking host-to-device copy, i.e. a synchronisation."""
    return torch.stack([torch.full((), float(v), device=like.device, dtype=like.dtype) for v in values])


def jitter_ranges(strength: float) -> list[tuple[float, float]]:
    """[low, high] of the brightness, contrast, saturation factors and the hue shift (turns)
    for colour strength s: ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)`` (SimCLR App. A)."""
    b = 0.8 * strength
    h = 0.2 * strength
    if h > 0.5:
        raise ValueError(f"colour strength {strength} gives a hue range above 0.5 turns")
    return [(max(0.0, 1 - b), 1 + b)] * 3 + [(-h, h)]


Size = int | torch.Tensor  # one extent for the batch, or one per image (B,)


def sample_crop_boxes(
    u: torch.Tensor, height: Size, width: Size, scale: tuple[float, float]
) -> torch.Tensor:
    """Vectorised ``T.RandomResizedCrop.get_params`` from uniforms ``u`` (B, 2 * tries + 2).

    Columns: ``tries`` area fractions, ``tries`` log aspect ratios, then the top and left
    offsets. ``height``/``width`` are the image's extent, or (B,) extents of images of
    different sizes (each box lies inside its own image). Returns (B, 4) int64 boxes
    (top, left, height, width).
    """
    tries = (u.shape[1] - 2) // 2
    n = u.shape[0]
    hh = torch.as_tensor(height, dtype=u.dtype, device=u.device).expand(n)
    ww = torch.as_tensor(width, dtype=u.dtype, device=u.device).expand(n)
    area = (hh * ww)[:, None]
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :tries])
    aspect = torch.exp(lo + (hi - lo) * u[:, tries : 2 * tries])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= ww[:, None]) & (h > 0) & (h <= hh[:, None])
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid try (0 if none)
    found = ok.any(dim=1)
    # The fallback of torchvision: the largest central crop with an aspect ratio in range.
    in_ratio = ww / hh
    narrow, wide = in_ratio < CROP_RATIO[0], in_ratio > CROP_RATIO[1]
    fw = torch.where(wide, torch.round(hh * CROP_RATIO[1]), ww)
    fh = torch.where(narrow, torch.round(ww / CROP_RATIO[0]), hh)
    w = torch.where(found, w.gather(1, first).squeeze(1), fw)
    h = torch.where(found, h.gather(1, first).squeeze(1), fh)
    top = torch.where(found, torch.floor(u[:, -2] * (hh - h + 1)), torch.floor((hh - fh) / 2))
    left = torch.where(found, torch.floor(u[:, -1] * (ww - w + 1)), torch.floor((ww - fw) / 2))
    return torch.stack([top, left, h, w], dim=1).long()


def sample_view_params(
    n: int,
    height: Size,
    width: Size,
    recipe: ViewRecipe,
    generator: torch.Generator,
    solarize_p: float = 0.0,
) -> ViewParams:
    """Parameters of ``n`` independent views of (height x width) images (or of images with
    (n,) extents each), on the generator's device, from one ``torch.rand`` draw (reproducible
    for a given generator state)."""
    t = CROP_TRIES
    u = torch.rand((n, 2 * t + 17), generator=generator, device=generator.device, dtype=torch.float64)
    boxes = sample_crop_boxes(u[:, : 2 * t + 2], height, width, (recipe.crop_scale_min, 1.0))
    r = u[:, 2 * t + 2 :]  # 15 more columns
    ranges = jitter_ranges(recipe.color_strength)
    factors = torch.stack([lo + (hi - lo) * r[:, 3 + k] for k, (lo, hi) in enumerate(ranges)], 1)
    sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * r[:, 13]
    blur = (r[:, 12] < BLUR_P) & recipe.blur
    return ViewParams(
        boxes=boxes,
        flip=r[:, 0] < 0.5,
        jitter=r[:, 1] < recipe.color_p,
        factors=factors.float(),
        order=r[:, 7:11].argsort(dim=1),  # uniform random permutation per image
        gray=r[:, 2] < recipe.gray_p,
        blur_sigma=torch.where(blur, sigma, 0.0).float(),
        solarize=r[:, 14] < solarize_p,
    )


def to_float_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (B, 3, H, W), or float in [0, 1] -> float32 (B, 3, H, W) in [0, 1]."""
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[3]):
        raise ValueError(f"expected (B, H, W, 3) or (B, 3, H, W) images, got {tuple(images.shape)}")
    if images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def crop_coordinates(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """Source pixel coordinates (B, size) of ``size`` output pixels resampling the span
    [start, start + length) of each row: the half-pixel map of ``F.interpolate``
    (align_corners=False) inside the span, clamped to its first and last pixel, exactly as
    ``torchvision.transforms.functional.resized_crop`` samples the cropped image."""
    j = torch.arange(size, dtype=start.dtype, device=start.device) + 0.5
    inside = j[None, :] * (length[:, None] / size) - 0.5  # (B, size), in crop pixels
    upper = (length - 1).clamp(min=0)[:, None]
    return start[:, None] + torch.minimum(inside.clamp(min=0.0), upper)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (B, 4) = (top, left, h, w) of x (B, C, H, W), mirror where ``flip``, and
    resize bilinearly to (B, C, size, size).

    Every sample lies inside its box (edge pixels repeat the box's edge, never a pixel outside
    it), so a view equals ``TF.resized_crop(img, top, left, h, w, size, antialias=False)``
    followed by the flip.
    """
    b, c, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(dim=1)
    cols = crop_coordinates(left, w, size)  # (B, size) source x in pixels
    rows = crop_coordinates(top, h, size)  # (B, size) source y in pixels
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    gx = (2.0 * cols + 1.0) / width - 1.0  # pixel centres -> grid_sample's [-1, 1]
    gy = (2.0 * rows + 1.0) / height - 1.0
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, as ``TF.rgb_to_grayscale``."""
    r, g, b = x.unbind(dim=1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of x (B, 3, H, W) in [0, 1] by ``shift`` (B,) turns, as
    ``TF.adjust_hue``; HSV -> RGB by the closed form f(n) = V - C clamp(min(k, 4 - k), 0, 1),
    k = (n + 6H) mod 6, n = 5, 3, 1, with chroma C = max - min."""
    r, g, _ = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    chroma = maxc - minc
    eqc = chroma == 0
    divisor = torch.where(eqc, 1.0, chroma).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / divisor).unbind(dim=1)
    max_r = maxc == r
    max_g = (maxc == g) & ~max_r
    max_b = ~max_g & ~max_r
    hue = (bc - gc) * max_r + (2.0 + rc - bc) * max_g + (4.0 + gc - rc) * max_b
    hue = torch.remainder(hue / 6.0 + 1.0 + shift.view(-1, 1, 1).to(x.dtype), 1.0)
    n = device_constant((5.0, 3.0, 1.0), x).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * ramp


def color_jitter(
    x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, apply: torch.Tensor
) -> torch.Tensor:
    """Per-image ``ColorJitter``: the four ops of x (B, 3, H, W) in each image's own ``order``.

    Brightness, contrast and saturation are all the blend ``clamp(f x + (1 - f) y, 0, 1)``
    (y = 0, the mean luma of the image, its luma image), so each position of the order runs
    one blend with per-image coefficients and one masked hue rotation: 4 passes, not 16.
    """
    neutral = device_constant((1.0, 1.0, 1.0, 0.0), factors)
    factors = torch.where(apply.unsqueeze(1), factors, neutral)
    for position in range(4):
        op = order[:, position]
        f = factors.gather(1, op.unsqueeze(1)).squeeze(1)
        is_hue = (op == 3) & apply
        scale = torch.where(op == 3, 1.0, f).view(-1, 1, 1, 1)
        w_mean = torch.where(op == 1, 1.0 - f, 0.0).view(-1, 1, 1, 1)
        w_gray = torch.where(op == 2, 1.0 - f, 0.0).view(-1, 1, 1, 1)
        gray = rgb_to_grayscale(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (x * scale + mean * w_mean + gray * w_gray).clamp_(0.0, 1.0)
        x = torch.where(is_hue.view(-1, 1, 1, 1), adjust_hue(x, f), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image of x (B, C, H, W) with its own sigma (B,) pixels, as
    ``TF.gaussian_blur`` (reflect padding), as two grouped 1-D convolutions."""
    b, c, height, width = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-0.5 * (t / sigma.to(x.dtype).view(-1, 1)) ** 2, dim=1)  # (B, K)
    kernel = kernel.unsqueeze(1).expand(b, c, kernel_size).reshape(b * c, kernel_size)  # per channel
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, b * c, height, width), [pad, pad, pad, pad], mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    return flat.view(b, c, height, width)


def apply_view_params(
    x: torch.Tensor,
    params: ViewParams,
    recipe: ViewRecipe,
    blur_kernel: int = 0,
    solarize: bool = False,
) -> torch.Tensor:
    """Views of float images x (B, 3, H, W) in [0, 1] -> normalised float (V*B, 3, S, S).

    ``params`` holds V*B rows: rows [vB, (v+1)B) are view v of images 0..B-1. ``blur_kernel``
    (odd, pixels; 0 = no blur) and ``solarize`` switch those passes on.
    """
    b = x.shape[0]
    if len(params) % b:
        raise ValueError(f"{len(params)} view parameters for {b} images")
    crops = [
        resized_crop(x, params.boxes[v : v + b], params.flip[v : v + b], recipe.image_size)
        for v in range(0, len(params), b)
    ]
    y = crops[0] if len(crops) == 1 else torch.cat(crops)
    y = color_jitter(y, params.factors, params.order, params.jitter)
    y = torch.where(params.gray.view(-1, 1, 1, 1), rgb_to_grayscale(y).expand_as(y), y)
    if blur_kernel:
        sigma = params.blur_sigma.clamp(min=BLUR_SIGMA[0])
        blurred = gaussian_blur(y, sigma, blur_kernel)
        y = torch.where((params.blur_sigma > 0).view(-1, 1, 1, 1), blurred, y)
    if solarize:
        flip = params.solarize.view(-1, 1, 1, 1) & (y >= SOLARIZE_THRESHOLD)
        y = torch.where(flip, 1.0 - y, y)
    mean = device_constant(recipe.mean, y).view(1, 3, 1, 1)
    std = device_constant(recipe.std, y).view(1, 3, 1, 1)
    return (y - mean) / std


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of 10% of the side, at least 3 (as :func:`pretrain.augment.simclr_transform`)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


class GPUAugment:
    """SimCLR views of a batch of uint8 images on the images' device.

    Args:
        recipe: the resolved augmentation settings (:class:`pretrain.augment.ViewRecipe`).
        solarize_p: probability of solarisation (0 in SimCLR; 0.2 for BYOL's second view).
    """

    def __init__(self, recipe: ViewRecipe, solarize_p: float = 0.0) -> None:
        jitter_ranges(recipe.color_strength)  # reject a hue range above 0.5 turns early
        self.recipe = recipe
        self.solarize_p = solarize_p
        self.blur_kernel = blur_kernel_size(recipe.image_size) if recipe.blur else 0

    def views(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        n_views: int,
        sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images (B, H, W, 3) or (B, 3, H, W) -> (n_views * B, 3, S, S), view-major.

        ``sizes`` (B, 2) int: the (height, width) each image really has, at the top left of
        its (H, W) canvas (images of different shapes in one batch); crops stay inside it.
        """
        x = to_float_nchw(images)
        height: Size = x.shape[2]
        width: Size = x.shape[3]
        if sizes is not None:
            extents = sizes.to(generator.device).repeat(n_views, 1)
            height, width = extents[:, 0], extents[:, 1]
        params = sample_view_params(
            n_views * x.shape[0], height, width, self.recipe, generator, self.solarize_p
        ).to(x.device)
        return apply_view_params(x, params, self.recipe, self.blur_kernel, self.solarize_p > 0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One view per image: (B, 3, S, S) normalised float."""
        return self.views(images, generator, 1)

    def two_views(
        self, images: torch.Tensor, generator: torch.Generator, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of every image: ((B, 3, S, S), (B, 3, S, S)); ``sizes`` as
        for :meth:`views`."""
        x1, x2 = self.views(images, generator, 2, sizes).chunk(2)
        return x1, x2
