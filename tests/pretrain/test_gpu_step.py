"""CUDA-only paths of the pretraining step: bf16 autocast, channels_last, torch.compile with CUDA
graphs (``reduce-overhead``), against the fp32 eager step on the same inputs and weights."""

from __future__ import annotations

import pytest
import torch

from pretrain.config import ModelConfig
from pretrain.model import build_model
from pretrain.step import TrainStep

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _losses(precision: str, channels_last: bool, compile_mode: str, steps: int = 3) -> float:
    """Mean NT-Xent of ``steps`` steps at lr 0 (plain SGD: the weights never move, so every
    step sees the same model; BN uses batch statistics in training mode)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", cifar_stem=True, head="mlp",
                                    hidden_dim=128, out_dim=64)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, optimizer, 0.5, device, precision, channels_last, compile_mode)
    gen = torch.Generator(device=device).manual_seed(1)
    x1 = torch.randn(64, 3, 32, 32, device=device, generator=gen)
    x2 = torch.randn(64, 3, 32, 32, device=device, generator=gen)
    for _ in range(steps):
        step(x1, x2, 0.0)
    return step.read_loss()


@pytest.mark.parametrize("compile_mode", ["none", "default", "reduce-overhead"])
def test_bf16_channels_last_step_matches_fp32(compile_mode: str) -> None:
    reference = _losses("fp32", channels_last=False, compile_mode="none")
    loss = _losses("bf16", channels_last=True, compile_mode=compile_mode)
    assert torch.isfinite(torch.tensor(loss))
    assert abs(loss - reference) < 0.02 * reference, (loss, reference)
