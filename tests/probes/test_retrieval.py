"""Retrieval metrics on a five-image ranking worked out by hand.

Images are unit vectors at angles (degrees) 0, 10, 25, 45, 100 with classes A, A, B, A, B;
cosine similarity falls with the angle between them, so each query's ranking is by angle:

    query (cls, angle)  ranking of the others  rel      R  R@1 R@2  mAP@R  AP
    0 (A,   0)          10A  25B  45A  100B    1 0 1 0  2   1   1   1/2    (1 + 2/3)/2 = 5/6
    1 (A,  10)          0A   25B  45A  100B    1 0 1 0  2   1   1   1/2    5/6
    2 (B,  25)          10A  45A  0A   100B    0 0 0 1  1   0   0   0      1/4
    3 (A,  45)          25B  10A  0A   100B    0 1 1 0  2   0   1   1/4    (1/2 + 2/3)/2 = 7/12
    4 (B, 100)          45A  25B  10A  0A      0 1 0 0  1   0   1   0      1/2

R@1 = 2/5, R@2 = 4/5, R@4 = 1, P@1 = 2/5, mAP@R = (1/2 + 1/2 + 1/4)/5 = 1/4,
mAP = (5/6 + 5/6 + 1/4 + 7/12 + 1/2)/5 = 3/5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.retrieval import class_disjoint_classes, class_disjoint_retrieval, retrieval_metrics

ANGLES = [0, 10, 25, 45, 100]
FEATS = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ANGLES])
LABELS = torch.tensor([0, 0, 1, 0, 1])


@pytest.mark.parametrize("batch_size", [1, 2, 512])
def test_hand_computed_ranking(batch_size):
    m = retrieval_metrics(FEATS, LABELS, ks=(1, 2, 4, 8), batch_size=batch_size)
    assert m["retrieval/R@1"] == pytest.approx(40.0)
    assert m["retrieval/R@2"] == pytest.approx(80.0)
    assert m["retrieval/R@4"] == pytest.approx(100.0)
    assert m["retrieval/R@8"] == pytest.approx(100.0)  # K beyond the gallery: all of it
    assert m["retrieval/P@1"] == pytest.approx(40.0)
    assert m["retrieval/mAP@R"] == pytest.approx(25.0)
    assert m["retrieval/mAP"] == pytest.approx(60.0)
    assert m["retrieval/queries"] == 5


def test_query_without_relevant_items_is_skipped():
    labels = torch.tensor([0, 0, 1, 0, 2])  # class 1 and class 2 have one image each
    m = retrieval_metrics(FEATS, labels, ks=(1,))
    # queries 0, 1, 3 remain. Query 3 (45) ranks 25(cls 1), 10A, 0A, 100 -> rel 0 1 1 0, R = 2.
    # Query 0: 10A 25 45A 100 -> 1 0 1 0; query 1: 0A 25 45A 100 -> 1 0 1 0.
    assert m["retrieval/queries"] == 3
    assert m["retrieval/R@1"] == pytest.approx(200 / 3)
    assert m["retrieval/mAP"] == pytest.approx(100 * (5 / 6 + 5 / 6 + 7 / 12) / 3)


def test_perfect_clusters_score_100():
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [0.05, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    m = retrieval_metrics(feats, labels)
    assert m["retrieval/mAP@R"] == pytest.approx(100.0)
    assert m["retrieval/mAP"] == pytest.approx(100.0)


def test_class_disjoint_split_is_seeded_and_half():
    labels = np.repeat(np.arange(10), 3)
    a, b = class_disjoint_classes(labels, 0), class_disjoint_classes(labels, 0)
    assert np.array_equal(a, b) and len(a) == 5
    assert not np.array_equal(a, class_disjoint_classes(labels, 1))


def test_class_disjoint_retrieval_uses_only_unseen_classes():
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)
    feats = torch.randn(32, 5)
    unseen = class_disjoint_classes(labels.numpy(), seed=3)
    mask = torch.isin(labels, torch.as_tensor(unseen))
    want = retrieval_metrics(feats[mask], labels[mask])
    assert class_disjoint_retrieval(feats, labels, seed=3) == want
    assert want["retrieval/queries"] == 16
