"""``simclr-transfer suite X.yaml [--executor sequential|debug|local|slurm] [--parallel N]
[--status] [--retry-failed] [SLURM options]``: check the suite, run (or submit) its unfinished
cells, print its tables.

``sequential`` (the default) runs the cells one after another in this process
(:func:`transfer.suite.run_suite`); the others run every cell as a submitit job
(:mod:`transfer.suite_driver`). ``--status`` prints the state of every cell and runs nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from pretrain.errors import UserError
from transfer.suite import (
    SuiteReport,
    check_suite,
    entry,
    load_suite,
    print_tables,
    run_suite,
    smoke_suite,
)
from transfer.suite_driver import (
    ExecutorOptions,
    check_executor_options,
    grid_status,
    plan_lines,
    run_local,
    status_lines,
    submit_slurm,
)
from transfer.suite_jobs import EXECUTORS, Resources, import_submitit


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite YAML, e.g. configs/suites/quickstart.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="suite overrides, e.g. seeds=[0,1,2] output_dir=/tmp/runs")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether they are done")
    p.add_argument("--smoke", action="store_true",
                   help="the same suite at CPU scale (its smoke: section): a few hundred images, "
                        "one epoch, one seed, in <name>-smoke")
    p.add_argument("--status", action="store_true",
                   help="print every cell's state (done, running, waiting, failed, todo, absent) "
                        "with job ids and logs; runs and submits nothing")
    p.add_argument("--executor", choices=EXECUTORS, default="sequential",
                   help="sequential: one cell after another in this process (default); local: "
                        "each cell a submitit job on this machine, --parallel at once (one GPU "
                        "each); debug: submitit's in-process executor; slurm: every cell a SLURM "
                        "job, evaluations after their pretraining")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="--executor local: cells running at once")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="CPU threads of torch per cell (default: torch's for sequential, the "
                        "cores divided by --parallel for local); CPU results depend on it in "
                        "the last digits, so compare executors at equal --threads")
    p.add_argument("--retry-failed", action="store_true",
                   help="submit failed cells again (otherwise they are reported with their log)")
    p.add_argument("--no-wait", action="store_true",
                   help="--executor slurm: return after submitting (rerun, or --status, later)")
    slurm = p.add_argument_group("SLURM (--executor slurm; more #SBATCH lines: the suite's slurm: key)")
    slurm.add_argument("--gpus-per-node", type=int, default=0,
                       help="GPUs of a pretraining job per node (one task each); evaluations take 1")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes of a pretraining job")
    slurm.add_argument("--partition", default="")
    slurm.add_argument("--account", default="")
    slurm.add_argument("--cpus-per-task", type=int, default=0)
    p.add_argument("--timeout", type=int, default=Resources().timeout_min, metavar="MIN",
                   help="job time limit in minutes (SLURM --time; local jobs are signalled at "
                        "it): a pretraining job is then requeued and resumes from its checkpoint")


def executor_options(args: argparse.Namespace, extra: dict[str, Any]) -> ExecutorOptions:
    resources = Resources(timeout_min=args.timeout, gpus_per_node=args.gpus_per_node,
                          nodes=args.nodes, cpus_per_task=args.cpus_per_task,
                          partition=args.partition, account=args.account, extra=extra)
    return ExecutorOptions(kind=args.executor, parallel=args.parallel, threads=args.threads,
                           retry_failed=args.retry_failed, wait=not args.no_wait,
                           resources=resources)


def run_suite_tool(args: argparse.Namespace) -> dict[str, Any]:
    """``simclr-transfer suite``: check the suite, run the unfinished cells, then print its tables."""
    with entry(f"suite {args.suite}"):
        suite = load_suite(args.suite, args.overrides)
        if args.smoke:
            suite = smoke_suite(suite)
        options = executor_options(args, suite.slurm)
        check_executor_options(options)
        cells = check_suite(suite)
    if args.status:
        for line in status_lines(grid_status(suite, cells)):
            print(line)
        return {}
    if args.dry_run:
        for line in plan_lines(grid_status(suite, cells)):
            print(line)
        return {}
    report: SuiteReport
    if options.kind == "sequential":
        if options.threads:
            torch.set_num_threads(options.threads)
        report = run_suite(suite, cells=cells)
    else:
        import_submitit()  # one line if it is missing, before anything runs
        report = (submit_slurm(suite, cells, options) if options.kind == "slurm"
                  else run_local(suite, cells, options))
    verb = "submitted" if options.kind == "slurm" else "pretrained"
    print(
        f"suite {suite.name}: {len(report.pretrained)} runs {verb}, "
        f"{len(report.evaluated)} evaluations, {len(report.skipped)} cells already done, "
        + (f"{len(report.absent)} cells of absent datasets skipped, " if report.absent else "")
        + (f"{len(report.failed)} failed, " if report.failed else "")
        + f"{report.seconds:.0f} s" + (f" ({options.kind} executor)" if options.kind !=
                                        "sequential" else "")
    )
    if report.failed:
        try:
            print_tables(suite)
        except UserError as exc:  # the failed cells' records are missing
            print(f"tables: {exc}")
    elif options.kind != "slurm" or options.wait:
        print_tables(suite)
    if report.failed:
        raise UserError(f"{len(report.failed)} cells failed (listed above with their logs); "
                        "rerun with --retry-failed to submit them again")
    return {"pretrained": report.pretrained, "evaluated": report.evaluated,
            "skipped": report.skipped, "absent": report.absent, "seconds": report.seconds}
