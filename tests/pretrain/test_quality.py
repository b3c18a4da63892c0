"""RankMe, alignment and uniformity on configurations with known values."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.augment import resolve_recipe
from pretrain.config import AugmentConfig, ModelConfig
from pretrain.data import load_dataset
from pretrain.model import build_model
from pretrain.quality import alignment, quality_metrics, rankme, uniformity


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_rankme_of_equal_singular_values_is_the_rank(rank):
    q, _ = torch.linalg.qr(torch.randn(50, 16))
    z = q[:, :rank] @ torch.linalg.qr(torch.randn(16, 16))[0][:rank]  # (50, 16), rank r, s = 1
    assert rankme(z) == pytest.approx(rank, rel=1e-4)
    assert rankme(5.0 * z) == pytest.approx(rank, rel=1e-4)  # scale-free


def test_rankme_is_between_1_and_min_dim_and_drops_with_anisotropy():
    torch.manual_seed(0)
    z = torch.randn(500, 8)
    iso = rankme(z)
    assert 7.0 < iso <= 8.0
    squashed = z * torch.tensor([10.0] + [0.1] * 7)
    assert 1.0 <= rankme(squashed) < 2.0


def test_alignment_of_identical_and_antipodal_views():
    z = torch.randn(10, 4)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, -z) == pytest.approx(4.0, rel=1e-5)  # ||a - (-a)||^2 = 4 on the sphere


def test_uniformity_of_two_antipodal_points():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # one pair, ||a - b||^2 = 4
    assert uniformity(z) == pytest.approx(-8.0)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_uniformity_of_a_square_on_the_circle(batch_size):
    # 12 ordered pairs: 8 neighbours at squared distance 2, 4 opposite at 4.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    want = math.log((8 * math.exp(-4) + 4 * math.exp(-8)) / 12)
    assert uniformity(z, batch_size=batch_size) == pytest.approx(want, rel=1e-6)


def test_quality_metrics_keeps_training_mode_and_rng_of_the_caller():
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="small_cnn", head="mlp", hidden_dim=16, out_dim=8))
    model.train()
    ds = load_dataset("digits", "train").subset(40)
    recipe = resolve_recipe(AugmentConfig(), ds.info)
    state = torch.get_rng_state()
    out = quality_metrics(model, ds, recipe, num_samples=32, batch_size=16, seed=1)
    assert model.training
    assert torch.equal(state, torch.get_rng_state())
    assert set(out) == {f"quality/{m}/{t}" for m in ("rankme", "alignment", "uniformity")
                        for t in ("h", "head.0", "z")}
    again = quality_metrics(model, ds, recipe, num_samples=32, batch_size=16, seed=1)
    assert again == pytest.approx(out)
