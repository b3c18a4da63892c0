"""Plugins installed as real packages: the README's example, as written, and a broken one.

Each package is installed with pip (``--no-deps --no-build-isolation --no-index``: no network)
into a folder put on ``PYTHONPATH`` of a ``simclr-transfer`` subprocess, so its entry point is
found exactly as an installed plugin's is.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from subprocesses import REPO, child_env

import probes.registry as registry
from probes.registry import ENTRY_POINT_GROUP
from transfer.cli import main as transfer_main

SECTION = "### Adding an evaluator (plugin)"


def readme_plugin_files() -> dict[str, str]:
    """``{path: text}`` of every code block in the README's plugin section whose first line is
    a ``# my_probes/<file>`` comment: the package the README tells people to write."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start)]
    files = {}
    for body in re.findall(r"```[a-z]*\n(.*?)```", section, re.S):
        first = body.splitlines()[0]
        match = re.fullmatch(r"# (my_probes/[\w./-]+)", first.strip())
        if match:
            files[match.group(1)] = body
    return files


def install(packages: list[Path], site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), *map(str, packages)],
        capture_output=True, text=True, timeout=300, cwd=site.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``simclr-transfer ARGS`` in a subprocess that sees ``site`` and the checkout."""
    return subprocess.run([sys.executable, "-m", "transfer.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=child_env(site))


BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "broken-probe"
version = "0.1.0"

[tool.setuptools]
py-modules = ["broken_probe"]

[project.entry-points."simclr_transfer.evaluators"]
broken = "broken_probe:EVALUATOR"
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's package and a broken one (its module raises ImportError), both installed."""
    root = tmp_path_factory.mktemp("plugins")
    files = readme_plugin_files()
    assert "my_probes/pyproject.toml" in files and any(p.endswith(".py") for p in files), files
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    broken = root / "broken_probe"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (broken / "broken_probe.py").write_text(
        'raise ImportError("broken_probe needs the package not_installed")\n')
    install([root / "my_probes", broken], root / "site")
    return root / "site"


def test_list_shows_the_readme_plugin_and_skips_the_broken_one_with_one_warning(
    site: Path, tmp_path: Path
) -> None:
    listed = cli(site, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^featnorm +evaluator ", listed.stdout, re.M), listed.stdout
    assert re.search(r"^knn +evaluator ", listed.stdout, re.M)  # the built-ins are all there
    assert not re.search(r"^broken ", listed.stdout, re.M)
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), listed.stderr
    assert "'broken'" in warnings[0] and "not_installed" in warnings[0]


def test_the_readme_plugin_runs_on_a_run_directory(
    site: Path, tmp_path: Path, run_factory: Callable[..., Path]
) -> None:
    run = run_factory(tmp_path / "runs" / "run")
    done = cli(site, tmp_path, "featnorm", str(run), "--tap", "h,z", "--limit", "60",
               "--cache-dir", str(tmp_path / "cache"), "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.splitlines()) == 1  # the broken plugin's warning, nothing else
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [(r["evaluator"], r["tap"]) for r in records] == [("featnorm", "h"), ("featnorm", "z")]
    for rec in records:
        assert math.isfinite(rec["metrics"]["featnorm/mean"]) and rec["metrics"]["featnorm/mean"] > 0
        assert rec["setup"]["head"] == "mlp-2" and rec["splits"] == {"test": 60}
    assert json.loads(done.stdout)["h:featnorm/mean"] == records[0]["metrics"]["featnorm/mean"]


def test_every_kind_of_broken_plugin_is_skipped_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Import error, not an Evaluator, a taken name, arguments that do not build: each is one
    warning line; ``list`` and a built-in command still run."""
    eps = [EntryPoint("gone", "no_such_module_for_this_test:EVALUATOR", ENTRY_POINT_GROUP),
           EntryPoint("notone", "json:dumps", ENTRY_POINT_GROUP),
           EntryPoint("knn2", "tests_plugin_fakes:TAKEN", ENTRY_POINT_GROUP),
           EntryPoint("badargs", "tests_plugin_fakes:BAD_ARGS", ENTRY_POINT_GROUP)]
    fakes = tmp_path / "tests_plugin_fakes.py"
    fakes.write_text(
        "from probes.registry import EVALUATORS, Evaluator\n"
        "TAKEN = EVALUATORS.get('knn')\n"
        "def bad(parser):\n    raise RuntimeError('oops')\n"
        "BAD_ARGS = Evaluator('badargs', 'h', bad, lambda args: {})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert transfer_main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "knn" in out and "badargs" not in out
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("warning: evaluator plugin '") for line in lines)
    for name, why in (("gone", "ModuleNotFoundError"), ("notone", "not a probes.registry.Evaluator"),
                      ("knn2", "already registered"), ("badargs", "oops")):
        assert any(f"'{name}'" in line and why in line for line in lines), (name, err)
    assert transfer_main(["table", str(tmp_path / "nothing")]) == 2  # the built-in runs
    assert "error: results not found" in capsys.readouterr().err
