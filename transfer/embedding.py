"""2-D maps of a run's test features, coloured by class (``simclr-transfer plot --kind embedding``).

Features are the probes' own: :meth:`probes.session.ProbeSession.features` of the run's test
split (``test``, else ``val``) at each requested tap, read from the feature cache
(:mod:`probes.features`) when the probes already extracted them, else extracted once and cached.
A seeded subsample of at most ``max_points`` images (the same images for every tap of a run)
is embedded in 2-D with one of :data:`METHODS`:

* ``pca``  -- :class:`sklearn.decomposition.PCA` (``n_components=2``), a linear projection;
* ``tsne`` -- :class:`sklearn.manifold.TSNE` (``n_components=2``, ``init="pca"``, perplexity
  ``min(30, (n - 1) / 3)``), neighbourhoods kept, distances between clusters not meaningful;
* ``umap`` -- ``umap.UMAP`` (``n_components=2``), only where umap-learn is installed.

The figure has one panel per (tap, run): taps down, runs side by side (e.g. the heads of a
suite), drawn on a bare :class:`matplotlib.figure.Figure` like :mod:`transfer.plots`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pretrain.errors import UserError
from pretrain.run import CHECKPOINT_FILE
from probes.session import ProbeOptions, ProbeSession
from transfer.records import run_labels

METHODS = ("tsne", "umap", "pca")
DEFAULT_MAX_POINTS = 2000


@dataclass
class EmbeddingOptions:
    """What an embedding map is made of: ``taps`` (``h,z``, ``all``), the 2-D ``method``, a
    seeded subsample of at most ``max_points`` test images, and where features are cached
    (``cache_dir``; empty: the run's ``data.cache_dir``)."""

    taps: str = "h,z"
    method: str = "tsne"
    max_points: int = DEFAULT_MAX_POINTS
    seed: int = 0
    cache_dir: str = ""
    device: str = "auto"
    batch_size: int = 256


@dataclass
class Panel:
    """One map: ``coords`` (n, 2) of ``labels`` (n,) class ids at ``tap`` of ``run``."""

    run: str
    tap: str
    coords: np.ndarray
    labels: np.ndarray
    classes: list[str]
    indices: np.ndarray  # (n,) positions of the points in the test split


@dataclass
class EmbeddingFigure:
    """What :func:`plot_embedding` drew: the PNG ``path``, ``grid`` (rows = taps, cols = runs)
    and the :class:`Panel` of every axes, row-major."""

    path: Path
    grid: tuple[int, int]
    panels: list[Panel] = field(default_factory=list)
    method: str = ""

    @property
    def num_axes(self) -> int:
        return len(self.panels)


def check_method(method: str) -> None:
    """A :class:`UserError` for an unknown method, or ``umap`` without umap-learn installed."""
    if method not in METHODS:
        raise UserError(f"unknown embedding method {method!r}; valid: {', '.join(METHODS)}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise UserError("--method umap needs umap-learn (pip install umap-learn); "
                        "use --method tsne or pca")


def subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``min(n, max_points)`` of ``range(n)``
    (all of them, in order, when ``max_points`` is 0 or at least ``n``)."""
    if max_points <= 0 or max_points >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, max_points, replace=False))


def embed(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates (n, 2) of ``features`` (n, D) by ``method`` (see the module docstring).

    ``pca`` is :class:`sklearn.decomposition.PCA` (2 components, seeded); ``tsne`` is
    :class:`sklearn.manifold.TSNE` (2 components, PCA init, perplexity min(30, (n-1)/3),
    ``random_state=seed``); ``umap`` is ``umap.UMAP(n_components=2, random_state=seed)``.
    """
    check_method(method)
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3:
        raise UserError(f"an embedding map needs at least 3 points, got {x.shape[0]}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        return TSNE(n_components=2, init="pca", perplexity=perplexity,
                    random_state=seed).fit_transform(x)
    import umap  # optional (extra [umap]); check_method made sure it is installed

    return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(x))


def run_panels(run: str | Path, options: EmbeddingOptions) -> list[Panel]:
    """One :class:`Panel` per tap of ``run``'s test features (tap names as the probes take
    them; an unknown one is a :class:`UserError` listing the valid taps)."""
    check_method(options.method)
    session = ProbeSession.open(ProbeOptions(
        run=str(run), tap=options.taps, cache_dir=options.cache_dir, device=options.device,
        batch_size=options.batch_size, seed=options.seed))
    split = session.test_split()
    fs = session.features(split)  # feats[tap] (N, D_tap), labels (N,)
    if fs.labels.dim() != 1:
        raise UserError(f"{session.dataset_name} is multi-label; an embedding map colours one "
                        "class per image")
    idx = subsample(len(fs), options.max_points, options.seed)
    labels = fs.labels.numpy()[idx]
    return [Panel(str(run), tap, embed(fs.feats[tap].numpy()[idx], options.method, options.seed),
                  labels, fs.classes, idx) for tap in session.taps]


def _class_colours(num_classes: int) -> Callable[[int], Any]:
    """Class id -> colour: the default cycle (C0..C9) up to 10 classes, else tab20 up to 20,
    else evenly spaced hues of ``hsv``."""
    if num_classes <= 10:
        return lambda k: f"C{k}"
    cmap = colormaps["tab20" if num_classes <= 20 else "hsv"]
    return lambda k: cmap(k if num_classes <= 20 else k / num_classes)


def plot_embedding(
    columns: Sequence[tuple[str, Sequence[Panel]]], path: str | Path, method: str
) -> EmbeddingFigure:
    """Draw the maps: one column per (title, panels of one run), one row per tap.

    Taps a run lacks leave its cell empty (the axes is hidden and not counted). Points are
    coloured by class id, the same colour in every panel; the legend names the classes.

    Returns:
        the PNG path, the (rows, cols) grid and the :class:`Panel` of each drawn axes.
    """
    taps: list[str] = []
    for _, panels in columns:
        taps += [p.tap for p in panels if p.tap not in taps]
    if not taps:
        raise UserError("no embedding panels to draw")
    rows, cols = len(taps), len(columns)
    fig = Figure(figsize=(4.2 * cols + 1.6, 3.8 * rows))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    num_classes = max(max(len(p.classes), int(p.labels.max()) + 1) for _, ps in columns for p in ps)
    colour = _class_colours(num_classes)
    drawn: list[Panel] = []
    legend: dict[int, str] = {}
    for r, tap in enumerate(taps):
        for c, (title, panels) in enumerate(columns):
            ax = axes[r, c]
            panel = next((p for p in panels if p.tap == tap), None)
            if panel is None:
                ax.set_visible(False)
                continue
            for k in np.unique(panel.labels).tolist():  # one colour per class id, every panel
                pts = panel.coords[panel.labels == k]
                ax.scatter(pts[:, 0], pts[:, 1], s=9, alpha=0.7, color=colour(k), linewidths=0)
                name = panel.classes[k] if k < len(panel.classes) else ""
                legend.setdefault(k, f"{k}: {name}" if name and name != str(k) else str(k))
            ax.set_title(f"{title}\ntap {tap}, {method}, N={len(panel.labels)}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            drawn.append(panel)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour(k)) for k in sorted(legend)]
    fig.legend(handles, [legend[k] for k in sorted(legend)], loc="center right", fontsize=7,
               title="class", ncols=1 if len(legend) <= 30 else 2)
    fig.suptitle(f"{method} maps of test features, coloured by class", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (4.2 * cols + 1.6), 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return EmbeddingFigure(path, (rows, cols), drawn, method)


def write_embedding_map(
    runs: Sequence[str | Path], path: str | Path, options: EmbeddingOptions
) -> EmbeddingFigure:
    """:func:`run_panels` of every run, side by side, titled ``<run> (<head label>)`` (the head
    label from ``setup.json``, :func:`transfer.records.run_labels`), written to ``path``."""
    resolved = [Path(r).resolve() for r in runs]
    labels, _ = run_labels(resolved)
    columns = []
    for run in resolved:
        head = labels.get(run, "")
        columns.append((f"{run.name} ({head})" if head else run.name, run_panels(run, options)))
    return plot_embedding(columns, path, options.method)


def report_embedding(
    runs: Sequence[Path], out_dir: str | Path, options: EmbeddingOptions
) -> tuple[list[tuple[str, Path]], list[str]]:
    """The report's embedding map of the ``runs`` that have a checkpoint (one figure, runs
    side by side): ((title, path) written, skip lines), as :func:`transfer.plots.write_figures`."""
    mapped = [r for r in runs if (Path(r) / CHECKPOINT_FILE).is_file()]
    if not mapped:
        return [], []
    title = f"{options.method} maps of test features at {options.taps}"
    try:
        fig = write_embedding_map(mapped, Path(out_dir) / f"embedding_{options.method}.png", options)
    except UserError as exc:
        return [], [f"{title}: {exc}"]
    return [(title, fig.path)], []
