"""``plot --kind embedding``: one panel per tap x run, PCA coordinates are sklearn's PCA of the
probes' cached test features, the subsample is seeded, user mistakes are one-line errors, and
the report shows the map."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_run_dir
from sklearn.decomposition import PCA

from probes.session import ProbeOptions, ProbeSession
from transfer.cli import main
from transfer.embedding import EmbeddingOptions, subsample, write_embedding_map

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two digits runs (mlp-2 and linear heads, random weights) and a feature cache the k-NN
    probe filled, as after ``simclr-transfer knn``."""
    root = tmp_path_factory.mktemp("embedding")
    runs = [make_run_dir(root / "runs" / "mlp2", head="mlp"),
            make_run_dir(root / "runs" / "linear", head="linear", seed=1)]
    cache = root / "cache"
    for run in runs:
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 1, "loss": 5.0,
                                                       "lr": 0.1}) + "\n")
        assert main(["knn", str(run), "--cache-dir", str(cache), "--device", "cpu", "--k", "5",
                     "--json"]) == 0
    return runs, cache


def options(cache: Path, **changes: object) -> EmbeddingOptions:
    return EmbeddingOptions(**{"method": "pca", "cache_dir": str(cache), "device": "cpu",
                               **changes})  # type: ignore[arg-type]


def cached_files(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.pt")}


def test_one_panel_per_tap_and_run(suite: tuple[list[Path], Path], tmp_path: Path) -> None:
    runs, cache = suite
    before = cached_files(cache)
    fig = write_embedding_map(runs, tmp_path / "map.png", options(cache))
    assert fig.grid == (2, 2) and fig.num_axes == 4
    assert [(Path(p.run).name, p.tap) for p in fig.panels] == [
        ("mlp2", "h"), ("linear", "h"), ("mlp2", "z"), ("linear", "z")]
    assert fig.path.read_bytes()[:8] == PNG_SIGNATURE
    assert cached_files(cache) == before  # the probes' cached features were reused, not rebuilt
    # all taps: the linear head has no head.0, so its cell of that row stays empty
    every = write_embedding_map(runs, tmp_path / "all.png", options(cache, taps="all"))
    assert every.grid == (3, 2) and every.num_axes == 5
    assert [p.tap for p in every.panels] == ["h", "h", "head.0", "z", "z"]


def test_pca_coordinates_are_sklearn_pca_of_the_test_features(
    suite: tuple[list[Path], Path], tmp_path: Path
) -> None:
    runs, cache = suite
    fig = write_embedding_map(runs[:1], tmp_path / "m.png", options(cache, max_points=150, seed=3))
    session = ProbeSession.open(ProbeOptions(run=str(runs[0]), tap="h,z", cache_dir=str(cache)))
    test = session.features("test")
    idx = np.sort(np.random.default_rng(3).choice(len(test), 150, replace=False))
    for panel in fig.panels:
        x = test.feats[panel.tap].numpy()[idx]  # (150, D_tap)
        np.testing.assert_array_equal(panel.indices, idx)
        np.testing.assert_array_equal(panel.labels, test.labels.numpy()[idx])
        np.testing.assert_allclose(panel.coords, PCA(n_components=2).fit_transform(x),
                                   rtol=1e-4, atol=1e-4)
        assert panel.coords.shape == (150, 2)


def test_subsample_is_seeded() -> None:
    a, b, c = subsample(450, 100, 0), subsample(450, 100, 0), subsample(450, 100, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(subsample(50, 100, 0), np.arange(50))
    np.testing.assert_array_equal(subsample(50, 0, 0), np.arange(50))


def test_cli_tsne_and_user_errors(
    suite: tuple[list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, cache = suite
    common = ["--cache-dir", str(cache), "--device", "cpu", "-o", str(tmp_path / "figs")]
    assert main(["plot", "--kind", "embedding", str(runs[0]), "--method", "tsne", "--tap", "h",
                 "--max-points", "60", *common]) == 0
    png = tmp_path / "figs" / "embedding_tsne.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    capsys.readouterr()
    assert main(["plot", "--kind", "embedding", str(runs[0]), "--tap", "h,q", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown tap 'q'; valid taps: h, head.0, z, all"
    assert main(["plot", "--kind", "embedding", str(runs[0]), "--method", "isomap", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'isomap'" in err and "pca" in err
    real_find_spec = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:  # as where umap-learn is not installed
        mp.setattr(importlib.util, "find_spec",
                   lambda name, *a: None if name == "umap" else real_find_spec(name, *a))
        assert main(["plot", "--kind", "embedding", str(runs[0]), "--method", "umap",
                     *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --method umap needs umap-learn") and "\n" not in err


def test_umap_coordinates_are_umap_learn_of_the_test_features(
    suite: tuple[list[Path], Path], tmp_path: Path
) -> None:
    """umap-learn is in the test extra; its first call compiles numba kernels (~20 s here)."""
    umap = pytest.importorskip("umap", reason="umap-learn is not installed: pip install umap-learn")
    runs, cache = suite
    fig = write_embedding_map(runs[:1], tmp_path / "u.png",
                              options(cache, method="umap", taps="h", max_points=120, seed=2))
    session = ProbeSession.open(ProbeOptions(run=str(runs[0]), tap="h", cache_dir=str(cache)))
    test = session.features("test")
    (panel,) = fig.panels
    x = test.feats["h"].numpy()[panel.indices]
    expected = umap.UMAP(n_components=2, random_state=2).fit_transform(x)
    np.testing.assert_allclose(panel.coords, expected, rtol=1e-4, atol=1e-4)
    assert panel.coords.shape == (120, 2) and fig.path.read_bytes()[:8] == PNG_SIGNATURE


def test_report_shows_the_embedding_map(suite: tuple[list[Path], Path], tmp_path: Path) -> None:
    runs, cache = suite
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "-o", str(out), "--cache-dir", str(cache),
                 "--device", "cpu", "--max-points", "200"]) == 0
    page = (out / "index.html").read_text()
    assert 'src="figures/embedding_pca.png"' in page
    assert (out / "figures" / "embedding_pca.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main(["report", *map(str, runs), "-o", str(tmp_path / "bare"), "--embedding",
                 "none"]) == 0
    assert "embedding_" not in (tmp_path / "bare" / "index.html").read_text()
