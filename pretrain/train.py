"""The SimCLR pretraining loop: one function, everything it uses passed in or built from config.

``train(cfg)`` writes one run directory (see :mod:`pretrain.run`): the resolved config, the run
setup, an atomically written checkpoint every ``train.checkpoint_every`` epochs, one metrics
line per epoch and a summary. ``train(cfg, resume=True)`` continues from the last checkpoint and ends
with the same weights as an uninterrupted run: every epoch reseeds its shuffling and
augmentation RNGs from (seed, epoch, rank), so no RNG stream depends on when a run was killed.
Before anything is read or written, the config's registered names are checked and a resume is
checked against the run's saved config (:mod:`pretrain.run.resume`); a finished run is left as
it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pretrain import distributed as dist_utils
from pretrain.augment import TwoViews, ViewRecipe, resolve_recipe, simclr_transform
from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict
from pretrain.data import ImageDataset, TransformedDataset, load_dataset
from pretrain.distributed import resolve_device
from pretrain.errors import ConfigError, NonFiniteLossError
from pretrain.gpu_data import make_device_batches
from pretrain.jsonl import append_jsonl
from pretrain.model import SimCLRModel, build_model
from pretrain.monitor import KNNMonitor, build_monitor, monitor_key, parse_taps, unusable_reason
from pretrain.optim import build_optimizer, scaled_lr, warmup_cosine_schedule
from pretrain.provenance import code_version, hardware
from pretrain.quality import quality_metrics
from pretrain.run import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunSetup,
    RunState,
    prepare_run_dir,
    restore,
    write_checkpoint,
    write_run_files,
)
from pretrain.run.resume import epoch_loss, finished_summary, open_resume
from pretrain.scalars import ScalarWriters, check_available, open_writers
from pretrain.step import TrainStep
from pretrain.sync_bn import convert_sync_batchnorm


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible seed for each (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


class CPUTwoViewBatches:
    """Two SimCLR views per image from torchvision transforms in DataLoader workers.

    Yields ``((view1, view2), labels)`` with views (B, 3, S, S) float, normalised. Each rank
    reads its own shard (``DistributedSampler``: one shuffled permutation per epoch shared by
    all ranks, padded with repeats to a multiple of the world size, then strided by rank), so
    the ranks together cover the dataset once per epoch; incomplete batches are dropped.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: ViewRecipe,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        two_views = TransformedDataset(dataset, TwoViews(simclr_transform(recipe)))
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            two_views, num_replicas=world_size, rank=rank, shuffle=True, drop_last=False
        )
        self.generator = torch.Generator()
        self.loader = DataLoader(
            two_views,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=self.generator,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> None:
        """Reseed shuffling and augmentation for ``epoch`` (what makes resume exact)."""
        self.sampler.seed = seed
        self.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(seed, epoch, rank))  # augmentation in the main process
        self.generator.manual_seed(epoch_seed(seed, epoch, rank) + 1)  # worker seeds

    def __iter__(self) -> Iterator:
        return iter(self.loader)


def make_batches(
    cfg: PretrainConfig,
    dataset: ImageDataset,
    recipe: ViewRecipe,
    per_rank_batch: int,
    device: torch.device,
    rank: int,
    world: int,
) -> tuple[Any, str]:
    """The batch source ``augment.device`` asks for, and where augmentation runs ("gpu"|"cpu")."""
    where = cfg.augment.device
    if where == "auto":
        where = "gpu" if device.type == "cuda" else "cpu"
    if where == "gpu":
        return make_device_batches(dataset, recipe, per_rank_batch, device, cfg.data.num_workers), where
    batches = CPUTwoViewBatches(
        dataset, recipe, per_rank_batch, cfg.data.num_workers, device, rank, world
    )
    return batches, where


def global_bn(sync_bn: bool | None, world: int) -> bool:
    """Whether BatchNorm statistics are aggregated over the ``world`` ranks: ``train.sync_bn``,
    by default (None) whenever there is more than one rank (SimCLR Sec. 2.2)."""
    return world > 1 and (sync_bn is None or sync_bn)


def train_one_epoch(
    step: TrainStep,
    batches: Iterator,
    lrs: list[float],
    state: RunState,
    progress: bool,
    num_batches: int,
    log_every: int,
    shown: dict[str, str] | None = None,
    on_read: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the epoch's mean loss, last lr, pairs/s and seconds.

    The loss is read back from the device only every ``log_every`` steps and at the end, where
    a non-finite loss raises :class:`NonFiniteLossError` naming the epoch and the step.
    ``shown``: more postfix fields for the progress bar (the last k-NN monitor value).
    ``on_read(step, loss, lr)``: called at each read-back (the dashboards' per-step curve).
    """
    step.model.train()
    step.steps = state.step
    epoch_loss = 0.0
    pairs = 0
    start = time.perf_counter()
    bar = tqdm(
        batches,
        total=num_batches,
        desc=f"epoch {state.epoch + 1}",
        leave=False,
        disable=not progress or not dist_utils.is_main_process(),
    )
    lr = lrs[min(state.step, len(lrs) - 1)]
    window = 0
    try:
        for (x1, x2), _ in bar:
            lr = lrs[state.step]
            step(x1, x2, lr)
            state.step += 1
            window += 1
            pairs += x1.shape[0]
            if state.step % log_every == 0:
                recent = step.read_loss()
                epoch_loss += recent * window
                window = 0
                bar.set_postfix({"loss": f"{recent:.3f}", "lr": f"{lr:.3g}", **(shown or {})})
                if on_read is not None:
                    on_read(state.step, recent, lr)
        if window:
            epoch_loss += step.read_loss() * window
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(f"epoch {state.epoch + 1}: {exc} (lr {lr:.4g})") from None
    seconds = time.perf_counter() - start
    return {
        "loss": epoch_loss / max(1, num_batches),
        "lr": lr,
        "pairs_per_s": pairs * dist_utils.world_size() / max(seconds, 1e-9),
        "epoch_time_s": seconds,
    }


def log_quality(
    model: SimCLRModel,
    dataset: ImageDataset,
    recipe: ViewRecipe,
    device: torch.device,
    num_samples: int,
) -> dict[str, float]:
    """Label-free quality at every tap (RankMe, alignment, uniformity; see pretrain.quality).

    Rank 0 alone calls it and extracts locally, with no collective: a sharded extraction would
    wait for ranks that are already in the next epoch (the other ranks wait for rank 0 at the
    next step instead), and the numbers are those of a single process whatever the world size.
    It leaves the model's mode and the global RNG as they were, so resumed runs stay exact.
    """
    return quality_metrics(model, dataset, recipe, num_samples=num_samples, device=device,
                           local=True)


def make_monitor(
    cfg: PretrainConfig, dataset: ImageDataset, recipe: ViewRecipe, model: SimCLRModel
) -> KNNMonitor | None:
    """The online k-NN monitor ``train.monitor_*`` asks for, or None (off, or a dataset
    without single labels: then one line says why)."""
    t = cfg.train
    if not t.monitor_every:
        return None
    taps = parse_taps(t.monitor_taps, model.tap_names())
    reason = unusable_reason(dataset)
    if reason is not None:
        if dist_utils.is_main_process():
            print(f"k-NN monitor skipped: {reason}")
        return None
    return build_monitor(
        dataset, recipe, t.monitor_split, taps, t.monitor_k, t.monitor_temperature, t.seed,
        lambda: load_dataset(cfg.data.name, "test", cfg.data.root, cfg.data.cache_dir),
    )


def train(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pretrain SimCLR as configured; returns the summary written to ``summary.json``.

    Resuming a finished run writes nothing and returns its stored summary, with
    ``already_complete: True`` added.
    """
    device = resolve_device(cfg.train.device)
    world = dist_utils.world_size()
    if cfg.train.batch_size % world:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is the global batch and must be "
            f"divisible by the number of processes ({world})"
        )
    main = dist_utils.is_main_process()
    check_available(cfg.train.tensorboard, cfg.train.wandb_project)  # before anything is read
    run_dir = prepare_run_dir(cfg, resume)  # checks the registered names; creates nothing
    resumed = open_resume(run_dir, cfg, device) if resume else None  # refuses changed keys
    if resumed is not None:
        stored = finished_summary(run_dir, resumed, cfg)
        if stored is not None:
            return {**stored, "run_dir": str(run_dir), "already_complete": True}

    dataset = load_dataset(
        cfg.data.name, cfg.data.split, cfg.data.root, cfg.data.cache_dir, cfg.data.limit
    )
    per_rank_batch = cfg.train.batch_size // world
    if len(dataset) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) exceeds the {len(dataset)} images of "
            f"{cfg.data.name}; lower train.batch_size"
        )
    recipe = resolve_recipe(cfg.augment, dataset.info)
    batches, augment_where = make_batches(
        cfg, dataset, recipe, per_rank_batch, device, dist_utils.rank(), world
    )
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"no full batch of {per_rank_batch} images per process in {len(dataset)} images; "
            f"lower train.batch_size"
        )

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    setup = RunSetup.build(cfg, model, recipe)
    monitor = make_monitor(cfg, dataset, recipe, model)
    if global_bn(cfg.train.sync_bn, world):
        model = convert_sync_batchnorm(model, device)  # type: ignore[assignment]
    model = model.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    peak_lr = scaled_lr(
        cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling, cfg.optim.lr_reference_batch
    )
    optimizer = build_optimizer(model, cfg.optim, peak_lr)
    total_steps = cfg.train.epochs * steps_per_epoch
    lrs = warmup_cosine_schedule(peak_lr, total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch))
    state = RunState()
    if resumed is not None:
        state = restore(model, optimizer, resumed, total_steps, run_dir / CHECKPOINT_FILE)
    if main:  # only after a resume was found to fit: a refused one leaves the run as it was
        write_run_files(run_dir, cfg, setup)
        if resumed is not None:
            append_jsonl(run_dir / METRICS_FILE, {"event": "resume", "from_epoch": state.epoch})
    train_model: nn.Module = model
    if dist_utils.is_distributed():
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    step = TrainStep(
        train_model,
        optimizer,
        cfg.train.temperature,
        device,
        cfg.train.precision,
        cfg.train.channels_last,
        cfg.train.compile,
    )

    if main:
        print(
            f"run {run_dir}: {setup.encoder} + {setup.head} head, "
            f"{len(dataset)} images, {steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs, "
            f"batch {cfg.train.batch_size}, peak lr {peak_lr:.4g}, device {device}, "
            f"augmentation on {augment_where}"
        )
    writers = (open_writers(run_dir, tensorboard=cfg.train.tensorboard,
                            wandb_project=cfg.train.wandb_project, config=to_dict(cfg),
                            resume_step=state.step if resumed is not None else None)
               if main else ScalarWriters())  # rank 0 writes, as metrics.jsonl
    started = time.perf_counter()
    trained_before = state.train_time_s  # the earlier parts of a resumed run
    stats: dict[str, Any] = {}
    shown: dict[str, str] = {}  # the last monitor values, in the progress bar

    def per_step(at: int, loss: float, lr: float) -> None:
        writers.write({"step/loss": loss, "step/lr": lr}, at)

    with writers:
        while state.epoch < cfg.train.epochs:
            batches.set_epoch(cfg.train.seed, state.epoch, dist_utils.rank(), world)
            stats = train_one_epoch(
                step,
                iter(batches),
                lrs,
                state,
                cfg.train.progress,
                steps_per_epoch,
                cfg.train.log_every,
                shown,
                per_step if writers.active else None,
            )
            state.epoch += 1
            last = state.epoch == cfg.train.epochs
            if monitor is not None and (last or state.epoch % cfg.train.monitor_every == 0):
                stats.update(monitor(model, device))  # every rank: a sharded extraction
                shown = {f"knn_{tap}": f"{stats[monitor_key(tap)]:.1f}" for tap in monitor.taps}
            if main and cfg.train.quality_every and (
                last or state.epoch % cfg.train.quality_every == 0
            ):
                stats.update(log_quality(model, dataset, recipe, device, cfg.train.quality_samples))
            state.train_time_s = trained_before + time.perf_counter() - started
            if main:
                if last or state.epoch % cfg.train.checkpoint_every == 0:
                    write_checkpoint(run_dir / CHECKPOINT_FILE, model, optimizer, state, total_steps)
                append_jsonl(run_dir / METRICS_FILE, {"epoch": state.epoch, "step": state.step, **stats})
                writers.write({"epoch": state.epoch, **stats}, state.step)  # train/loss, monitor/..
                if cfg.train.progress:
                    watched = "".join(f"  k-NN {tap} {stats[monitor_key(tap)]:.1f}%"
                                      for tap in (monitor.taps if monitor else ())
                                      if monitor_key(tap) in stats)
                    print(
                        f"epoch {state.epoch}/{cfg.train.epochs}  loss {stats['loss']:.4f}  "
                        f"lr {stats['lr']:.4g}  {stats['pairs_per_s']:.0f} pairs/s{watched}"
                    )
    summary = {
        "event": "summary",
        "run_dir": str(run_dir),
        "epochs": state.epoch,
        "steps": state.step,
        # no epoch left (killed between the last checkpoint and the summary): the logged loss
        "final_loss": stats["loss"] if stats else epoch_loss(run_dir / METRICS_FILE, state.epoch),
        "train_time_s": state.train_time_s,
        "images": len(dataset),
        "batch_size": cfg.train.batch_size,
        "peak_lr": peak_lr,
        "device": str(device),
        "hardware": hardware(),
        "world_size": world,
        "global_bn": global_bn(cfg.train.sync_bn, world),
        "augment_device": augment_where,
        "code_version": code_version(),
    }
    if main:
        append_jsonl(run_dir / METRICS_FILE, summary)
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
