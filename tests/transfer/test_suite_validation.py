"""A suite is checked whole before anything runs: evaluator lines, table specs and variants."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pretrain.config_io import from_dict
from pretrain.run import RunSetup
from probes.records import make_record, random_init_setup, setup_block
from transfer.cli import main as transfer_main
from transfer.records import flatten_record
from transfer.suite import SuiteConfig, check_suite, load_suite
from transfer.tables import known_field

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "configs" / "suites").glob("*.yaml"))


def write_suite(tmp_path: Path, **changes: object) -> Path:
    """A two-variant quickstart suite shrunk to seconds (were it to run), outputs under
    ``tmp_path/runs``; ``changes`` replace its top-level entries."""
    suite = {
        "name": "bad",
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "output_dir": str(tmp_path / "runs"),
        "overrides": ["train.epochs=1", "data.limit=128", "train.batch_size=32",
                      "train.progress=false", "model.hidden_dim=32", "model.out_dim=16",
                      f"data.cache_dir={tmp_path / 'cache'}"],
        "variants": {"none": ["model.head=none"], "mlp-2": ["model.head=mlp", "model.num_layers=2"]},
        "seeds": [0],
        "evaluators": ["knn --tap all --k 5,10 --limit 200"],
        "tables": [{"rows": "head", "cols": "tap", "metric": "knn/top1@k10"}],
        **changes,
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


KNN = "knn --tap all --k 5,10 --limit 200"
TABLE = {"rows": "head", "cols": "tap", "metric": "knn/top1@k10"}
BAD = {  # case -> (suite entries replaced, text the error must name)
    "evaluator name": ({"evaluators": [KNN, "lnear --tap h"]}, "lnear"),
    "evaluator option": ({"evaluators": [KNN, "linear --tapp h"]}, "--tapp"),
    "evaluator value": ({"evaluators": [KNN, "knn --tap h --k five"]}, "five"),
    "detection override": ({"evaluators": [
        KNN, "detection --config bccd_r18_fpn {run} train.max_itr=5"]}, "max_itr"),
    "table field": ({"tables": [{**TABLE, "rows": "haed"}]}, "haed"),
    "table filter": ({"tables": [{**TABLE, "filter": ["evalutor=knn"]}]}, "evalutor"),
    "table compare": ({"tables": [{**TABLE, "compare": "mlp-2"}]}, "mlp-2"),
    "variant value": ({"variants": {"none": ["model.head=none"],
                                    "mlp-2": ["model.head=mlpp"]}}, "mlpp"),
    "variant key": ({"variants": {"none": ["model.head=none"],
                                  "mlp-2": ["model.num_layer=2"]}}, "num_layer"),
    "variant dataset": ({"variants": {"none": ["model.head=none"],
                                      "cifar": ["data.name=cifar01"]}}, "cifar01"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_entry_is_refused_before_anything_runs(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, named = BAD[case]
    path = write_suite(tmp_path, **changes)
    code = transfer_main(["suite", str(path)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, captured.err  # one line, no argparse usage block
    assert lines[0].startswith(f"error: suite {path}: ") and named in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # nothing pretrained, no run directory
    assert "pretrain" not in captured.out


def test_the_shipped_suites_and_the_readme_suite_pass_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # suites name their configs relative to the checkout
    for path in SUITES:
        cells = check_suite(load_suite(path, [f"output_dir={tmp_path}"]))
        assert cells and all(str(c.run_dir).startswith(str(tmp_path)) for c in cells)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Suites"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    check_suite(from_dict(SuiteConfig, {**data, "output_dir": str(tmp_path)}))
    assert not any(tmp_path.iterdir())


def test_every_field_a_record_has_is_known_before_any_record_exists() -> None:
    """Guards the table-spec check against drift from the record format (probes.records)."""
    setup = RunSetup(encoder="small_cnn", cifar_stem=False, head="mlp-2", head_kind="mlp",
                     head_depth=2, num_layers=2, hidden_dim=8, out_dim=4, bn=True,
                     taps=("h", "head.0", "z"), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                     image_size=16, pretrain_dataset="digits", epochs=1, batch_size=32, seed=0,
                     temperature=0.5, optimizer="adamw")
    run = SimpleNamespace(dir=Path("/runs/r"), setup=setup)
    loaded = SimpleNamespace(checkpoint=Path("/runs/r/checkpoint.pt"), checkpoint_hash="abc",
                             source="run", epoch=1, run=run)
    setups = [setup_block(loaded), random_init_setup("resnet18"),  # type: ignore[arg-type]
              {"encoder": "resnet18", "cifar_stem": False, "init": "sup", "head": "sup",
               "head_kind": None, "head_depth": None, "taps": ["h"], "unused_keys": 0,
               "checkpoint": "/x.pth", "checkpoint_hash": "h", "source": "torchvision",
               "checkpoint_epoch": None}]
    for block in setups:
        rec = make_record("knn", "h", "digits", {"knn/top1@k5": 1.0}, {"k": [5]}, block,
                          {"train": 1, "test": 1}, 0, 1.0, "cpu", {"suite": "s"})
        fields = flatten_record(json.loads(json.dumps(rec))).fields
        assert [f for f in fields if not known_field(f)] == []
    assert not known_field("haed") and known_field("metric") and known_field("settings.k")
