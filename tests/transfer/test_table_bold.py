"""Bold marks the best score only, never a recorded setting (the linear probe's chosen penalty,
a count, an interval); and the README's table commands run on what its earlier commands make."""

from __future__ import annotations

import json
import re
import shlex
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.heads import describe_head
from pretrain.model import build_model, head_shape
from pretrain.run import run_dir_for
from transfer.cli import main
from transfer.records import load_records
from transfer.suite import load_suite, plan
from transfer.table_formats import TABLE_FORMATS, render
from transfer.tables import build_table, metric_direction

ROOT = Path(__file__).resolve().parents[2]


def rec(head: str, seed: int, metrics: dict[str, float], tap: str = "h",
        evaluator: str = "linear") -> dict[str, Any]:
    return {"evaluator": evaluator, "tap": tap, "dataset": "digits", "metrics": metrics,
            "settings": {"protocol": "lbfgs"}, "seed": 0,
            "setup": {"head": head, "pretrain_seed": seed, "checkpoint": f"/r/{head}_s{seed}/c.pt"}}


def store(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_settings_counts_and_intervals_have_no_direction() -> None:
    for name in ("linear/wd", "linear/lr", "knn/k", "retrieval/queries", "fewshot/5w1s_ci95",
                 "det/n_seeds"):
        assert metric_direction(name) == 0, name
    assert metric_direction("linear/top1") == 1 and metric_direction("linear/val_score") == 1
    assert metric_direction("quality/alignment") == -1 and metric_direction("det/voc07_AP50/k") == 1
    assert metric_direction("linear/wd", ["wd"]) == 0  # even when asked to rank it


def test_the_chosen_penalty_is_never_bold_in_any_format(tmp_path: Path) -> None:
    wds = {"none": 1e-4, "linear": 1e-2, "mlp-2": 1.0}
    top1 = {"none": 90.0, "linear": 95.0, "mlp-2": 93.0}
    records = [rec(h, s, {"linear/top1": top1[h] + s, "linear/wd": wds[h] * (s + 1),
                          "fewshot/5w1s_ci95": 0.1 * (s + 1) + wds[h]})
               for h in wds for s in range(2)]
    path = store(tmp_path / "results.jsonl", records)
    table = build_table(load_records([path]))
    best = {c[0]: [r[0] for r in table.rows if table.cell(r, c).best] for c in table.cols}
    assert best == {"linear/top1": ["linear"], "linear/wd": [], "fewshot/5w1s_ci95": []}
    assert "not ranked: linear/wd, fewshot/5w1s_ci95" in table.caption
    for fmt in TABLE_FORMATS:
        text = render(table, fmt)
        bold = re.findall(r"\*\*([^*]+)\*\*|\\textbf\{([^}]+)\}|<b>([^<]+)</b>", text)
        shown = {"".join(b).replace(r"$\pm$", "±") for b in bold} - {"Table."}
        assert shown == ({"95.50 ± 0.71"} if fmt != "csv" else set()), (fmt, shown)
    rows = [line.split(",") for line in render(table, "csv").splitlines()[1:]]
    assert sorted((r[1], r[-1]) for r in rows if r[-1] == "1") == [("linear/top1", "1")]
    # transposed (metric on the rows): still only the score row has a best cell
    transposed = build_table(load_records([path]), rows=["metric"], cols=["head"])
    assert [r[0] for r in transposed.rows if any(transposed.cell(r, c).best
                                                 for c in transposed.cols)] == ["linear/top1"]
    # the CLI's --lower-is-better cannot make a setting bold either
    assert main(["table", str(path), "--metric", "linear/wd", "--lower-is-better", "wd"]) == 0


# ---- the README's table commands against its earlier commands --------------------------------

def readme_commands() -> list[list[str]]:
    """Every ``simclr-pretrain`` / ``simclr-transfer`` command of the README's bash blocks, in
    order, comments dropped (``a && b`` is two commands), those with placeholders (``RUN``,
    ``<...>``, ``$VAR``) left out."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                placeholder = any(c in w for w in words for c in "<$") or "RUN" in words
                if words and words[0] in ("simclr-pretrain", "simclr-transfer") and not placeholder:
                    out.append(words)
    return out


def positional(words: list[str]) -> list[str]:
    """The positional arguments of a command line (options with a value skip it)."""
    flags = {"--tap", "--k", "--metric", "--rows", "--cols", "--filter", "--format", "-o",
             "--compare", "--config", "--output-dir"}
    out, skip = [], False
    for w in words[2:]:
        if skip:
            skip = False
        elif w in flags:
            skip = True
        elif not w.startswith("-") and "=" not in w:
            out.append(w)
    return out


TAPS_ALL = "all"
METRICS = {  # evaluator -> metric names its records hold (``{k}``: one per k)
    "knn": ["knn/top1@k{k}", "knn/top5@k{k}"],
    "linear": ["linear/top1", "linear/top5", "linear/wd", "linear/val_score"],
    "retrieval": ["retrieval/R@1", "retrieval/mAP@R", "retrieval/queries"],
    "quality": ["quality/rankme", "quality/alignment", "quality/uniformity"],
    "fewshot": ["fewshot/5w1s", "fewshot/5w1s_ci95"],
    "detection": ["det/voc07_AP50", "det/coco_AP"],
    "finetune": ["finetune/top1", "finetune/top5", "finetune/mean_per_class"],
}


def fake_records(cfg: PretrainConfig, line: list[str], tags: dict[str, str]) -> list[dict[str, Any]]:
    """The records evaluator line ``line`` (name first) writes on the run of ``cfg``, with
    made-up values: one per tap, the fields tables read."""
    name = line[0]
    with torch.device("meta"):
        taps = build_model(cfg.model).tap_names()
    default = "h" if name in ("detection", "finetune") else TAPS_ALL
    flag = "--from-tap" if name == "finetune" else "--tap"
    chosen = line[line.index(flag) + 1] if flag in line else default
    taps = taps if chosen == TAPS_ALL else [t for t in chosen.split(",") if t in taps]
    fractions = (line[line.index("--label-fraction") + 1].split(",")
                 if "--label-fraction" in line else ["1"])
    ks = line[line.index("--k") + 1].split(",") if "--k" in line else ["10", "20", "100", "200"]
    names = [m.format(k=k) for m in METRICS[name] for k in (ks if "{k}" in m else [""])]
    identity = describe_head(cfg.model.head, head_shape(cfg.model))
    run = run_dir_for(cfg)
    out = []
    random = name == "finetune" and "random" in line
    for tap in taps:
        for fraction in fractions if name == "finetune" else [""]:
            metrics = {m: zlib.crc32(f"{run}{tap}{m}{fraction}".encode()) % 1000 / 10
                       for m in names}
            setup = {"head": identity.label, "head_depth": identity.depth,
                     "pretrain_seed": cfg.train.seed, "run_dir": str(run),
                     "checkpoint": str(run / "checkpoint.pt"),
                     "encoder": cfg.model.encoder, "pretrain_dataset": cfg.data.name}
            if random:  # probes.records.random_init_setup, with the run's seed (finetune)
                setup = {"source": "random", "init": "random", "head": "random",
                         "encoder": cfg.model.encoder, "cifar_stem": cfg.model.cifar_stem,
                         "pretrain_seed": cfg.train.seed}
            record = {"evaluator": name, "tap": tap, "dataset": cfg.data.name, "metrics": metrics,
                      "settings": {}, "seed": 0, "tags": tags, "setup": setup}
            if name == "finetune":  # the fields finetune records carry (probes.records)
                record.update(from_tap=tap, label_fraction=float(fraction))
            out.append(record)
    return out


def test_readme_table_commands_run_on_what_the_earlier_commands_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replays the README: suites and pretraining runs make directories (with the records their
    evaluator lines would write, values made up), then every ``table`` command runs on them and
    every ``table`` / ``plot`` / ``report`` path is one of those directories or inside one."""
    made: list[Path] = []  # directories earlier commands create, relative to the checkout
    runs: dict[Path, PretrainConfig] = {}
    checked = 0
    for words in readme_commands():
        tool = words[1] if words[0] == "simclr-transfer" else "pretrain"
        if tool == "pretrain":
            args = words[1:]
            cfg = load_config(PretrainConfig, ROOT / args[args.index("--config") + 1],
                              [a for a in args if "=" in a and not a.startswith("-")])
            runs[run_dir_for(cfg)] = cfg
            made += [run_dir_for(cfg), Path(cfg.train.run_dir)]
        elif tool == "suite" and "--dry-run" not in words:
            suite = load_suite(ROOT / words[2], [w for w in words[3:] if "=" in w])
            if suite.output_dir.startswith("/"):
                continue  # a path on someone's machine
            made.append(Path(suite.output_dir) / suite.name)
            suite.base_config = str(ROOT / suite.base_config)  # read from the checkout
            for cell in plan(suite):
                for line in suite.evaluators:
                    tags = {"suite": suite.name, "cell": f"{cell.variant}/s{cell.seed}/{line}"}
                    recs = fake_records(cell.config, shlex.split(line), tags)
                    store_append(tmp_path / cell.run_dir / "results.jsonl", recs)
        elif tool in METRICS and positional(words) and Path(positional(words)[0]) in runs:
            path = Path(positional(words)[0])
            store_append(tmp_path / path / "results.jsonl", fake_records(runs[path], words[1:], {}))
        elif tool in ("table", "plot", "report"):
            path = Path(positional(words)[0])
            assert any(path == m or m in path.parents for m in made), (
                f"README: `{shlex.join(words)}` reads {path}, which no earlier command makes "
                f"(made: {', '.join(map(str, made))})")
            if tool == "table":
                monkeypatch.chdir(tmp_path)
                code = main(words[1:])
                err = capsys.readouterr().err
                assert code == 0, f"README: `{shlex.join(words)}` failed: {err}"
                checked += 1
    assert checked >= 4


def store_append(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
