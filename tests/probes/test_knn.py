"""k-NN on hand-made points whose neighbours and vote weights are worked out below."""

from __future__ import annotations

import math

import pytest
import torch

from probes.knn import knn_classify, knn_scores

# Four labelled unit vectors and their cosine similarity to the query q = (1, 0):
#   x0 = (1, 0)     class 0, sim  1.0
#   x3 = (0.6, 0.8) class 1, sim  0.6
#   x1 = (0, 1)     class 1, sim  0.0
#   x2 = (-1, 0)    class 1, sim -1.0
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
LABELS = torch.tensor([0, 1, 1, 1])
QUERY = torch.tensor([[2.0, 0.0]])  # length must not matter: cosine similarity


def test_scores_are_sums_of_exp_sim_over_t_of_the_k_nearest():
    t = 1.0
    scores = knn_scores(TRAIN, LABELS, QUERY, ks=(1, 2, 3, 4), temperature=t, num_classes=2)
    e = math.exp
    expected = {
        1: [e(1.0 / t), 0.0],
        2: [e(1.0 / t), e(0.6 / t)],
        3: [e(1.0 / t), e(0.6 / t) + e(0.0)],
        4: [e(1.0 / t), e(0.6 / t) + e(0.0) + e(-1.0 / t)],
    }
    for k, want in expected.items():
        assert scores[k][0].tolist() == pytest.approx(want, rel=1e-5), k


def test_vote_flips_with_k_as_computed_by_hand():
    # k=2: class 0 has e^1 = 2.718 > e^0.6 = 1.822; k=3: class 1 has 1.822 + 1 = 2.822 > 2.718.
    m = knn_classify(TRAIN, LABELS, QUERY, torch.tensor([0]), ks=(2, 3), temperature=1.0)
    assert m["knn/top1@k2"] == 100.0
    assert m["knn/top1@k3"] == 0.0


def test_low_temperature_makes_the_nearest_neighbour_decide():
    # T = 0.05: e^(1/T) dwarfs e^(0.6/T) + e^0, so class 0 wins even with k = 4.
    m = knn_classify(TRAIN, LABELS, QUERY, torch.tensor([0]), ks=(4,), temperature=0.05)
    assert m["knn/top1@k4"] == 100.0


def test_k_larger_than_train_set_is_clamped_not_a_crash():
    scores = knn_scores(TRAIN, LABELS, QUERY, ks=(200,), temperature=1.0, num_classes=2)
    full = knn_scores(TRAIN, LABELS, QUERY, ks=(4,), temperature=1.0, num_classes=2)
    assert torch.allclose(scores[200], full[4])


def test_fewer_test_images_than_classes_and_than_k():
    torch.manual_seed(0)
    train = torch.randn(30, 8)
    labels = torch.arange(30) % 10  # ten classes
    test = train[:3] + 0.01 * torch.randn(3, 8)  # three test images, each next to its twin
    m = knn_classify(train, labels, test, labels[:3], ks=(1, 20, 100), temperature=0.1,
                     batch_size=2)  # chunks of 2 and 1
    assert m["knn/top1@k1"] == 100.0
    assert set(m) == {f"knn/top{t}@k{k}" for t in (1, 5) for k in (1, 20, 100)}


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_chunking_does_not_change_scores(batch_size):
    torch.manual_seed(1)
    train, labels, test = torch.randn(50, 6), torch.randint(0, 4, (50,)), torch.randn(7, 6)
    ref = knn_scores(train, labels, test, ks=(5, 10), num_classes=4, batch_size=1000)
    got = knn_scores(train, labels, test, ks=(5, 10), num_classes=4, batch_size=batch_size)
    for k in (5, 10):
        assert torch.allclose(ref[k], got[k])


def test_top5_with_fewer_than_five_classes_is_top_all():
    m = knn_classify(TRAIN, LABELS, QUERY, torch.tensor([1]), ks=(1,), temperature=1.0)
    assert m["knn/top1@k1"] == 0.0
    assert m["knn/top5@k1"] == 100.0
