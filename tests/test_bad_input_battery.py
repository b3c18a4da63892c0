"""The bad-input battery: every user mistake we know of, through the real command lines.

For each input (:data:`CASES`): the exit status, exactly one ``error:`` line on stderr naming
what was wrong (nothing else on stderr: no traceback, no leaked warning), and not one file of
the run directory changed (bytes and modification times compared). The README's "What happens
on bad input" table is rendered from :data:`CASES` (:func:`readme_table`) and checked here, so
the two cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain.train as train_module
from pretrain.checkpoint import load_checkpoint
from pretrain.cli import main as pretrain_main
from pretrain.run import CHECKPOINT_FILE, SUMMARY_FILE
from transfer.cli import main as transfer_main

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.limit=64", "train.batch_size=32", "model.hidden_dim=32", "model.out_dim=16",
        "optim.name=sgd", "optim.lr=0.1", "optim.warmup_epochs=1", "augment.image_size=12",
        "train.progress=false", "train.device=cpu", "train.epochs=2", "train.name=r"]


def FINETUNE(c: Ctx) -> list[str]:  # noqa: N802  (a command line, like the constants)
    return ["finetune", str(c.run), "--steps", "1", "--label-fraction", "0.1", "--no-progress"]


@dataclass
class Ctx:
    """One case's sandbox: ``root`` holds a copy of a run at ``root/r`` (``run``)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "r"

    def pretrain(self, *extra: str) -> list[str]:
        return [*FAST, f"train.run_dir={self.root}", *extra]


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the input, as the README's table says it
    cli: str  # "pretrain" | "transfer"
    argv: Callable[[Ctx], list[str]]
    says: tuple[str, ...]  # in the error line (or on stdout when code is 0)
    prepare: Callable[[Ctx], object] | None = None
    code: int = 2
    run: str = "finished"  # which run is copied into the sandbox: finished | interrupted
    warns: str = ""  # with code 0: the one warning line on stderr contains this
    absent: str = ""  # a path (relative to root) that must not exist afterwards


def _write(rel: str, data: bytes | str) -> Callable[[Ctx], None]:
    def prepare(ctx: Ctx) -> None:
        path = ctx.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return prepare


class Evil:
    """Unpickling this would run code: every loader must refuse it."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /tmp/simclr_battery_pwned",))


EVIL = pickle.dumps({"model": Evil()})


def _truncate(rel: str) -> Callable[[Ctx], None]:
    def prepare(ctx: Ctx) -> None:
        path = ctx.root / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return prepare


def _folder(ctx: Ctx, broken: bool = False) -> Path:
    """A tiny image folder (train/test, two classes); ``broken`` makes one JPEG garbage."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = ctx.root / "imgs" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    if broken:
        (ctx.root / "imgs" / "train" / "a" / "0.jpg").write_bytes(b"not a jpeg")
    return ctx.root / "imgs"


def _append_garbage(path: Path) -> None:
    with open(path, "a") as f:
        f.write("this is not JSON\n")


def _suite(text: str) -> Callable[[Ctx], None]:
    return _write("s.yaml", text)


def _state_dict_of_another_shape(ctx: Ctx) -> None:
    torch.save({"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}, ctx.root / "odd.pth")


def _cifar_stem(ctx: Ctx) -> None:
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, ctx.root / "cifar.pth")


def _zip_garbage(ctx: Ctx) -> None:
    with zipfile.ZipFile(ctx.root / "w.pth", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")


SUITE = ("name: s\noutput_dir: {root}/suite\nbase_config: " + str(REPO / "configs/quickstart.yaml")
         + "\noverrides: [data.limit=64, train.epochs=1]\nvariants: {{mlp: [model.head=mlp]}}\n"
         "seeds: [0]\nevaluators: ['{line}']\n")

CASES = [
    # simclr-pretrain: configuration
    Case("unknown_key", "unknown config key (`train.epochz=1`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "train.epochz=1"), ("train.epochz", "valid"),
         absent="new"),
    Case("bad_value", "value of the wrong type (`train.epochs=two`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "train.epochs=two"), ("train.epochs",),
         absent="new"),
    Case("missing_config", "missing config file", "pretrain",
         lambda c: ["--config", str(c.root / "none.yaml"), *c.pretrain("train.name=new")],
         ("none.yaml",), absent="new"),
    Case("bad_yaml", "config file that is not YAML (unclosed bracket)", "pretrain",
         lambda c: ["--config", str(c.root / "bad.yaml"), *c.pretrain("train.name=new")],
         ("bad.yaml", "line"), prepare=_write("bad.yaml", "train: {epochs: 2\nmodel: [\n"),
         absent="new"),
    Case("head_typo", "unknown head (`model.head=mlpp`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "model.head=mlpp"), ("model.head", "mlp"),
         absent="new"),
    Case("encoder_typo", "unknown encoder (`model.encoder=resnet19`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "model.encoder=resnet19"),
         ("model.encoder", "resnet18"), absent="new"),
    Case("optim_typo", "unknown optimizer (`optim.name=larss`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "optim.name=larss"), ("optim.name", "lars"),
         absent="new"),
    Case("dataset_typo", "unknown dataset (`data.name=digitz`)", "pretrain",
         lambda c: c.pretrain("train.name=new", "data.name=digitz"), ("data.name", "digits"),
         absent="new"),
    Case("missing_folder", "`data.name=imagefolder:<missing path>`", "pretrain",
         lambda c: c.pretrain("train.name=new", f"data.name=imagefolder:{c.root}/nope"),
         ("nope",), absent="new"),
    Case("broken_image", "an image file that is not an image", "pretrain",
         lambda c: c.pretrain("train.name=new", f"data.name=imagefolder:{_folder(c, True)}",
                              "data.limit=0"), ("0.jpg",)),
    # simclr-pretrain --resume
    Case("resume_new_head", "`--resume` that changes the model (`model.head=linear`)", "pretrain",
         lambda c: c.pretrain("model.head=linear", "--resume"), ("model.head", "mlp", "linear"),
         run="interrupted"),
    Case("resume_new_lr", "`--resume` that changes the optimizer (`optim.lr=0.5`)", "pretrain",
         lambda c: c.pretrain("optim.lr=0.5", "--resume"), ("optim.lr",), run="interrupted"),
    Case("resume_more_epochs", "`--resume` with more epochs (`train.epochs=3`)", "pretrain",
         lambda c: c.pretrain("train.epochs=3", "--resume"), ("train.epochs",),
         run="interrupted"),
    Case("resume_finished", "`--resume` of a finished run (exit 0: a no-op)", "pretrain",
         lambda c: c.pretrain("--resume"), ("already complete",), code=0),
    Case("resume_truncated", "`--resume` with a truncated checkpoint.pt", "pretrain",
         lambda c: c.pretrain("--resume"), ("checkpoint.pt",),
         prepare=_truncate(f"r/{CHECKPOINT_FILE}"), run="interrupted"),
    Case("resume_pickle", "`--resume` with a malicious pickle as checkpoint.pt", "pretrain",
         lambda c: c.pretrain("--resume"), ("checkpoint.pt",),
         prepare=_write(f"r/{CHECKPOINT_FILE}", EVIL), run="interrupted"),
    Case("resume_bytes", "`--resume` with random bytes as checkpoint.pt", "pretrain",
         lambda c: c.pretrain("--resume"), ("checkpoint.pt",),
         prepare=_write(f"r/{CHECKPOINT_FILE}", os.urandom(2000)), run="interrupted"),
    Case("resume_empty", "`--resume` with an empty checkpoint.pt", "pretrain",
         lambda c: c.pretrain("--resume"), ("checkpoint.pt",),
         prepare=_write(f"r/{CHECKPOINT_FILE}", b""), run="interrupted"),
    # simclr-transfer probes
    Case("probe_missing_run", "probe of a run that does not exist", "transfer",
         lambda c: ["knn", str(c.root / "ghost")], ("ghost",)),
    Case("probe_bad_tap", "`--tap` that the run has not (`head.7`)", "transfer",
         lambda c: ["knn", str(c.run), "--tap", "head.7"], ("head.7",)),
    Case("probe_bad_k", "`--k 0`", "transfer",
         lambda c: ["knn", str(c.run), "--k", "0"], ("k",)),
    Case("probe_missing_folder", "`--dataset imagefolder:<missing path>`", "transfer",
         lambda c: ["knn", str(c.run), "--dataset", f"imagefolder:{c.root}/nope"], ("nope",)),
    Case("probe_dataset_typo", "unknown `--dataset`", "transfer",
         lambda c: ["knn", str(c.run), "--dataset", "cifar11"], ("cifar11",)),
    Case("probe_benchmark_absent", "a transfer-benchmark `--dataset` with no local copy",
         "transfer", lambda c: ["linear", str(c.run), "--dataset", "flowers102", "--data-root",
                                f"{c.root}/nope"], ("flowers102 not found", "setid.mat", "nope")),
    Case("probe_pickle", "weights file that is a malicious pickle", "transfer",
         lambda c: ["linear", str(c.root / "w.pth")], ("w.pth",), prepare=_write("w.pth", EVIL)),
    Case("probe_bytes", "weights file of random bytes", "transfer",
         lambda c: ["knn", str(c.root / "w.pth")], ("w.pth",),
         prepare=_write("w.pth", os.urandom(3000))),
    Case("probe_text", "weights file that is text", "transfer",
         lambda c: ["knn", str(c.root / "w.pth")], ("w.pth",),
         prepare=_write("w.pth", "hello\n")),
    Case("probe_empty", "empty weights file", "transfer",
         lambda c: ["knn", str(c.root / "w.pth")], ("w.pth",), prepare=_write("w.pth", b"")),
    Case("probe_zip", "weights file that is a zip without tensors", "transfer",
         lambda c: ["knn", str(c.root / "w.pth")], ("w.pth",), prepare=_zip_garbage),
    Case("probe_odd_state", "state dict of no known encoder", "transfer",
         lambda c: ["knn", str(c.root / "odd.pth")], ("odd.pth",),
         prepare=_state_dict_of_another_shape),
    Case("probe_run_truncated", "probe of a run whose checkpoint.pt is truncated", "transfer",
         lambda c: ["knn", str(c.run)], ("checkpoint.pt",),
         prepare=_truncate(f"r/{CHECKPOINT_FILE}")),
    Case("probe_broken_image", "`--dataset imagefolder:` with an image that is not one",
         "transfer", lambda c: ["knn", str(c.run), "--dataset", f"imagefolder:{_folder(c, True)}",
                                "--no-cache"], ("0.jpg",)),
    Case("results_garbage_line", "a garbage line inside results.jsonl (exit 0: skipped, warned)",
         "transfer", lambda c: ["table", str(c.run), "--rows", "head", "--cols", "tap",
                    "--metric", "knn/top1@k3"],
         ("knn/top1@k3",), code=0, warns="results.jsonl: line 2",
         prepare=lambda c: (transfer_main(["knn", str(c.run), "--k", "3", "--tap", "h", "--no-cache"]),
                            _append_garbage(c.run / "results.jsonl"),
                            transfer_main(["knn", str(c.run), "--k", "3", "--tap", "z", "--no-cache"]))),
    # simclr-transfer detection / export
    Case("detection_key", "detection: unknown config key", "transfer",
         lambda c: ["detection", "--config", "bccd_r18_fpn", "random", "model.encoder=resnet18",
                    "model.depth=50"], ("model.depth", "valid")),
    Case("detection_preset", "detection: unknown preset", "transfer",
         lambda c: ["detection", "--config", "no_such_preset", "random"], ("no_such_preset",)),
    Case("export_cifar", "export of a CIFAR-stem ResNet to detectron2", "transfer",
         lambda c: ["export", "--format", "detectron2", "--output", str(c.root / "out"),
                    str(c.root / "cifar.pth")], ("CIFAR stem",), prepare=_cifar_stem,
         absent="out"),
    # simclr-transfer finetune
    Case("finetune_tap", "finetune: `--from-tap` that the run has not (`head.7`)", "transfer",
         lambda c: ["finetune", str(c.run), "--from-tap", "head.7"], ("head.7",)),
    Case("finetune_fraction", "finetune: `--label-fraction 2`", "transfer",
         lambda c: ["finetune", str(c.run), "--label-fraction", "2"], ("label-fraction",)),
    Case("finetune_subset_file", "finetune: `--subset-file` with an index out of range",
         "transfer", lambda c: ["finetune", str(c.run), "--subset-file", str(c.root / "list.txt")],
         ("list.txt", "out of range"), prepare=_write("list.txt", "99999\n")),
    Case("finetune_nan", "finetune: a learning rate that makes the loss non-finite", "transfer",
         lambda c: ["finetune", str(c.run), "--output-dir", str(c.root / "ft"), "--lr-grid",
                    "1e20", "--steps", "3", "--log-every", "1", "--label-fraction", "0.1",
                    "--no-progress"], ("non-finite", "step 3")),
    Case("finetune_no_resume", "finetune: a cell that ran before, without `--resume`",
         "transfer", lambda c: [*FINETUNE(c), "--output-dir", str(c.root / "ft")], ("--resume",),
         prepare=lambda c: transfer_main([*FINETUNE(c), "--output-dir", str(c.root / "ft")])),
    # simclr-transfer suite
    Case("suite_missing", "suite file that does not exist", "transfer",
         lambda c: ["suite", str(c.root / "none.yaml")], ("none.yaml",)),
    Case("suite_evaluator_typo", "suite with an evaluator typo (`lnear`), before pretraining",
         "transfer", lambda c: ["suite", str(c.root / "s.yaml")], ("lnear",),
         prepare=lambda c: _suite(SUITE.format(root=c.root, line="lnear --tap h"))(c),
         absent="suite"),
    Case("suite_bad_override", "suite with a bad variant override, before pretraining",
         "transfer", lambda c: ["suite", str(c.root / "s.yaml")], ("model.haed",),
         prepare=lambda c: _suite(SUITE.format(root=c.root, line="knn --tap h")
                                  .replace("model.head=mlp", "model.haed=mlp"))(c),
         absent="suite"),
]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-epoch digits run and one stopped (Ctrl-C) after its first epoch."""
    finished = tmp_path_factory.mktemp("finished")
    assert pretrain_main([*FAST, f"train.run_dir={finished}"]) == 0
    assert (finished / "r" / SUMMARY_FILE).is_file()
    interrupted = tmp_path_factory.mktemp("interrupted")
    append = train_module.append_jsonl

    def stop_after_epoch_one(path: Path, record: dict) -> None:
        append(path, record)
        if record.get("epoch") == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "append_jsonl", stop_after_epoch_one)
        assert pretrain_main([*FAST, f"train.run_dir={interrupted}"]) == 130
    assert load_checkpoint(interrupted / "r" / CHECKPOINT_FILE)["epoch"] == 1
    return {"finished": finished / "r", "interrupted": interrupted / "r"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: dict[str, Path], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    ctx = Ctx(tmp_path)
    shutil.copytree(runs[case.run], ctx.run)
    if case.prepare is not None:
        case.prepare(ctx)
    argv = case.argv(ctx)
    before = _snapshot(ctx.run)
    capsys.readouterr()
    caplog.clear()
    code = (pretrain_main if case.cli == "pretrain" else transfer_main)(argv)
    out, err = capsys.readouterr()
    # warnings of the project's loggers reach stderr from the CLI; under pytest, caplog takes them
    err += "".join(r.getMessage() + "\n" for r in caplog.records if r.levelno >= logging.WARNING)
    assert code == case.code, (out[-2000:], err[-2000:])
    assert "Traceback" not in err and "weights_only" not in err, err[-2000:]
    if case.code == 0:
        warnings = err.strip().splitlines()
        assert warnings == ([] if not case.warns else warnings[:1]), err
        if case.warns:
            assert warnings[0].startswith("warning: ") and case.warns in warnings[0], err
        for needle in case.says:
            assert needle in out, out
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
        for needle in case.says:
            assert needle in lines[0], lines[0]
    assert _snapshot(ctx.run) == before, "a file of the run directory changed"
    if case.absent:
        assert not (ctx.root / case.absent).exists(), f"{case.absent} was created"
    assert not Path("/tmp/simclr_battery_pwned").exists(), "a pickle ran code"


def readme_table() -> str:
    """The README's table of bad inputs, rendered from :data:`CASES`."""
    rows = ["| input | command | exit | the message names |", "|---|---|--:|---|"]
    for c in CASES:
        cli = "simclr-pretrain" if c.cli == "pretrain" else "simclr-transfer"
        says = ", ".join(f"`{s}`" for s in c.says)
        rows.append(f"| {c.what} | `{cli}` | {c.code} | {says} |")
    return "\n".join(rows)


def test_the_readme_table_is_the_battery() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme_table() in readme, "README's bad-input table differs; paste readme_table()"


if __name__ == "__main__":
    print(readme_table())
