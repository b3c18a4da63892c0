"""Feature extraction (BN in eval mode, one pass for all taps) and the on-disk feature cache."""

from __future__ import annotations

import logging

import pytest
import torch

import probes.features as features
from pretrain.augment import eval_transform, resolve_recipe
from pretrain.config import AugmentConfig, ModelConfig
from pretrain.data import load_dataset
from pretrain.features import extract_features
from pretrain.model import build_model
from probes.features import cache_path, load_features


@pytest.fixture(scope="module")
def small():
    ds = load_dataset("digits", "test").subset(48)
    return ds, eval_transform(resolve_recipe(AugmentConfig(), ds.info))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(encoder="small_cnn", head="mlp", hidden_dim=16, out_dim=8))


def bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


def test_extraction_uses_bn_running_stats_and_leaves_them_alone(model, small):
    ds, tf = small
    model.train()  # a caller in the middle of training
    before = bn_stats(model)
    a = extract_features(model, ds, tf, ["h", "head.0", "z"], batch_size=16)
    b = extract_features(model, ds, tf, ["h", "head.0", "z"], batch_size=7)  # other batching
    for tap in a:
        assert torch.equal(a[tap], b[tap]) or torch.allclose(a[tap], b[tap], atol=1e-6)
    after = bn_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # mode restored
    # eval-mode BN: a single image gets the same features alone as inside a batch
    one = ds.subset(1)
    k = next(i for i in range(len(ds)) if (ds.array[i] == one.array[0]).all())
    alone = extract_features(model, one, tf, ["h"], batch_size=1)["h"]
    assert torch.allclose(alone[0], a["h"][k], atol=1e-6)


def test_all_taps_in_one_pass_with_the_right_shapes(model, small, monkeypatch):
    ds, tf = small
    calls = []
    original = model.forward_taps
    monkeypatch.setattr(model, "forward_taps", lambda x: calls.append(len(x)) or original(x))
    out = extract_features(model, ds, tf, ["h", "head.0", "z"], batch_size=16)
    assert calls == [16, 16, 16]  # one forward per batch serves every tap
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "h": (48, 256), "head.0": (48, 16), "z": (48, 8)}


def _load(model, ds, tf, cache, taps=("h", "z")):
    return load_features(model, "m1", ds, "digits|", "test", tf, list(taps), cache, batch_size=16)


def test_cache_is_reused_and_separated_by_transform(model, small, tmp_path, monkeypatch):
    ds, tf = small
    first = _load(model, ds, tf, tmp_path)
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("re-extracted"))
    second = _load(model, ds, tf, tmp_path)
    for tap in ("h", "z"):
        assert torch.equal(first.feats[tap], second.feats[tap])
    assert torch.equal(second.labels, torch.as_tensor(ds.targets))
    other_tf = eval_transform(resolve_recipe(AugmentConfig(image_size=24), ds.info))
    assert cache_path(tmp_path, "m1", "digits|", "test", repr(tf), "h") != cache_path(
        tmp_path, "m1", "digits|", "test", repr(other_tf), "h")


def test_only_missing_taps_are_extracted(model, small, tmp_path, monkeypatch):
    ds, tf = small
    _load(model, ds, tf, tmp_path, taps=("h",))
    asked = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features",
                        lambda m, d, t, taps, *a, **k: asked.append(list(taps)) or real(
                            m, d, t, taps, *a, **k))
    _load(model, ds, tf, tmp_path, taps=("h", "head.0", "z"))
    assert asked == [["head.0", "z"]]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "tamper", "wrong_rows"])
def test_corrupt_cache_file_is_detected_and_rebuilt(model, small, tmp_path, damage, caplog):
    ds, tf = small
    good = _load(model, ds, tf, tmp_path).feats["h"]
    path = cache_path(tmp_path, "m1", "digits|", "test", repr(tf), "h")
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "tamper":  # a valid file whose numbers changed: only the checksum tells
        data = torch.load(path, weights_only=True)
        data["features"][0, 0] += 1.0
        torch.save(data, path)
    else:
        data = torch.load(path, weights_only=True)
        data["features"] = data["features"][:-1]
        torch.save(data, path)
    with caplog.at_level(logging.WARNING, logger="simclr_transfer.probes"):
        rebuilt = _load(model, ds, tf, tmp_path).feats["h"]
    assert "corrupt feature cache" in caplog.text
    assert torch.equal(rebuilt, good)
    data = torch.load(path, weights_only=True)  # the file itself was rewritten
    assert torch.equal(data["features"], good)


def test_cache_writes_are_atomic(model, small, tmp_path, monkeypatch):
    ds, tf = small

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(features.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        _load(model, ds, tf, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no half-written file left
