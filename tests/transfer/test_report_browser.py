"""The HTML report as a person sees it: ``simclr-transfer report`` on a tiny digits store, opened
in a real headless Chromium. The page loads without console errors, every image and link
resolves to a file in the report folder (PNGs/SVGs that are valid), the tables render in the DOM
and the screenshot is not blank.

Needs a Chromium binary (``apt-get install chromium``); skipped with a reason otherwise.
Run with ``python -m pytest -m browser tests/transfer/test_report_browser.py``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_plots_report import PNG_SIGNATURE, make_store

from pretrain.cli import main as pretrain_main
from transfer.cli import main

FAST = [  # a one-epoch digits run in seconds
    "data.limit=300", "model.hidden_dim=32", "model.out_dim=16", "train.batch_size=64",
    "optim.name=sgd", "optim.lr=0.1", "optim.warmup_epochs=0", "train.progress=false",
    "train.epochs=2", "train.monitor_k=20",
]

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "headless_shell")
TIMEOUT_S = 60
WINDOW = (1280, 2400)
# "...:INFO:CONSOLE(12)] msg" in older Chromium, "...:INFO:CONSOLE:12] msg" in newer ones
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]\s*(.*)")


def find_browser() -> str | None:
    """The first Chromium-like binary on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_browser(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless on ``page`` with ``args``; stderr carries the console log."""
    cmd = [browser, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
           "--disable-extensions", "--allow-file-access-from-files", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           "--virtual-time-budget=5000", *args, page.resolve().as_uri()]
    if os.name == "posix" and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with the sandbox
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def console_messages(stderr: str) -> list[str]:
    """The page's console messages (``CONSOLE(line)``/``CONSOLE:line`` lines) in Chromium's stderr."""
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]


def dump_dom(browser: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load and the console messages printed while loading."""
    proc = _run_browser(browser, page, f"--user-data-dir={profile}", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, console_messages(proc.stderr)


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> Path:
    """Save a screenshot of ``page`` to ``png`` and return it."""
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _run_browser(browser, page, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}")
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-3000:]
    return png


def build_report(root: Path) -> Path:
    """``simclr-transfer report`` on a tiny store of digits runs under ``root``; the index.html."""
    store = make_store(root / "store")
    out = root / "report"
    assert main(["report", str(store), "-o", str(out)]) == 0
    return out / "index.html"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(str(a["src"]))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        self.tables += tag == "table"


class _Dom(HTMLParser):
    """Tables and their body rows (with cells) in a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.rows: list[int] = []  # cells per <tr>
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th") and self.rows:
            self.rows[-1] += 1
        elif tag == "img":
            self.images += 1


def assert_image_file(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    if path.suffix.lower() == ".svg":
        assert b"<svg" in data[:2000], path
    else:
        assert data[:8] == PNG_SIGNATURE, path
        pixels = mpimg.imread(path)
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50, (path, pixels.shape)


@pytest.fixture(scope="module")
def browser() -> str:
    found = find_browser()
    if found is None:
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}) on PATH; "
                    "install one with `apt-get install chromium`")
    return found


def check_page(browser: str, index: Path, tmp_path: Path) -> tuple[_Page, str, Path]:
    """The checks every report page passes; returns its parsed HTML, its DOM and a screenshot."""
    out = index.parent
    html_page = _Page()
    html_page.feed(index.read_text())

    # every image and link resolves to a file inside the report folder
    assert html_page.images and html_page.links and html_page.tables
    for ref in html_page.images + html_page.links:
        assert not re.match(r"^(/|[a-z]+:)", ref), ref  # relative, nothing fetched from elsewhere
        assert (out / ref).resolve().is_file(), ref
        assert (out / ref).resolve().is_relative_to(out.resolve()), ref
    for src in html_page.images:
        assert_image_file(out / src)

    # loads without console errors; tables and figures are in the rendered DOM
    dom_text, messages = dump_dom(browser, index, tmp_path / "profile")
    assert messages == [], messages
    dom = _Dom()
    dom.feed(dom_text)
    assert dom.tables == html_page.tables
    assert dom.images == len(html_page.images)
    body_rows = [cells for cells in dom.rows if cells > 1]
    assert len(body_rows) > dom.tables, dom.rows  # more than one header row per table
    assert "simclr-transfer report" in dom_text

    # the screenshot shows something: not one flat colour
    png = screenshot(browser, index, tmp_path / "shot" / "report.png", tmp_path / "profile")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(png)[..., :3]
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert float(np.std(pixels)) > 0.02
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50, len(colours)
    return html_page, dom_text, png


def test_report_opens_in_a_browser(browser: str, tmp_path: Path) -> None:
    _, dom_text, _ = check_page(browser, build_report(tmp_path), tmp_path)
    assert "mlp3_s1" in dom_text


def test_report_of_trained_runs_shows_curves_and_the_embedding_map(browser: str,
                                                                     tmp_path: Path) -> None:
    """Real (one-epoch) runs probed by k-NN: the report holds their pretraining curves and the
    PCA map of their cached test features, and the page still passes every check."""
    runs = []
    for name, head in (("mlp2", "mlp"), ("linear", "linear")):
        run = tmp_path / "runs" / name
        assert pretrain_main([*FAST, f"train.run_dir={tmp_path / 'runs'}", f"train.name={name}",
                              f"model.head={head}", "train.monitor_every=1",
                              "train.quality_every=1", "train.quality_samples=64"]) == 0
        assert main(["knn", str(run), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                     "--k", "5"]) == 0
        runs.append(run)
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "-o", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu", "--max-points", "200"]) == 0
    page, dom_text, _ = check_page(browser, out / "index.html", tmp_path)
    assert "figures/embedding_pca.png" in page.images
    assert any("pretraining" in src for src in page.images), page.images
    assert "embedding_pca.png" in dom_text
