"""The iteration-based fine-tuning loop: SGD, warm-up + steps, multi-scale, flips, exact resume.

Every source of randomness is a function of ``(seed, iteration, rank)``: the images of an
iteration come from :func:`transfer.streams.batch_indices`, and torch's global RNG (flips, the
training scale, RPN/ROI sampling) is re-seeded at the start of each iteration. A run resumed
from ``checkpoint.pt`` at iteration k therefore continues exactly as the uninterrupted run
would have (same weights on the same hardware). Checkpoints are written atomically.

Under torchrun the model is wrapped in DistributedDataParallel and each rank takes
``batch_size / world_size`` images of every global batch; a single process uses none of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.errors import ConfigError, NonFiniteLossError, UserError
from pretrain.jsonl import append_jsonl
from pretrain.scalars import ScalarWriters, open_writers
from pretrain.step import use_bf16
from transfer.detection import distributed as dist
from transfer.detection.config import TrainConfig
from transfer.detection.schedule import warmup_step_schedule
from transfer.detection.structures import DetectionDataset, collate, hflip, one_line
from transfer.streams import IterationSampler, iteration_seed

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict]:
    """Trainable parameters; norm-layer weights and biases get ``weight_decay_norm``."""
    norm: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm if isinstance(module, NORM_TYPES) else other).append(p)
    return [
        {"params": other, "weight_decay": weight_decay},
        {"params": norm, "weight_decay": weight_decay_norm},
    ]


def _to_device(images: list, targets: list, device: torch.device) -> tuple[list, list]:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
    return images, targets


def augment_batch(images: list, targets: list, hflip_prob: float,
                  device: torch.device) -> tuple[list, list]:
    """Random horizontal flips (torch's RNG), then to ``device``: a training batch."""
    pairs = [hflip(im, t) if torch.rand(()) < hflip_prob else (im, t)
             for im, t in zip(images, targets, strict=True)]
    return _to_device([p[0] for p in pairs], [p[1] for p in pairs], device)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, images: list, targets: list,
               lr: float, device: torch.device, bf16: bool, iteration: int) -> dict[str, float]:
    """One SGD step on an augmented batch on ``device``; returns the loss terms."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        losses = net(images, targets)
    loss = sum(losses.values())
    terms = {k: float(v.detach()) for k, v in losses.items()}
    if not math.isfinite(float(loss.detach())):
        raise NonFiniteLossError(f"non-finite detection loss at iteration {iteration}: {terms}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


def train_detector(
    model: nn.Module,
    dataset: DetectionDataset,
    cfg: TrainConfig,
    work_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    num_workers: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` for ``cfg.max_iter`` iterations; returns averaged stats.

    Args:
        on_step: called after each iteration (and after its checkpoint, if any) with the
            1-based iteration count and its losses; tests use it to interrupt a run.
    """
    world = dist.world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is not divisible by {world} processes")
    model.to(device)
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, cfg.weight_decay_norm), lr=cfg.lr, momentum=cfg.momentum
    )
    lrs = warmup_step_schedule(cfg.lr, cfg.max_iter, cfg.steps, cfg.gamma, cfg.warmup_iters,
                               cfg.warmup_factor)
    start = 0
    ckpt_path = work_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        if state.get("seed") != cfg.seed or state.get("batch_size") != cfg.batch_size:
            raise ConfigError(f"{ckpt_path} was written with seed {state.get('seed')} and batch "
                              f"{state.get('batch_size')}; resume needs the same values")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    net = model
    if dist.is_distributed():
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    batches = training_batches(dataset, cfg, device, start, cfg.max_iter - start, num_workers)
    bf16 = use_bf16(cfg.precision, device)
    writers = (open_writers(work_dir, tensorboard=cfg.tensorboard,  # a resumed run hides its
                            resume_step=start if resume else None)  # events after `start`
               if dist.is_main() else ScalarWriters())
    net.train()
    window: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.max_iter, initial=start, desc="detection", unit="it",
               disable=not (cfg.progress and dist.is_main()), dynamic_ncols=True)
    try:
        for it, (images, targets) in enumerate(batches, start=start):
            terms = train_step(net, optimizer, images, targets, lrs[it], device, bf16, it + 1)
            window.append(sum(terms.values()))
            done = it + 1
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.3f}", lr=f"{lrs[it]:.4g}")
            if dist.is_main() and (done % cfg.log_every == 0 or done == cfg.max_iter):
                append_jsonl(work_dir / TRAIN_LOG, {"iter": done, "lr": lrs[it], "loss": window[-1],
                                                    **terms, "time": time.perf_counter() - t0})
                writers.write({"loss": window[-1], "lr": lrs[it], **terms}, done, "detection")
            if dist.is_main() and (done % cfg.checkpoint_every == 0 or done == cfg.max_iter):
                save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "iteration": done, "seed": cfg.seed, "batch_size": cfg.batch_size},
                                ckpt_path)
            if on_step is not None:
                on_step(done, terms)
    except UserError as exc:
        raise one_line(exc) from None
    finally:
        bar.close()
        writers.close()
    dist.barrier()
    trained = max(0, cfg.max_iter - start)
    wall = time.perf_counter() - t0
    tail = window[-min(len(window), 20):]
    return {
        "iterations": cfg.max_iter,
        "resumed_from": start,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
        "train_wall_s": wall,
        "images_per_s": trained * cfg.batch_size / wall if wall > 0 else 0.0,
    }


def training_batches(dataset: DetectionDataset, cfg: TrainConfig, device: torch.device,
                     first: int, count: int, num_workers: int = 0) -> Iterator[tuple[list, list]]:
    """Training batches ``first .. first + count - 1`` of the image stream, augmented and on
    ``device``: each iteration reseeds torch's RNG from (seed, iteration, rank) before its flips,
    so the stream (and the RPN/ROI sampling that follows in the step) does not depend on where
    training was resumed. The training loop reads iterations ``start .. max_iter - 1``, Precise
    BN the ones after the last."""
    world, rank = dist.world_size(), dist.rank()
    loader = DataLoader(
        dataset,
        batch_sampler=IterationSampler(len(dataset), cfg.batch_size, cfg.seed, first, first + count,
                                       rank, world),
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for it, (images, targets) in enumerate(loader, start=first):
        torch.manual_seed(iteration_seed(cfg.seed, it, rank))
        yield augment_batch(images, targets, cfg.hflip_prob, device)
