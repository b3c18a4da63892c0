"""Run under ``torchrun --nproc_per_node 2``: one SimCLR step per (head, sync_bn) case.

Rank 0 saves the rank-averaged loss and the (DDP-averaged) gradients to ``OUT/<case>.pt``; the
test compares them with one process on the concatenated batch. A ``naive`` case replaces the
gradient-carrying gather with a plain ``all_gather`` to show that the comparison catches the
classic bug (negatives from other ranks contribute no gradient).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import pretrain.loss as loss_module
from pretrain import distributed as dist_utils
from pretrain.config import ModelConfig
from pretrain.model import build_model
from pretrain.sync_bn import convert_sync_batchnorm

PER_RANK_BATCH = 4
HEADS = ("none", "linear", "mlp")


def make_inputs(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: first views and second views of world * PER_RANK_BATCH images."""
    g = torch.Generator().manual_seed(123)
    n = world * PER_RANK_BATCH
    return torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)


def make_model(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(encoder="small_cnn", head=head, hidden_dim=16, out_dim=8, num_layers=2)
    )


def naive_gather(x: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())  # detached: the bug under test
    out[dist.get_rank()] = x
    return torch.cat(out)


def run_case(head: str, sync_bn: bool, out: Path, name: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_model(head)
    if sync_bn:
        model = convert_sync_batchnorm(model, torch.device("cpu"))
    ddp = DistributedDataParallel(model)
    x1_all, x2_all = make_inputs(world)
    mine = slice(rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH)
    z = ddp(torch.cat([x1_all[mine], x2_all[mine]]))
    z1, z2 = z.chunk(2)
    loss = loss_module.nt_xent(z1, z2, 0.5)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": mean_loss, "grads": grads}, out / f"{name}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    dist_utils.init_from_environment("cpu")
    for head in HEADS:
        for sync_bn in (False, True):
            run_case(head, sync_bn, out, f"{head}_sync{int(sync_bn)}")
    loss_module.gather_with_grad = naive_gather  # type: ignore[assignment]
    run_case("mlp", True, out, "mlp_naive")
    dist_utils.shutdown()


if __name__ == "__main__":
    main()
