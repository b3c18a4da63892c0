"""One command that checks the GPU claims and prints one Markdown table (issue 14).

Stages, in order, each within what is left of ``--budget-s`` (default 540 s):

1. ``pytest -m gpu``: pass/fail/skip counts of the tests of the CUDA-only paths;
2. pretraining throughput (:mod:`pretrain_throughput`): CIFAR-10, ResNet-18 (CIFAR stem), batch
   512 pairs, bf16: (a) model step alone, (b) our device pipeline, (c) our CPU-worker pipeline,
   (d) lightly's ``SimCLRTransform`` pipeline when lightly is importable; b/a, b/c, b/d;
3. linear probe (:mod:`linear_probe`): features of a fixed random ResNet-18 (50,000 x 512), the
   same penalty grid (``--linear-grid``, 23 values by default), ours on the device against
   scikit-learn on all CPU cores: both times, the ratio, both chosen penalties and test
   accuracies;
4. time to accuracy (:mod:`time_to_accuracy`) with the rest of the budget (or ``--tta-s``):
   SimCLR from scratch, then k-NN (k = 200, T = 0.1) on the 10,000 test images.

A failing stage is reported in its row and the next one still runs. The device, torch and CUDA
versions, the command line and the packages found are printed first. ``--profile tta`` runs
only stage 4 with an 8-minute budget (the 85 % target). ``--smoke`` shrinks every stage to
seconds on digits (the CPU test in ``tests/test_bench_gpu_check.py``).

    python bench/gpu_check.py --data-root data/cifar10.tar.xz --json gpu_check.json
    python bench/gpu_check.py --profile tta --data-root data/cifar10.tar.xz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]  # the sibling bench scripts and the checkout

NEEDED = ("torch", "torchvision", "timm", "sklearn", "numpy", "yaml", "tqdm", "PIL",
          "threadpoolctl", "safetensors", "pytest")  # what the four stages import
OPTIONAL = ("lightly",)  # stage 2 (d)


def packages() -> tuple[list[str], list[str]]:
    """(found with versions, missing) of :data:`NEEDED` and :data:`OPTIONAL`."""
    found, missing = [], []
    for name in (*NEEDED, *OPTIONAL):
        if importlib.util.find_spec(name) is None:
            missing.append(name + (" (optional)" if name in OPTIONAL else ""))
            continue
        try:
            dist = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow"}.get(name, name)
            found.append(f"{name} {version(dist)}")
        except Exception:  # a package without metadata still imports
            found.append(name)
    return found, missing


class Stages:
    """Runs stages against one deadline; every stage gives rows ``(stage, result, detail)``."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s
        self.rows: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, fn: Callable[[float], list[tuple[str, str]]], min_s: float) -> None:
        left = self.left()
        if left < min_s:
            self.rows.append({"stage": name, "result": "skipped",
                              "detail": f"budget spent ({left:.0f} s left, needs {min_s:.0f} s)",
                              "seconds": 0.0})
            return
        start = time.perf_counter()
        try:
            results = fn(left)
        except BaseException as exc:  # noqa: BLE001 - a stage's failure must not stop the next
            if isinstance(exc, KeyboardInterrupt):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            results = [("FAILED", f"{type(exc).__name__}: {first}"[:300])]
        seconds = time.perf_counter() - start
        for i, (result, detail) in enumerate(results):
            self.rows.append({"stage": name if i == 0 else "", "result": result, "detail": detail,
                              "seconds": seconds if i == 0 else 0.0})

    def table(self) -> str:
        lines = ["| stage | result | detail | s |", "|---|---|---|--:|"]
        for r in self.rows:
            secs = f"{r['seconds']:.0f}" if r["seconds"] else ""
            lines.append(f"| {r['stage']} | {r['result']} | {r['detail']} | {secs} |")
        return "\n".join(lines)


def stage_tests(args: argparse.Namespace) -> Callable[[float], list[tuple[str, str]]]:
    def run(left: float) -> list[tuple[str, str]]:
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               "--no-header", str(REPO / "tests")]
        if args.smoke:
            cmd.append("--collect-only")  # on a CPU: that the gpu tests exist and import
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              timeout=max(10.0, min(left - 5, args.tests_s)))
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
        counts = re.findall(r"(\d+) (passed|failed|skipped|xfailed|errors?)", tail)
        ok = proc.returncode == 0
        failed = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("FAILED ")]
        detail = tail if args.smoke else (", ".join(f"{n} {what}" for n, what in counts) or tail)
        rows = [("ok" if ok else "FAILED", detail)]
        rows += [("", f"failed: {f}"[:200]) for f in failed[:5]]
        return rows
    return run


def stage_throughput(args: argparse.Namespace) -> Callable[[float], list[tuple[str, str]]]:
    def run(left: float) -> list[tuple[str, str]]:
        import pretrain_throughput

        argv = ["--device", args.device, "--lightly", "--data-root", args.data_root,
                "--cache-dir", args.cache_dir]
        if args.smoke:
            argv += ["--dataset", "random", "--limit", "256", "--encoder", "small_cnn",
                     "--batch", "32", "--steps", "2", "--warmup", "1", "--workers", "1"]
        else:
            argv += ["--dataset", "cifar10", "--encoder", "resnet18", "--batch", "512",
                     "--steps", "100", "--warmup", "20"]
        r = pretrain_throughput.main(argv)
        rows = [("(a) model only", f"{r['a_model_only']:.0f} pairs/s"),
                ("(b) device pipeline", f"{r['b_gpu_pipeline']:.0f} pairs/s"),
                ("(c) CPU workers", f"{r['c_cpu_pipeline']:.0f} pairs/s")]
        if "d_lightly_pipeline" in r:
            rows.append(("(d) lightly", f"{r['d_lightly_pipeline']:.0f} pairs/s"))
        ratios = f"b/a {r['b_over_a']:.2f} (target >= 0.85), b/c {r['b_over_c']:.2f} (>= 4)"
        if "b_over_d" in r:
            ratios += f", b/d {r['b_over_d']:.2f}"
        else:
            ratios += ", b/d: lightly not importable"
        rows.append(("ratios", ratios))
        return rows
    return run


def stage_linear(args: argparse.Namespace) -> Callable[[float], list[tuple[str, str]]]:
    def run(left: float) -> list[tuple[str, str]]:
        import linear_probe

        argv = ["--device", args.device, "--data-root", args.data_root, "--cache-dir",
                args.cache_dir]
        if args.smoke:
            argv += ["--dataset", "digits", "--grid", "1e-4:1e2:5"]
        else:
            argv += ["--dataset", "cifar10", "--encoder", "resnet18", "--grid", args.linear_grid]
        r = linear_probe.main(argv)
        ours, sk = r["ours"], r["sklearn"]
        gap = ours["top1"] - sk["top1"]
        return [
            ("ours", f"{ours['seconds']:.1f} s on {r['device']}, top1 {ours['top1']:.2f}, "
                     f"wd {ours['wd']:.3g} ({r['train']} x {r['dim']}, {r['grid']} penalties)"),
            ("scikit-learn", f"{sk['seconds']:.1f} s on {r['hardware']}, top1 {sk['top1']:.2f}, "
                             f"wd {sk['wd']:.3g}"),
            ("ratio", f"sklearn/ours {r['ratio']:.1f}x (target >= 10 on a GPU); top-1 ours - "
                      f"sklearn {gap:+.2f} ({'agree' if abs(gap) <= 0.5 else 'DISAGREE'}, "
                      f"tolerance 0.5); penalties "
                      f"{'equal' if ours['wd'] == sk['wd'] else 'DIFFER'}"),
        ]
    return run


def stage_tta(args: argparse.Namespace) -> Callable[[float], list[tuple[str, str]]]:
    def run(left: float) -> list[tuple[str, str]]:
        import time_to_accuracy

        reserve = 60.0 if not args.smoke else 5.0  # feature extraction and k-NN after training
        budget = args.tta_s or max(1.0, left - reserve)
        argv = ["--device", args.device, "--data-root", args.data_root, "--cache-dir",
                args.cache_dir, "--budget-s", f"{budget:.0f}"]
        if args.smoke:
            argv += ["--dataset", "digits", "--encoder", "small_cnn", "--batch", "64"]
        else:
            argv += ["--dataset", "cifar10", "--encoder", "resnet18", "--batch", "512"]
        r = time_to_accuracy.main(argv)
        target = "" if args.smoke else f" (target >= 85 within 480 s: " \
            f"{'met' if r['knn_top1'] >= 85 and budget <= 480 else 'not met'})"
        return [("k-NN top-1", f"{r['knn_top1']:.2f} after {r['epochs']:.1f} epochs in "
                               f"{r['train_s']:.0f} s of a {budget:.0f} s budget{target}")]
    return run


def header(args: argparse.Namespace, argv: list[str]) -> list[str]:
    import torch

    dev = "cpu"
    if torch.cuda.is_available() and args.device != "cpu":
        dev = f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    found, missing = packages()
    return [f"command: python bench/gpu_check.py {' '.join(argv)}",
            f"device: {dev}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}; Python {platform.python_version()}",
            f"packages: {', '.join(found)}",
            f"missing: {', '.join(missing) or 'none'}"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="wall-clock budget of all stages (default 540; 120 with --smoke)")
    p.add_argument("--profile", choices=["all", "tta"], default="all")
    p.add_argument("--tta-s", type=float, default=0.0, help="stage 4's training budget "
                   "(default: what is left; 480 with --profile tta; 5 with --smoke)")
    p.add_argument("--tests-s", type=float, default=150.0, help="at most this long for stage 1")
    p.add_argument("--linear-grid", default="1e-6:1e5:23",
                   help="stage 3's penalty grid lo:hi:num for both solvers (every other value "
                        "of the probe's 45; scikit-learn's sequential fits must fit the budget)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default="", help="cifar10.tar.xz ('' = ../shared/data)")
    p.add_argument("--cache-dir", default=str(REPO / ".cache" / "simclr-transfer"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on digits: seconds, on a CPU")
    p.add_argument("--json", default="", help="also write the header and rows to this file")
    args = p.parse_args(argv)
    budget = args.budget_s or (120.0 if args.smoke else 540.0 if args.profile == "all" else 540.0)
    if not args.tta_s:
        args.tta_s = 5.0 if args.smoke else 480.0 if args.profile == "tta" else 0.0
    lines = header(args, argv)
    print("\n".join(lines), flush=True)
    stages = Stages(budget)
    small = 1.0 if args.smoke else None
    if args.profile == "all":
        stages.run("1 pytest -m gpu", stage_tests(args), small or 20)
        stages.run("2 throughput", stage_throughput(args), small or 30)
        stages.run("3 linear probe", stage_linear(args), small or 30)
    stages.run("4 time to accuracy", stage_tta(args), small or 60)
    table = stages.table()
    print("\n" + table, flush=True)
    out = {"header": lines, "rows": stages.rows, "budget_s": budget}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
