"""Two-view batch sources that augment on the training device.

Both sources yield ``((x1, x2), labels)``: x1, x2 normalised float (B, 3, S, S) and labels
int64 (B,), all on ``device``, exactly like :class:`pretrain.train.CPUTwoViewBatches` (the
torchvision DataLoader path); both views of row k come from the same image.

* :class:`GPUTwoViewBatches`: in-memory datasets (``ImageDataset.array``, CIFAR-size, up to a
  few GB): the uint8 images are copied to the device once; indexing, augmentation and labels
  never leave it.
* :class:`DecodedTwoViewBatches`: image files: DataLoader workers only decode and resize (the
  whole image, its aspect kept, into a fixed uint8 canvas; no float work on the CPU); crops,
  colour and blur run on the device, each crop drawn from the whole image as torchvision's
  ``RandomResizedCrop`` does.

``set_epoch(seed, epoch, rank, world_size)`` makes an epoch reproducible: the shuffle depends on
(seed, epoch) only, so the ranks' shards partition one permutation (as ``DistributedSampler``);
the augmentation generator depends on (seed, epoch, rank). With ``drop_last`` the N % world
images left over by the shards and each shard's last partial batch are skipped (different ones
every epoch); without it the permutation is padded with its own head to a multiple of world
and the last batch is smaller.

The training step that consumes them without host synchronisations is
:class:`pretrain.step.TrainStep`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain import distributed as dist_utils
from pretrain.augment import ViewRecipe
from pretrain.data import ImageDataset
from pretrain.errors import DataError
from pretrain.gpu_augment import GPUAugment

Batch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


def stream_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A distinct reproducible seed per (run seed, epoch, rank, stream)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + stream * 15_485_863) % (2**63 - 1)


def shard_indices(
    n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, drop_last: bool = True
) -> torch.Tensor:
    """This rank's share of a seeded permutation of range(n): int64 (n // world,) with
    ``drop_last``, else (ceil(n / world),) from the permutation padded with its head."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    gen = torch.Generator().manual_seed(stream_seed(seed, epoch))
    perm = torch.randperm(n, generator=gen)
    if drop_last:
        perm = perm[: n // world_size * world_size]
    else:
        pad = -n % world_size
        perm = torch.cat([perm, perm[:pad]])
    return perm[rank::world_size]


def _num_batches(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_rank = n // world_size if drop_last else -(-n // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


class _EpochState:
    """Shard, batch count and augmentation generator shared by both batch sources."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, device: torch.device) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.drop_last, self.device = n, batch_size, drop_last, device
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.generator = torch.Generator(device=device)
        self.indices = torch.empty(0, dtype=torch.long)
        self.set_epoch(0, 0)

    def set_epoch(
        self, seed: int, epoch: int, rank: int | None = None, world_size: int | None = None
    ) -> None:
        self.rank = self.rank if rank is None else rank
        self.world_size = self.world_size if world_size is None else world_size
        self.indices = shard_indices(self.n, seed, epoch, self.rank, self.world_size, self.drop_last)
        self.generator.manual_seed(stream_seed(seed, epoch, self.rank, stream=1))

    def __len__(self) -> int:
        return _num_batches(self.n, self.batch_size, self.world_size, self.drop_last)


class GPUTwoViewBatches:
    """Two-view batches of an in-memory dataset, sampled and augmented on ``device``.

    Args:
        dataset: an :class:`ImageDataset` with ``array`` (N, H, W, 3) uint8.
        recipe: augmentation settings; ``batch_size``: pairs per batch on this rank.
        device: where the images, views and labels live.
        drop_last: skip each epoch's last partial batch (static shapes for compile/graphs).
        solarize_p: solarisation probability (see :class:`GPUAugment`).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: ViewRecipe,
        batch_size: int,
        device: torch.device,
        drop_last: bool = True,
        solarize_p: float = 0.0,
    ) -> None:
        if dataset.array is None:
            raise ValueError(f"{dataset.name} is not held in memory; use DecodedTwoViewBatches")
        nchw = np.ascontiguousarray(dataset.array.transpose(0, 3, 1, 2))  # a writable copy
        self.images = torch.from_numpy(nchw).to(device)  # (N, 3, H, W) uint8
        self.labels = torch.as_tensor(dataset.targets, dtype=torch.long).to(device)
        self.augment = GPUAugment(recipe, solarize_p)
        self.state = _EpochState(len(dataset), batch_size, drop_last, torch.device(device))
        self._shard = self.state.indices.to(device)

    def set_epoch(
        self, seed: int, epoch: int, rank: int | None = None, world_size: int | None = None
    ) -> None:
        """Reseed shuffling and augmentation for ``epoch`` (rank, world: default torch.distributed)."""
        self.state.set_epoch(seed, epoch, rank, world_size)
        self._shard = self.state.indices.to(self.images.device)

    def __len__(self) -> int:
        return len(self.state)

    def __iter__(self) -> Iterator[Batch]:
        b = self.state.batch_size
        for start in range(0, len(self) * b, b):
            idx = self._shard[start : start + b]
            x1, x2 = self.augment.two_views(self.images[idx], self.state.generator)
            yield (x1, x2), self.labels[idx]


MAX_ASPECT = 4.0 / 3.0  # canvas side / decode size: 4:3 photos keep their resolution


def decode_whole(img: Image.Image, size: int, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL image -> (uint8 (3, canvas, canvas), int64 (2,) = (h, w)): the whole image with its
    aspect ratio, shorter side ``size`` (smaller when the longer side would exceed ``canvas``),
    at the canvas' top left; the rest of the canvas is 0 and never sampled."""
    img = img.convert("RGB")
    w, h = img.size
    scale = min(size / min(w, h), canvas / max(w, h))
    nw, nh = max(1, min(canvas, round(w * scale))), max(1, min(canvas, round(h * scale)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    out = torch.zeros(3, canvas, canvas, dtype=torch.uint8)
    out[:, :nh, :nw] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return out, torch.tensor([nh, nw])


class DecodedImages(Dataset):
    """``(uint8 (3, C, C), (h, w), label)`` per image of ``base``: decoded and resized whole
    (:func:`decode_whole`, shorter side ``size``, canvas C), nothing else."""

    def __init__(self, base: ImageDataset, size: int, canvas: int) -> None:
        self.base, self.size, self.canvas = base, size, canvas

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.base.files is None:
            img = self.base.load_image(index)
        else:
            path = self.base.files[index]
            try:
                with Image.open(path) as opened:
                    opened.draft("RGB", (self.size, self.size))  # JPEG: decode at reduced scale
                    img = opened.convert("RGB")
            except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DataError(f"cannot read image {path}: {exc}") from None
        image, extent = decode_whole(img, self.size, self.canvas)
        return image, extent, self.base.targets[index]


class _ShardSampler(Sampler[int]):
    """Yields the current epoch's shard (read in the main process, so set_epoch takes effect)."""

    def __init__(self, state: _EpochState) -> None:
        self.state = state

    def __len__(self) -> int:
        return len(self.state.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.state.indices.tolist())


class DecodedTwoViewBatches:
    """Two-view batches of image files: workers decode, ``device`` augments.

    Args: as :class:`GPUTwoViewBatches`, plus ``num_workers`` (decoding processes) and
    ``decode_size`` D in pixels (0 = S for S <= 64, else S / 0.875 as the evaluation resize):
    each image is decoded whole with its shorter side D into a (C, C) canvas, C = D x 4/3
    (an image more elongated than 4:3 is shrunk to fit, still whole), and its crops are drawn
    from all of it, with the area and aspect distribution of ``RandomResizedCrop`` on the
    original image.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: ViewRecipe,
        batch_size: int,
        device: torch.device,
        num_workers: int = 0,
        drop_last: bool = True,
        decode_size: int = 0,
        solarize_p: float = 0.0,
    ) -> None:
        s = recipe.image_size
        self.decode_size = decode_size or (s if s <= 64 else round(s / 0.875))
        self.canvas = math.ceil(self.decode_size * MAX_ASPECT)
        self.device = torch.device(device)
        self.augment = GPUAugment(recipe, solarize_p)
        self.state = _EpochState(len(dataset), batch_size, drop_last, self.device)
        self.loader = DataLoader(
            DecodedImages(dataset, self.decode_size, self.canvas),
            batch_size=batch_size,
            sampler=_ShardSampler(self.state),
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def set_epoch(
        self, seed: int, epoch: int, rank: int | None = None, world_size: int | None = None
    ) -> None:
        """Reseed shuffling and augmentation for ``epoch`` (rank, world: default torch.distributed)."""
        self.state.set_epoch(seed, epoch, rank, world_size)

    def __len__(self) -> int:
        return len(self.state)

    def __iter__(self) -> Iterator[Batch]:
        for images, extents, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            x1, x2 = self.augment.two_views(images, self.state.generator, extents)
            yield (x1, x2), labels.to(self.device, non_blocking=True)


def make_device_batches(
    dataset: ImageDataset,
    recipe: ViewRecipe,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    drop_last: bool = True,
) -> GPUTwoViewBatches | DecodedTwoViewBatches:
    """The device-augmented batch source that fits ``dataset``: in memory, or decoded files."""
    if dataset.array is not None:
        return GPUTwoViewBatches(dataset, recipe, batch_size, device, drop_last)
    return DecodedTwoViewBatches(dataset, recipe, batch_size, device, num_workers, drop_last)
