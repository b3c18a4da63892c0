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
    assert set(m) == {f"knn/{t}@k{k}" for t in ("top1", "top5", "mean_per_class")
                      for k in (1, 20, 30)}  # 100 -> 30


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_chunking_does_not_change_scores(batch_size):
    torch.manual_seed(1)
    train, labels, test = torch.randn(50, 6), torch.randint(0, 4, (50,)), torch.randn(7, 6)
    ref = knn_scores(train, labels, test, ks=(5, 10), num_classes=4, batch_size=1000)
    got = knn_scores(train, labels, test, ks=(5, 10), num_classes=4, batch_size=batch_size)
    for k in (5, 10):
        assert torch.allclose(ref[k], got[k])


def test_top5_counts_only_classes_that_received_votes():
    # k=1: only x0 (class 0) votes, so class 1 is no hit even though there are only 2 classes
    # (the old rule, top-min(5, C) of the scores, counted it: 100 instead of 0).
    m = knn_classify(TRAIN, LABELS, QUERY, torch.tensor([1]), ks=(1, 2), temperature=1.0)
    assert (m["knn/top1@k1"], m["knn/top5@k1"]) == (0.0, 0.0)
    assert (m["knn/top1@k2"], m["knn/top5@k2"]) == (0.0, 100.0)  # x3 (class 1) now votes


def _dino_top5(train, labels, test, test_labels, k, t, num_classes):
    """A transcription of DINO's eval_knn.knn_classifier (Caron et al. 2021), one chunk."""
    normalize = torch.nn.functional.normalize
    train, test = normalize(train, dim=1), normalize(test, dim=1)
    sim, idx = (test @ train.t()).topk(k, largest=True, sorted=True)
    retrieved = torch.gather(labels.view(1, -1).expand(test.shape[0], -1), 1, idx)
    one_hot = torch.zeros(test.shape[0] * k, num_classes)
    one_hot.scatter_(1, retrieved.view(-1, 1), 1)
    weights = (sim / t).exp().view(test.shape[0], -1, 1)
    probs = (one_hot.view(test.shape[0], -1, num_classes) * weights).sum(1)
    _, predictions = probs.sort(1, True)
    correct = predictions.eq(test_labels.view(-1, 1))
    return 100.0 * correct[:, : min(5, k)].sum().item() / test.shape[0]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_top5_matches_dino_where_dino_is_unambiguous(k):
    # Every train image its own class: the k neighbours vote for k distinct classes, so DINO's
    # first min(5, k) predictions are exactly the voted classes (with repeated classes DINO's
    # sort also fills them with unvoted classes in arbitrary order, which we never count).
    torch.manual_seed(3)
    train, labels = torch.randn(60, 5), torch.arange(60)
    test, test_labels = train[torch.arange(40)] + 0.3 * torch.randn(40, 5), torch.arange(40)
    ours = knn_classify(train, labels, test, test_labels, ks=(k,), temperature=0.1, num_classes=60)
    dino = _dino_top5(train, labels, test, test_labels, k, 0.1, 60)
    assert ours[f"knn/top5@k{k}"] == pytest.approx(dino)
