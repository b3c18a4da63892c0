"""Every probe on a CUDA device agrees with the same probe on the CPU (deselected by default)."""

from __future__ import annotations

import json

import pytest
import torch

from transfer.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ARGS = {
    "linear": ["--wd-grid", "1e-2:1e2:5"],
    "knn": ["--k", "10,200"],
    "retrieval": ["--mode", "within,class-disjoint"],
    "quality": ["--samples", "256"],
    "fewshot": ["--episodes", "100"],
}


def run_json(argv, capsys):
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("probe", list(ARGS))
def test_gpu_matches_cpu(probe, digits_run, tmp_path, capsys):
    common = [probe, digits_run, "--tap", "all", "--json", *ARGS[probe]]
    cpu = run_json(common + ["--device", "cpu", "--cache-dir", tmp_path / "cpu"], capsys)
    gpu = run_json(common + ["--device", "cuda", "--cache-dir", tmp_path / "gpu"], capsys)
    assert set(cpu) == set(gpu)
    for key, value in cpu.items():
        if key.endswith(("/wd", "_ci95", "/val_score", "/queries")):
            continue
        tol = 0.02 * abs(value) + 1e-3 if "quality/" in key else 1.0  # points, for accuracies
        assert gpu[key] == pytest.approx(value, abs=tol), key


def test_linear_solver_runs_on_gpu():
    """The device path of the solver on a CIFAR-sized random problem (no timing asserted)."""
    from probes.linear import linear_probe

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(50000, 512, device="cuda", generator=g)
    y = torch.randint(0, 10, (50000,), device="cuda", generator=g)
    res = linear_probe((x[:40000], y[:40000]), (x[40000:], y[40000:]), (x[:1000], y[:1000]),
                       10, [1e-2, 1.0, 100.0])
    assert 0.0 <= res.metrics["top1"] <= 100.0
