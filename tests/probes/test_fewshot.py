"""Prototype few-shot classification on features whose answers are known."""

from __future__ import annotations

import pytest
import torch

from pretrain.errors import UserError
from probes.fewshot import fewshot_accuracy


def clusters(num_classes=8, per_class=20, spread=0.0, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_classes] * 10
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_separated_clusters_are_always_right_with_zero_interval():
    feats, labels = clusters()
    mean, ci = fewshot_accuracy(feats, labels, ways=5, shots=1, queries=5, episodes=50)
    assert mean == 100.0 and ci == 0.0


def test_random_features_are_near_chance_and_the_interval_shrinks():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(30)
    feats = torch.randn(300, 32, generator=g)
    mean, ci = fewshot_accuracy(feats, labels, ways=5, shots=5, queries=10, episodes=400)
    assert abs(mean - 20.0) < 4 * ci + 1  # chance for 5 ways
    _, ci_small = fewshot_accuracy(feats, labels, ways=5, shots=5, queries=10, episodes=100)
    assert ci < ci_small


def test_episodes_are_seeded():
    feats, labels = clusters(spread=8.0)
    a = fewshot_accuracy(feats, labels, ways=4, shots=2, queries=3, episodes=30, seed=1)
    b = fewshot_accuracy(feats, labels, ways=4, shots=2, queries=3, episodes=30, seed=1)
    c = fewshot_accuracy(feats, labels, ways=4, shots=2, queries=3, episodes=30, seed=2)
    assert a == b and a != c


def test_too_few_eligible_classes_is_a_user_error():
    feats, labels = clusters(num_classes=4, per_class=20)
    with pytest.raises(UserError, match="5-way 1-shot needs 5 classes"):
        fewshot_accuracy(feats, labels, ways=5, shots=1, queries=15)
    with pytest.raises(UserError, match="has 0"):
        fewshot_accuracy(feats, labels, ways=2, shots=10, queries=15)
