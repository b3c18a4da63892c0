"""The fine-tuning loop: step-based, cosine learning rate, bf16 and channels_last on CUDA,
DDP with synchronised BN under torchrun, exact resume; and the once-only evaluation.

Every source of randomness is a function of ``(seed, step, position in the global batch)``: the
images of a step come from :func:`transfer.streams.batch_indices` (epochs of a seeded
permutation cut into global batches, every W-th image to rank r), and each image's random crop
and flip are drawn after seeding torch's RNG from its own seed (:class:`SeededViews`), in the
DataLoader worker or the main process alike. A run resumed from ``checkpoint.pt`` at step k
therefore continues exactly as the uninterrupted run would (same weights on the same hardware).

The loss and a non-finite flag are kept on the device and read every ``log_every`` steps and
before each checkpoint, so the GPU never waits otherwise; a non-finite loss stops training
with the first bad step named, and no checkpoint holds weights updated by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pretrain import distributed as dist_utils
from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.data import ImageDataset
from pretrain.errors import CheckpointError, ConfigError, NonFiniteLossError
from pretrain.features import extract_features
from pretrain.jsonl import append_jsonl
from pretrain.model import SimCLRModel
from pretrain.optim import LARS, split_decay_groups, warmup_cosine_schedule
from pretrain.step import DeviceLossMeter, use_bf16
from pretrain.sync_bn import convert_sync_batchnorm
from probes.metrics import classification_metrics
from transfer.streams import IterationSampler, iteration_seed

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT_FORMAT = "simclr-transfer/finetune-checkpoint/1"


@dataclass(frozen=True)
class FitSpec:
    """How one fine-tuning trains (everything but the data and the network).

    Attributes:
        optimizer: ``sgd`` or ``lars``; nesterov, momentum: its momentum.
        lr: peak learning rate (already scaled for ``batch_size``); cosine decay to 0.
        weight_decay: the optimizer's weight decay (weights only; biases and norms get none).
        batch_size: global batch; each of W ranks takes batch_size / W images.
        total_steps: optimizer steps.
        bn_momentum: PyTorch BN momentum for every BN layer, or None to keep theirs.
        seed: data order and augmentation.
    """

    optimizer: str
    nesterov: bool
    momentum: float
    lr: float
    weight_decay: float
    batch_size: int
    total_steps: int
    bn_momentum: float | None
    seed: int


@dataclass(frozen=True)
class RunOptions:
    """Where and how the steps run; none of it changes what is learned on one device."""

    device: torch.device
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    channels_last: bool = True
    num_workers: int = 0
    progress: bool = True
    log_every: int = 50
    checkpoint_every: int = 0  # steps; 0 = once per pass over the images


def sample_seed(seed: int, step: int, position: int) -> int:
    """The seed of the ``position``-th image of global batch ``step``: the same whichever rank
    takes that image, so W processes see exactly the views one process would."""
    return (iteration_seed(seed, step) + 1_000_033 * (position + 1)) % (2**63 - 1)


class SeededViews(Dataset):
    """Items ``(index, seed)`` -> ``(transform(image), label)`` with torch's RNG seeded from
    ``seed`` first, so an image's augmentation depends on its seed only (not on the worker or
    on what ran before)."""

    def __init__(self, base: ImageDataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            view = self.transform(self.base.load_image(index))
        return view, self.base.targets[index]


class SeededBatches(IterationSampler):
    """The stream's batches of steps ``start_iter .. max_iter - 1`` as this rank's
    ``(index, seed)`` pairs (the batch sampler of :class:`SeededViews`)."""

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:  # type: ignore[override]
        _, _, seed, rank, world = self.args
        for step, idx in enumerate(super().__iter__(), start=self.start_iter):
            # rank r holds global positions r, r + W, ...: seeds do not depend on W
            yield [(i, sample_seed(seed, step, rank + j * world)) for j, i in enumerate(idx)]


def build_optimizer(net: nn.Module, spec: FitSpec) -> torch.optim.Optimizer:
    """SGD (Nesterov or not) or LARS over ``net``; weights decay, biases and norms do not."""
    decay, no_decay = split_decay_groups(net)
    if spec.optimizer == "lars":
        return LARS([{"params": decay, "weight_decay": spec.weight_decay, "lars_exclude": False},
                     {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}],
                    lr=spec.lr, momentum=spec.momentum)
    if spec.optimizer == "sgd":
        return torch.optim.SGD([{"params": decay, "weight_decay": spec.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}],
                               lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    raise ConfigError(f"unknown fine-tuning optimizer {spec.optimizer!r}; valid: lars, sgd")


def set_bn_momentum(net: nn.Module, momentum: float | None) -> None:
    if momentum is None:
        return
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def fit(
    net: nn.Module,
    dataset: ImageDataset,
    transform: Callable[[Any], torch.Tensor],
    spec: FitSpec,
    run: RunOptions,
    work_dir: Path,
    identity: str,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``net`` (in place) on ``dataset`` as ``spec`` says; returns training stats.

    ``work_dir/checkpoint.pt`` is written atomically every ``run.checkpoint_every`` steps and at
    the end; with ``resume`` an existing one is continued (its ``identity``, the caller's
    description of everything that determines the result, must be this one's).

    Args:
        on_step: called with the 1-based step after each step (and its checkpoint); tests use it.
    """
    world, rank = dist_utils.world_size(), dist_utils.rank()
    if spec.batch_size % world:
        raise ConfigError(f"the fine-tuning batch ({spec.batch_size}) must be divisible by the "
                          f"{world} processes")
    device = run.device
    if world > 1:
        net = convert_sync_batchnorm(net, device)  # global BN (SimCLRv2 fine-tunes with it)
    set_bn_momentum(net, spec.bn_momentum)
    net.to(device)
    if device.type == "cuda" and run.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net, spec)
    lrs = warmup_cosine_schedule(spec.lr, spec.total_steps, 0)
    start, trained_before = 0, 0.0
    ckpt = work_dir / CHECKPOINT
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, map_location=device)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
            raise CheckpointError(f"{ckpt} belongs to another fine-tuning (other settings or "
                                  "weights); remove its folder to start again")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, trained_before = int(state["step"]), float(state.get("train_time_s", 0.0))
    train_net: nn.Module = net
    if dist_utils.is_distributed():
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    every = run.checkpoint_every or max(1, math.ceil(len(dataset) / spec.batch_size))
    loader = DataLoader(
        SeededViews(dataset, transform),
        batch_sampler=SeededBatches(len(dataset), spec.batch_size, spec.seed, start,
                                    spec.total_steps, rank, world),
        num_workers=run.num_workers, pin_memory=device.type == "cuda",
    )
    bf16 = use_bf16(run.precision, device)
    main = dist_utils.is_main_process()
    losses = DeviceLossMeter(device)
    last_loss = float("nan")
    t0 = time.perf_counter()
    bar = tqdm(total=spec.total_steps, initial=start, desc="fine-tune", unit="step", leave=False,
               disable=not (run.progress and main), dynamic_ncols=True)
    net.train()
    try:
        for step, (images, labels) in enumerate(loader, start=start):
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            images = images.to(device, non_blocking=True)
            if device.type == "cuda" and run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                logits = train_net(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
            losses.add(loss, step)
            done = step + 1
            save = done % every == 0 or done == spec.total_steps
            if save or done % run.log_every == 0:  # the only host synchronisation
                last_loss, bad = losses.read()
                if bad >= 0:
                    raise NonFiniteLossError(
                        f"non-finite fine-tuning loss at step {bad + 1} of {spec.total_steps} "
                        f"(lr {lrs[bad]:.4g}); lower the learning rate or check the data")
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lrs[step]:.3g}")
                if main:
                    append_jsonl(work_dir / TRAIN_LOG, {"step": done, "lr": lrs[step],
                                                        "loss": last_loss})
            if save and main:
                save_checkpoint({
                    "format": CHECKPOINT_FORMAT, "identity": identity, "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(), "step": done,
                    "total_steps": spec.total_steps,
                    "train_time_s": trained_before + time.perf_counter() - t0,
                }, ckpt)
            bar.update(1)
            if on_step is not None:
                on_step(done)
    finally:
        bar.close()
    if dist_utils.is_distributed():
        torch.distributed.barrier()
    wall = time.perf_counter() - t0
    trained = spec.total_steps - start
    return {"steps": spec.total_steps, "resumed_from": start, "final_loss": last_loss,
            "train_time_s": trained_before + wall,
            "images_per_s": trained * spec.batch_size / wall if wall > 0 else 0.0}


def evaluate(net: nn.Module, dataset: ImageDataset, transform: Callable[[Any], torch.Tensor],
             device: torch.device, batch_size: int = 256, num_workers: int = 0) -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy (percent) of ``net`` on ``dataset``, in eval
    mode with the deterministic ``transform``; under torchrun the ranks share the images
    (:func:`pretrain.features.extract_features` shards and gathers them)."""
    logits = extract_features(cast(SimCLRModel, net), dataset, transform, ["logits"], batch_size,
                              device, num_workers)["logits"]
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return classification_metrics(logits, labels)
