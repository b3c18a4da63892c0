"""Time to accuracy: SimCLR for a fixed wall-clock budget, then weighted k-NN on the test set.

Trains an encoder + MLP head with the device pipeline (:class:`pretrain.gpu_data.GPUTwoViewBatches`
and the sync-free :class:`pretrain.step.TrainStep`) until ``--budget-s`` seconds of training
have passed (the clock includes compilation and warm-up), with the learning rate scheduled on
the *elapsed fraction of the budget* (linear warm-up, then cosine to 0), so the schedule ends
when the budget does whatever the throughput. Then it extracts encoder features h of the
un-augmented train and test images (eval mode) and reports weighted k-NN top-1
(Wu et al. 2018: k = 200 neighbours vote with weight exp(cos / T), T = 0.1).

Issue 6 target: >= 85% k-NN top-1 on CIFAR-10 within 8 minutes of training on one H100.
Defaults are the solo-learn CIFAR SimCLR recipe (da Costa et al. 2022, JMLR 23(56)): LARS,
lr 0.4 per 256 images, trust coefficient 0.02, weight decay 1e-5, tau 0.2, head 2048 -> 256.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for pretrain_throughput (a script)

from pretrain_throughput import add_common_args, build_step, load_bench_dataset, sync  # noqa: E402

from pretrain.augment import resolve_recipe  # noqa: E402
from pretrain.config import AugmentConfig, OptimConfig  # noqa: E402
from pretrain.data import ImageDataset  # noqa: E402
from pretrain.distributed import resolve_device  # noqa: E402
from pretrain.gpu_data import GPUTwoViewBatches  # noqa: E402
from pretrain.model import SimCLRModel  # noqa: E402
from pretrain.optim import scaled_lr  # noqa: E402


def budget_lr(peak: float, elapsed_fraction: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of the budget, then cosine to 0."""
    t = min(max(elapsed_fraction, 0.0), 1.0)
    if t < warmup_fraction:
        return peak * max(t / warmup_fraction, 1e-3)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (t - warmup_fraction) / (1 - warmup_fraction)))


@torch.no_grad()
def weighted_knn_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Top-1 (percent) of the weighted k-NN vote (Wu et al. 2018); features (N, D), (M, D)."""
    bank = F.normalize(train_feats.float(), dim=1)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], classes, device=q.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start : start + chunk]).sum())
    return 100.0 * correct / test_feats.shape[0]


@torch.no_grad()
def features(
    encoder: torch.nn.Module,
    dataset: ImageDataset,
    mean: tuple,
    std: tuple,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
    batch: int = 1024,
) -> torch.Tensor:
    """Encoder output h (N, D) of the un-augmented images (normalised only; eval mode)."""
    if dataset.array is None:
        raise SystemExit("time_to_accuracy needs an in-memory dataset (cifar10, digits, random)")
    encoder.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    images = torch.from_numpy(dataset.array.copy()).to(device)  # (N, H, W, 3) uint8
    out = []
    for start in range(0, len(images), batch):
        x = (images[start : start + batch].permute(0, 3, 1, 2).float() / 255 - m) / s
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(encoder(x).float())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.set_defaults(hidden_dim=2048, out_dim=256, temperature=0.2)
    p.add_argument("--budget-s", type=float, default=480.0, help="training wall-clock budget, s")
    p.add_argument("--lr", type=float, default=0.4, help="peak lr per 256 images (linear scaling)")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--trust", type=float, default=0.02, help="LARS trust coefficient eta")
    p.add_argument(
        "--warmup-frac",
        type=float,
        default=0.02,
        help="fraction of the budget spent in linear lr warm-up",
    )
    p.add_argument("--k", type=int, default=200, help="k-NN neighbours")
    p.add_argument("--knn-t", type=float, default=0.1, help="k-NN vote temperature")
    p.add_argument("--log-every", type=int, default=100, help="steps between loss read-backs")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set = load_bench_dataset(args.dataset, args.data_root, args.cache_dir, args.limit)
    test_set = load_bench_dataset(args.dataset, args.data_root, args.cache_dir, 0, "test")
    recipe = resolve_recipe(AugmentConfig(), train_set.info)
    peak = scaled_lr(args.lr, args.batch, "linear")
    optim = OptimConfig(name=args.optim, weight_decay=args.weight_decay, trust_coefficient=args.trust)
    step = build_step(args, device, recipe.image_size, optim, peak)
    source = GPUTwoViewBatches(train_set, recipe, args.batch, device)
    print(
        f"{train_set.name}: {len(train_set)} train / {len(test_set)} test images, "
        f"{args.encoder} + MLP {args.hidden_dim}->{args.out_dim}, batch {args.batch}, "
        f"{args.optim} peak lr {peak:.3g}, tau {args.temperature}, budget {args.budget_s:.0f} s, "
        f"device {device}"
    )

    start = time.perf_counter()
    elapsed, epoch, loss = 0.0, 0, float("nan")
    while elapsed < args.budget_s:
        source.set_epoch(args.seed, epoch)
        for (x1, x2), _ in source:
            elapsed = time.perf_counter() - start
            if elapsed >= args.budget_s:
                break
            step(x1, x2, budget_lr(peak, elapsed / args.budget_s, args.warmup_frac))
            if step.steps % args.log_every == 0:
                loss = step.read_loss()
                print(f"  step {step.steps}  epoch {epoch}  {elapsed:6.0f} s  loss {loss:.4f}")
        else:
            epoch += 1
    sync(device)
    train_s = time.perf_counter() - start
    last = step.read_loss()  # NaN when the last read was the last step
    loss = loss if math.isnan(last) else last
    epochs_done = step.steps / max(1, len(source))

    t0 = time.perf_counter()
    model = step.model
    assert isinstance(model, SimCLRModel)
    encoder = model.encoder
    bf16, cl = step.bf16, step.channels_last
    train_h = features(encoder, train_set, recipe.mean, recipe.std, device, bf16, cl)
    test_h = features(encoder, test_set, recipe.mean, recipe.std, device, bf16, cl)
    train_y = torch.as_tensor(train_set.targets, device=device)
    test_y = torch.as_tensor(test_set.targets, device=device)
    top1 = weighted_knn_top1(train_h, train_y, test_h, test_y, args.k, args.knn_t)
    knn_s = time.perf_counter() - t0
    print(
        f"epochs {epochs_done:.2f} ({step.steps} steps) in {train_s:.1f} s of training, "
        f"final loss {loss:.4f}; k-NN (k={args.k}, T={args.knn_t}) top-1 {top1:.2f}% "
        f"({knn_s:.1f} s)"
    )
    return {"epochs": epochs_done, "train_s": train_s, "knn_top1": top1, "loss": loss}


if __name__ == "__main__":
    main()
