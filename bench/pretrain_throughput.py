"""SimCLR pretraining throughput, in one process and one run, in image pairs per second.

(a) the model alone: the training step on random tensors already on the device (the ceiling);
(b) this project's device pipeline: :class:`pretrain.gpu_data.GPUTwoViewBatches` (uint8 images
    on the device, per-sample augmentation in batched tensor ops) + the same training step;
(c) the usual pipeline: torchvision transforms on PIL images in DataLoader workers
    (:class:`pretrain.train.CPUTwoViewBatches`, all available cores) + the same training step;
(d) with ``--lightly``, when lightly is importable: lightly's own pipeline, ``SimCLRTransform(
    input_size=32, gaussian_blur=0.0)`` on PIL images in a shuffled DataLoader with all cores,
    as lightly's CIFAR-10 SimCLR example (``examples/pytorch/simclr.py``) builds it, + the same
    training step;
plus the augmentation of (b) alone. Prints pairs/s and the ratios b/c, b/a and b/d (issue 6
targets on one H100, CIFAR-10, ResNet-18 with CIFAR stem, batch 512, bf16: b/c >= 4,
b/a >= 0.85).

The training step (:class:`pretrain.step.TrainStep`) never synchronises; each measurement
runs ``--warmup`` untimed steps, then ``--steps`` timed steps closed by one synchronisation.
See bench/README.md for the commands.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from pretrain.augment import ViewRecipe, resolve_recipe
from pretrain.config import DEFAULT_CACHE_DIR, AugmentConfig, ModelConfig, OptimConfig
from pretrain.data import DatasetInfo, ImageDataset, load_dataset
from pretrain.distributed import resolve_device
from pretrain.encoders import encoder_names
from pretrain.gpu_data import GPUTwoViewBatches
from pretrain.model import build_model
from pretrain.optim import build_optimizer
from pretrain.step import TrainStep
from pretrain.train import CPUTwoViewBatches

Views = tuple[torch.Tensor, torch.Tensor]


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with bench/time_to_accuracy.py."""
    p.add_argument("--dataset", default="cifar10", help="cifar10 | digits | random (uint8 noise)")
    p.add_argument("--data-root", default="", help="cifar10.tar.xz or folder ('' = ../shared/data)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    p.add_argument("--limit", type=int, default=0, help="a seeded random subset of N images (0 = all)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--encoder", default="resnet18", help=f"one of {encoder_names()}")
    p.add_argument(
        "--cifar-stem",
        choices=["auto", "on", "off"],
        default="auto",
        help="3x3 stride-1 stem without max-pool; auto = on for images <= 64 px",
    )
    p.add_argument("--hidden-dim", type=int, default=0, help="MLP head width (0 = encoder width)")
    p.add_argument("--out-dim", type=int, default=128, help="projection size z")
    p.add_argument("--batch", type=int, default=512, help="image pairs per step")
    p.add_argument("--optim", choices=["lars", "sgd", "adamw"], default="lars")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto = bf16 autocast on CUDA, fp32 on CPU",
    )
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    p.add_argument(
        "--compile", default="none", help="none | default | reduce-overhead (CUDA graphs) | max-autotune"
    )
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent tau")
    p.add_argument("--seed", type=int, default=0)


def load_bench_dataset(
    name: str, root: str, cache_dir: str, limit: int, split: str = "train"
) -> ImageDataset:
    """A dataset by name; ``random`` is 50,000 (or ``limit``) 32x32 uint8 noise images."""
    if name == "random":
        n = limit or 50_000
        rng = np.random.default_rng(0 if split == "train" else 1)
        array = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        return ImageDataset("random", [0] * n, ["noise"], DatasetInfo("cifar", 32), array=array)
    return load_dataset(name, split, root, cache_dir, limit)


def build_step(
    args: argparse.Namespace,
    device: torch.device,
    image_size: int,
    optim: OptimConfig | None = None,
    lr: float = 0.1,
) -> TrainStep:
    """Model (encoder + MLP head), optimizer and the sync-free step, as ``simclr-pretrain``."""
    stem = args.cifar_stem == "on" or (args.cifar_stem == "auto" and image_size <= 64)
    cfg = ModelConfig(
        encoder=args.encoder,
        cifar_stem=stem,
        head="mlp",
        hidden_dim=args.hidden_dim,
        out_dim=args.out_dim,
    )
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device)
    channels_last = device.type == "cuda" and not args.no_channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, optim or OptimConfig(name=args.optim), lr)
    return TrainStep(
        model, optimizer, args.temperature, device, args.precision, channels_last, args.compile
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(source: GPUTwoViewBatches | CPUTwoViewBatches, seed: int) -> Iterator[Views]:
    """Views of ``source``, epoch after epoch, each epoch reseeded as in training."""
    for epoch in itertools.count():
        source.set_epoch(seed, epoch)
        for views, _ in source:
            yield views


def lightly_views(dataset: ImageDataset, batch: int, workers: int, device: torch.device,
                  seed: int) -> Iterator[Views]:
    """Pipeline (d): lightly's ``SimCLRTransform`` in a DataLoader, views moved to ``device``
    as (c) moves its own. Raises ImportError when lightly is not installed."""
    from lightly.transforms import SimCLRTransform
    from torch.utils.data import DataLoader

    from pretrain.data import TransformedDataset

    two_views = TransformedDataset(dataset, SimCLRTransform(input_size=32, gaussian_blur=0.0))
    loader = DataLoader(two_views, batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    while True:
        for (x1, x2), _ in loader:
            yield (x1.to(device, non_blocking=True), x2.to(device, non_blocking=True))


def pairs_per_s(
    views: Iterator[Views],
    run: Callable[[torch.Tensor, torch.Tensor], object],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> float:
    """Throughput of ``run`` over ``steps`` batches of ``views`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(*next(views))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run(*next(views))
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before each timing")
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DataLoader workers of pipeline (c) (default: all available cores)",
    )
    p.add_argument("--lightly", action="store_true",
                   help="also measure (d): lightly's SimCLRTransform pipeline (needs lightly)")
    p.add_argument("--json", default="", help="append the results as one JSON line to this file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dataset = load_bench_dataset(args.dataset, args.data_root, args.cache_dir, args.limit)
    recipe: ViewRecipe = resolve_recipe(AugmentConfig(), dataset.info)
    s, b = recipe.image_size, args.batch
    step = build_step(args, device, s)
    lr = 0.1 if args.optim != "adamw" else 1e-4  # any finite-loss value: speed is all we measure

    def train(x1: torch.Tensor, x2: torch.Tensor) -> None:
        step(x1, x2, lr)

    print(
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"{dataset.name} ({len(dataset)} images, views {s}x{s}), {args.encoder} + MLP head, "
        f"batch {b} pairs, precision {args.precision}, channels_last "
        f"{step.channels_last}, compile {args.compile}, optimizer {args.optim}"
    )
    gen = torch.Generator(device=device).manual_seed(args.seed)
    fixed = (
        torch.randn(b, 3, s, s, device=device, generator=gen),
        torch.randn(b, 3, s, s, device=device, generator=gen),
    )
    results = {}
    results["a_model_only"] = pairs_per_s(
        itertools.repeat(fixed), train, b, args.steps, args.warmup, device
    )
    gpu_source = GPUTwoViewBatches(dataset, recipe, b, device)
    results["b_gpu_pipeline"] = pairs_per_s(
        endless(gpu_source, args.seed), train, b, args.steps, args.warmup, device
    )
    results["gpu_augment_only"] = pairs_per_s(
        endless(gpu_source, args.seed), lambda x1, x2: None, b, args.steps, args.warmup, device
    )
    del gpu_source
    cpu_source = CPUTwoViewBatches(dataset, recipe, b, args.workers, device)
    # Workers start together and fill their prefetch queues (2 batches each) while the first
    # steps run: drain that backlog before timing, or (c) looks faster than it can sustain.
    results["c_cpu_pipeline"] = pairs_per_s(
        endless(cpu_source, args.seed),
        train,
        b,
        args.steps,
        max(args.warmup, 2 * args.workers),
        device,
    )
    del cpu_source
    lightly_note = ""
    if args.lightly:
        try:
            views = lightly_views(dataset, b, args.workers, device, args.seed)
            results["d_lightly_pipeline"] = pairs_per_s(
                views, train, b, args.steps, max(args.warmup, 2 * args.workers), device)
        except ImportError as exc:
            lightly_note = f"(d) skipped: lightly is not importable ({exc})"
    step.read_loss()  # raises if any step produced a non-finite loss
    a, bb, c = results["a_model_only"], results["b_gpu_pipeline"], results["c_cpu_pipeline"]
    rows = [
        ("(a) model only, random tensors on the device", a),
        ("(b) GPU pipeline: device augmentation + step", bb),
        (f"(c) CPU pipeline: {args.workers} DataLoader workers + step", c),
        ("    device augmentation alone", results["gpu_augment_only"]),
    ]
    if "d_lightly_pipeline" in results:
        rows.append((f"(d) lightly SimCLRTransform, {args.workers} workers + step",
                     results["d_lightly_pipeline"]))
    for label, value in rows:
        print(f"{label:<56s} {value:10.0f} pairs/s")
    if lightly_note:
        print(lightly_note)
    results["b_over_c"], results["b_over_a"] = bb / c, bb / a
    print(f"b/c = {bb / c:.2f} (target >= 4 on an H100)   b/a = {bb / a:.2f} (target >= 0.85)")
    if "d_lightly_pipeline" in results:
        results["b_over_d"] = bb / results["d_lightly_pipeline"]
        print(f"b/d = {results['b_over_d']:.2f} (the device pipeline against lightly's)")
    if args.json:
        record = {**vars(args), **results, "device_name": str(device)}
        if device.type == "cuda":
            record["device_name"] = torch.cuda.get_device_name(device)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")
    return results


if __name__ == "__main__":
    main()
