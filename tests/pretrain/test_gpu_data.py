"""Device-side batch sources (pairing, labels, epochs, shards, files) and the sync-free step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.augment import ViewRecipe, simclr_transform
from pretrain.data import DatasetInfo, ImageDataset, load_dataset
from pretrain.encoders import SmallCNN
from pretrain.errors import NonFiniteLossError
from pretrain.gpu_data import (
    DecodedTwoViewBatches,
    GPUTwoViewBatches,
    decode_whole,
    make_device_batches,
    shard_indices,
)
from pretrain.heads import HeadShape, build_head
from pretrain.loss import nt_xent
from pretrain.model import SimCLRModel
from pretrain.step import TrainStep

CPU = torch.device("cpu")
# No colour change: a view of a flat image keeps the image's value, which encodes its index.
IDENTITY_COLOURS = ViewRecipe(8, 0.08, 0.5, 0.0, 0.0, False, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def flat_dataset(n: int, size: int = 8) -> ImageDataset:
    """Image i is flat with value i (uint8), label i % 10."""
    array = np.repeat(np.arange(n, dtype=np.uint8), size * size * 3).reshape(n, size, size, 3)
    return ImageDataset("flat", [i % 10 for i in range(n)], [], DatasetInfo("digits", size), array=array)


def image_ids(views: torch.Tensor, recipe: ViewRecipe = IDENTITY_COLOURS) -> torch.Tensor:
    """Recover the source index of each (B, 3, S, S) view of a flat image."""
    values = views * recipe.std[0] + recipe.mean[0]
    ids = (values * 255).round()
    assert (ids == ids[:, :1, :1, :1]).all(), "a view of a flat image is not flat"
    return ids[:, 0, 0, 0].long()


def collect(batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    ids, labels = [], []
    for (x1, x2), y in batches:
        a, b = image_ids(x1), image_ids(x2)
        assert torch.equal(a, b), "the two views of a pair come from different images"
        assert torch.equal(y, a % 10), "labels do not belong to the images"
        ids.append(a)
        labels.append(y)
    return ids, labels


def test_shards_partition_one_permutation_per_epoch() -> None:
    n, world = 103, 4
    shards = [shard_indices(n, seed=3, epoch=1, rank=r, world_size=world) for r in range(world)]
    assert all(len(s) == n // world for s in shards)
    union = torch.cat(shards)
    assert len(set(union.tolist())) == len(union)  # no image twice in an epoch
    padded = [shard_indices(n, 3, 1, r, world, drop_last=False) for r in range(world)]
    assert all(len(s) == 26 for s in padded)
    assert set(torch.cat(padded).tolist()) == set(range(n))  # every image, 1 padded duplicate
    assert torch.equal(shard_indices(n, 3, 1, 2, world), shards[2])  # reproducible
    assert not torch.equal(shard_indices(n, 3, 2, 2, world), shards[2])  # reshuffled per epoch
    with pytest.raises(ValueError, match="rank"):
        shard_indices(n, 0, 0, rank=4, world_size=4)


def test_in_memory_batches_pair_views_and_labels_and_cover_the_epoch() -> None:
    ds = flat_dataset(100)
    batches = GPUTwoViewBatches(ds, IDENTITY_COLOURS, batch_size=16, device=CPU)
    assert len(batches) == 6  # 100 // 16, the partial batch dropped
    batches.set_epoch(seed=0, epoch=0)
    ids, _ = collect(batches)
    seen = torch.cat(ids)
    assert all(len(i) == 16 for i in ids) and len(set(seen.tolist())) == 96
    assert not torch.equal(seen, torch.arange(96))  # shuffled
    x1 = next(iter(batches))[0][0]
    assert x1.shape == (16, 3, 8, 8) and x1.dtype == torch.float32
    keep = GPUTwoViewBatches(ds, IDENTITY_COLOURS, 16, CPU, drop_last=False)
    assert len(keep) == 7
    keep.set_epoch(0, 0)
    ids, _ = collect(keep)
    assert sorted(torch.cat(ids).tolist()) == list(range(100)) and len(ids[-1]) == 4


def test_set_epoch_makes_epochs_reproducible_and_distinct() -> None:
    recipe = ViewRecipe(8, 0.08, 0.5, 0.8, 0.2, True, (0.5,) * 3, (0.5,) * 3)
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    ds = ImageDataset("rand", [0] * 40, [], DatasetInfo("digits", 8), array=images)
    batches = GPUTwoViewBatches(ds, recipe, 8, CPU)

    def epoch(seed: int, e: int) -> list[torch.Tensor]:
        batches.set_epoch(seed, e)
        return [torch.cat([x1, x2]) for (x1, x2), _ in batches]

    first = epoch(0, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 5), strict=True))  # e.g. after a resume
    assert not torch.equal(first[0], epoch(0, 6)[0])
    assert not torch.equal(first[0], epoch(1, 5)[0])


def test_ranks_see_disjoint_shards_that_cover_the_dataset() -> None:
    ds = flat_dataset(64)
    seen = []
    for rank in range(2):
        batches = GPUTwoViewBatches(ds, IDENTITY_COLOURS, batch_size=8, device=CPU)
        batches.set_epoch(seed=1, epoch=3, rank=rank, world_size=2)
        assert len(batches) == 4  # 32 images per rank
        ids, _ = collect(batches)
        seen.append(torch.cat(ids))
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(64))


def test_decode_whole_keeps_every_column_and_the_aspect_ratio() -> None:
    columns = np.arange(30, dtype=np.uint8) * 8  # a 30 x 10 image whose columns are distinct
    img = Image.fromarray(np.broadcast_to(columns[None, :, None], (10, 30, 3)).copy())
    out, extent = decode_whole(img, 10, 14)  # 3:1 does not fit 14 x 14 at height 10: shrunk
    assert out.shape == (3, 14, 14) and out.dtype == torch.uint8 and extent.tolist() == [5, 14]
    row = out[0, 0, :14].int()
    assert row[0] < 20 and row[-1] > 215 and bool((row[1:] >= row[:-1]).all())  # all of it
    assert out[:, 5:].sum() == 0 and out[:, :, 14:].sum() == 0  # the rest of the canvas is 0
    square, extent = decode_whole(img.crop((0, 0, 10, 10)), 8, 11)
    assert extent.tolist() == [8, 8]


def _coverage(views: torch.Tensor) -> float:
    """Share of (N, 3, S, S) views in 0-1 that contain a red or a blue pixel."""
    red = (views[:, 0] > 0.7) & (views[:, 2] < 0.3)
    blue = (views[:, 2] > 0.7) & (views[:, 0] < 0.3)
    return float((red | blue).flatten(1).any(1).float().mean())


def test_device_crops_see_the_whole_image_like_random_resized_crop(tmp_path: Path) -> None:
    """A 512 x 256 image with red and blue outer quarters: the device path used to crop from
    the central 256 x 256 square only, so 0% of its views held red or blue (CPU: about 80%)."""
    pixels = np.full((256, 512, 3), 128, np.uint8)
    pixels[:, :128] = (255, 0, 0)
    pixels[:, 384:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    raw = ViewRecipe(32, 0.08, 0.5, 0.0, 0.0, False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    n = 512
    ds = ImageDataset("wide", [0] * n, ["x"], DatasetInfo("imagenet", 224), files=[path] * n)
    batches = DecodedTwoViewBatches(ds, raw, batch_size=128, device=CPU, decode_size=64)
    batches.set_epoch(seed=0, epoch=0)
    device = torch.cat([torch.cat(views) for views, _ in batches])
    torch.manual_seed(0)
    cpu_view = simclr_transform(raw)
    cpu = torch.stack([cpu_view(Image.open(path).convert("RGB")) for _ in range(600)])
    assert _coverage(cpu) > 0.7
    assert abs(_coverage(device) - _coverage(cpu)) < 0.06


def _write_flat_images(folder: Path, n: int) -> None:
    for i in range(n):
        cls = folder / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        size = (12, 8) if i % 3 else (8, 8)  # mixed sizes and aspect ratios
        Image.new("RGB", size, (i, i, i)).save(cls / f"{i:03d}.png")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_file_batches_decode_in_workers_and_augment_on_the_device(
    tmp_path: Path, num_workers: int
) -> None:
    _write_flat_images(tmp_path / "ds" / "train", 24)
    ds = load_dataset(f"imagefolder:{tmp_path / 'ds'}", "train")
    assert ds.files is not None
    batches = DecodedTwoViewBatches(ds, IDENTITY_COLOURS, 4, CPU, num_workers=num_workers)
    assert batches.decode_size == 8 and len(batches) == 6
    epochs = []
    for epoch in range(2):
        batches.set_epoch(seed=0, epoch=epoch)
        order = []
        for (x1, x2), labels in batches:
            a, b = image_ids(x1), image_ids(x2)
            assert torch.equal(a, b) and x1.shape == (4, 3, 8, 8)
            order += a.tolist()
            stems = [ds.files[i].stem for i in range(len(ds))]
            assert labels.tolist() == [ds.targets[stems.index(f"{i:03d}")] for i in a.tolist()]
        epochs.append(order)
    assert sorted(epochs[0]) == list(range(24)) and epochs[0] != epochs[1]  # set_epoch reached
    assert isinstance(make_device_batches(ds, IDENTITY_COLOURS, 4, CPU), DecodedTwoViewBatches)
    assert isinstance(make_device_batches(flat_dataset(8), IDENTITY_COLOURS, 4, CPU), GPUTwoViewBatches)


def _model(seed: int = 0) -> SimCLRModel:
    torch.manual_seed(seed)
    return SimCLRModel(SmallCNN(width=4), build_head("mlp", 32, HeadShape(out_dim=8, hidden_dim=16)))


def test_train_step_equals_a_plain_step_and_reads_the_mean_loss() -> None:
    x1, x2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    model, reference = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.0, momentum=0.9)
    step = TrainStep(model, opt, temperature=0.5, device=CPU, precision="fp32")
    losses = []
    for lr in (0.1, 0.05):
        losses.append(float(step(x1, x2, lr)))
        for group in ref_opt.param_groups:
            group["lr"] = lr
        z1, z2 = reference(torch.cat([x1, x2])).chunk(2)
        loss = nt_xent(z1, z2, 0.5)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        assert losses[-1] == pytest.approx(loss.item(), abs=1e-6)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert step.read_loss() == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert step.steps == 2 and np.isnan(step.read_loss())  # nothing since the last read


def test_train_step_reports_the_first_non_finite_step() -> None:
    model = _model()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, CPU, "fp32")
    x = torch.randn(4, 3, 8, 8)
    step(x, x.clone(), 0.1)
    step(torch.full_like(x, float("nan")), x, 0.1)
    step(x, x.clone(), 0.1)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        step.read_loss()


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step() -> None:
    x1, x2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    losses = []
    for mode in ("none", "default"):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = TrainStep(model, opt, 0.5, CPU, "fp32", compile_mode=mode)
        losses.append([float(step(x1, x2, 0.1)) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.mark.gpu
def test_cuda_batches_never_synchronise() -> None:
    device = torch.device("cuda")
    ds = load_dataset("digits", "train", limit=256)
    recipe = ViewRecipe(16, 0.08, 0.5, 0.8, 0.2, True, (0.5,) * 3, (0.5,) * 3)
    batches = GPUTwoViewBatches(ds, recipe, 64, device, solarize_p=0.2)
    batches.set_epoch(0, 0)
    next(iter(batches))  # warm-up: lazy CUDA initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for (x1, x2), labels in batches:
            assert x1.is_cuda and x2.is_cuda and labels.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_train_step_never_synchronises() -> None:
    device = torch.device("cuda")
    model = _model().to(device).to(memory_format=torch.channels_last)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, device)
    x1, x2 = torch.randn(64, 3, 16, 16, device=device), torch.randn(64, 3, 16, 16, device=device)
    step(x1, x2, 0.1)  # warm-up (cuDNN, autocast caches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(x1, x2, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(step.read_loss())
