"""Experiment suites: pretraining variants x seeds x evaluators, run cell by cell, resumable.

A suite YAML (``configs/suites/*.yaml``) names a base pretraining config, the variants to
compare (each a list of ``section.key=value`` overrides: heads, depths, anything), the seeds,
and the evaluators to run on every checkpoint, each written as its ``simclr-transfer`` command
line (``knn --tap h,z``, ``detection --config configs/detection/bccd_r18_fpn.yaml``).
A line holding ``{dataset}`` (``linear --tap h --dataset {dataset}``) runs once per entry of
the suite's ``datasets`` (the transfer benchmark's names, ``NAME:PATH``, ``imagefolder:PATH``);
a dataset with no local copy is skipped with one line saying where it was looked for
(:func:`absence`), and its cells are reported as absent, not failed.

Cells and how a rerun finds them finished:

* pretraining cell (variant, seed): its run directory holds ``summary.json``; a run killed
  midway has a checkpoint and is resumed (``--resume`` semantics, bit-identical result);
* evaluation cell (variant, seed, evaluator line): the run's ``results.jsonl`` holds a record
  tagged ``cell=<variant>/s<seed>/<evaluator line>`` (every evaluator writes its ``--tag``s
  into its records). A killed suite therefore reruns only what has no record.

All records land in the runs' ``results.jsonl`` files under the suite's ``output_dir``; the
closing tables are built from them by :func:`transfer.tables.make_table`, exactly as
``simclr-transfer table <output_dir>`` would. Evaluator lines run in this process through the
evaluator registry (:func:`probes.registry.run_command`).

Before anything runs, :func:`check_suite` checks every entry as far as it can without data:
each variant's pretraining config builds (known dataset, a model that builds, a known
optimizer), each evaluator line names an evaluator and parses with its parser (detection's
config overrides load), and each table names fields records can have. A bad entry is one
:class:`~pretrain.errors.ConfigError` naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.data.benchmark import BENCHMARK, locate
from pretrain.errors import ConfigError, DataError, UserError
from pretrain.jsonl import read_jsonl
from pretrain.model import build_model
from pretrain.run import (
    CHECKPOINT_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    check_names,
    run_dir_for,
    run_name,
)
from pretrain.train import train
from probes.options import from_args
from probes.registry import EVALUATORS, parse_command, run_command
from transfer.detection.config import DetectionConfig, resolve_preset
from transfer.finetune.command import FinetuneOptions
from transfer.finetune.command import check_options as check_finetune_options
from transfer.records import Filter, load_records
from transfer.table_formats import render
from transfer.tables import TableRequest, check_request, make_table, parse_compare, parse_fields
from transfer.verdict import check_axes, head_verdict

DATASET_SLOT = "{dataset}"


@dataclass
class TableSpec:
    """One table printed when the suite ends (arguments of ``simclr-transfer table``)."""

    rows: str = "head"
    cols: str = "tap"
    metric: str = ""
    filter: list[str] = field(default_factory=list)
    compare: str = ""
    mean_column: bool = False  # append each row's mean over the columns (``--mean-col``)
    verdict: bool = False  # after the table, the paper's head orderings (transfer.verdict)


@dataclass
class SmokeSpec:
    """What ``--smoke`` changes to run the suite at CPU scale in seconds (the test suite runs
    every suite that has one, so its configuration cannot rot)."""

    overrides: list[str] = field(default_factory=list)  # after the suite's own overrides
    seeds: list[int] = field(default_factory=lambda: [0])
    evaluator_args: str = ""  # appended to every evaluator line, e.g. "--limit 200 --device cpu"


@dataclass
class SuiteConfig:
    name: str = "suite"
    base_config: str = "configs/quickstart.yaml"  # pretraining config every variant starts from
    output_dir: str = "runs/suites"  # run directories go to <output_dir>/<name>/<variant>_s<seed>
    overrides: list[str] = field(default_factory=list)  # applied to every variant
    variants: dict[str, list[str]] = field(default_factory=dict)  # name -> overrides
    seeds: list[int] = field(default_factory=lambda: [0])
    evaluators: list[str] = field(default_factory=list)  # simclr-transfer command lines
    # datasets a line with "{dataset}" runs on, one cell each (names, NAME:PATH or
    # imagefolder:PATH); absent ones are skipped with one line each
    datasets: list[str] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    # more #SBATCH lines for --executor slurm (submitit's additional_parameters), e.g.
    # {constraint: volta32gb, qos: high, mem: 64G}
    slurm: dict[str, Any] = field(default_factory=dict)
    smoke: SmokeSpec | None = None  # --smoke: the same grid at CPU scale

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError("a suite needs at least one entry under variants")
        if not self.seeds:
            raise ConfigError("a suite needs at least one seed")
        for line in self.evaluators:
            if not line.strip():
                raise ConfigError("empty evaluator line in the suite")
        per_dataset = [line for line in self.evaluators if DATASET_SLOT in line]
        if per_dataset and not self.datasets:
            raise ConfigError(f"evaluator line {per_dataset[0]!r} has {DATASET_SLOT} but the "
                              "suite lists no datasets")
        if self.datasets and not per_dataset:
            raise ConfigError(f"the suite lists datasets but no evaluator line has {DATASET_SLOT}"
                              " (e.g. 'linear --tap h --dataset {dataset}')")

    def evaluator_lines(self) -> list[tuple[str, str]]:
        """(line, dataset) for every evaluator line, a line with ``{dataset}`` once per dataset
        (filled in; ``dataset`` "" for the others), in order."""
        return [(line.replace(DATASET_SLOT, d), d) for line in self.evaluators
                for d in (self.datasets if DATASET_SLOT in line else [""])]


@dataclass(frozen=True)
class PretrainCell:
    variant: str
    seed: int
    config: PretrainConfig

    @property
    def run_dir(self) -> Path:
        return run_dir_for(self.config)

    @property
    def key(self) -> str:
        """``<variant>/s<seed>/pretrain``: the cell's name in reports, job logs and ``--status``."""
        return f"{self.variant}/s{self.seed}/pretrain"

    def done(self) -> bool:
        return (self.run_dir / SUMMARY_FILE).is_file()


@dataclass(frozen=True)
class EvalCell:
    pretrain: PretrainCell
    line: str  # the evaluator's command line, e.g. "knn --tap h,z"
    dataset: str = ""  # the suite dataset filled into a {dataset} line, "" for the others

    @property
    def key(self) -> str:
        """``<variant>/s<seed>/<line>``: also the ``cell`` tag of the records it writes."""
        return f"{self.pretrain.variant}/s{self.pretrain.seed}/{self.line}"

    def done(self) -> bool:
        return self.key in finished_cells(self.pretrain.run_dir)


Cell = PretrainCell | EvalCell


def suite_dir(suite: SuiteConfig) -> Path:
    """``<output_dir>/<name>``: the suite's runs, and its ``jobs/`` folder."""
    return Path(suite.output_dir) / suite.name


def eval_cells(suite: SuiteConfig, cell: PretrainCell) -> list[EvalCell]:
    """The evaluation cells of one pretraining cell, in the suite's order."""
    return [EvalCell(cell, line, dataset) for line, dataset in suite.evaluator_lines()]


def all_cells(suite: SuiteConfig, cells: list[PretrainCell]) -> list[Cell]:
    """Every cell of the grid: each pretraining cell followed by its evaluation cells."""
    out: list[Cell] = []
    for cell in cells:
        out += [cell, *eval_cells(suite, cell)]
    return out


def find_cell(suite: SuiteConfig, key: str) -> Cell:
    """The cell named ``key`` (:attr:`PretrainCell.key` or :attr:`EvalCell.key`)."""
    for cell in all_cells(suite, plan(suite)):
        if cell.key == key:
            return cell
    raise ConfigError(f"suite {suite.name} has no cell {key!r}")


def run_cell(suite: SuiteConfig, cell: Cell) -> None:
    """Run one cell in this process: pretrain (resuming a killed run from its checkpoint,
    bit-identical to an uninterrupted run) or one evaluator line, tagged with the suite and
    the cell (what makes it count as done). Every executor runs cells through this."""
    if isinstance(cell, PretrainCell):
        train(cell.config, resume=(cell.run_dir / CHECKPOINT_FILE).is_file())
    else:
        run_evaluator_line(cell.line, cell.pretrain.run_dir,
                           {"suite": suite.name, "cell": cell.key})


def load_suite(path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    return load_config(SuiteConfig, path, overrides)


def smoke_suite(suite: SuiteConfig) -> SuiteConfig:
    """The suite as ``--smoke`` runs it: its ``smoke`` overrides after its own, the smoke seeds,
    the smoke arguments after every evaluator line, and the name ``<name>-smoke`` (so that its
    runs never mix with the real ones)."""
    if suite.smoke is None:
        raise ConfigError(f"suite {suite.name} has no smoke: section, so --smoke cannot run it")
    s = suite.smoke
    lines = [f"{line} {s.evaluator_args}".strip() for line in suite.evaluators]
    return dataclasses.replace(suite, name=f"{suite.name}-smoke",
                               overrides=[*suite.overrides, *s.overrides], seeds=list(s.seeds),
                               evaluators=lines, smoke=None)


@contextmanager
def entry(where: str) -> Iterator[None]:
    """Re-raise a :class:`UserError` inside as one line naming the suite entry ``where``."""
    try:
        yield
    except UserError as exc:
        text = str(exc).strip()
        raise ConfigError(f"{where}: {text.splitlines()[0] if text else type(exc).__name__}") from None


def plan(suite: SuiteConfig) -> list[PretrainCell]:
    """Every pretraining cell of the grid, configs resolved (variants x seeds)."""
    root = Path(suite.output_dir) / suite.name
    cells = []
    for variant, variant_overrides in suite.variants.items():
        for seed in suite.seeds:
            with entry(f"variants.{variant}"):
                cfg = load_config(
                    PretrainConfig,
                    suite.base_config,
                    [
                        *suite.overrides,
                        *variant_overrides,
                        f"train.seed={seed}",
                        f"train.run_dir={root}",
                        f"train.name={variant}_s{seed}",
                    ],
                )
            cells.append(PretrainCell(variant, seed, cfg))
    return cells


def line_data_location(line: str, run_dir: Path, cache_dir: str) -> tuple[str, str]:
    """(``--data-root``, ``--cache-dir``) of an evaluator line, the cache defaulting to the
    pretraining config's ``cache_dir`` (where the probes' session looks too)."""
    _, args = parse_command(evaluator_argv(line, run_dir, {}))
    return getattr(args, "data_root", "") or "", getattr(args, "cache_dir", "") or cache_dir


def absence(dataset: str, root: str, cache_dir: str) -> str:
    """Why ``dataset`` (a suite's dataset entry) cannot be read here, "" when it can: a
    benchmark name with no local copy under ``root`` or the search roots
    (:func:`pretrain.data.benchmark.locate`, no image read), or an ``imagefolder:`` path that
    does not exist."""
    key, _, arg = dataset.partition(":")
    try:
        if key in BENCHMARK:
            locate(key, arg, root, cache_dir)
        elif key == "imagefolder" and not Path(arg).expanduser().exists():
            return f"{arg} does not exist"
    except DataError as exc:
        return str(exc).splitlines()[0]
    return ""


class DatasetAvailability:
    """Whether the dataset of a suite's per-dataset line can be read, judged once per
    (dataset, ``--data-root``, ``--cache-dir``) (:func:`absence`)."""

    def __init__(self) -> None:
        self._why: dict[tuple[str, str, str], str] = {}

    def check(self, line: str, dataset: str, cell: PretrainCell) -> tuple[str, bool]:
        """(why ``dataset`` of ``line`` is absent, "" when present or the line has none;
        whether this call judged it first, so that its absence is reported once)."""
        if not dataset:
            return "", False
        root, cache = line_data_location(line, cell.run_dir, cell.config.data.cache_dir)
        key, first = (dataset, root, cache), (dataset, root, cache) not in self._why
        if first:
            self._why[key] = absence(dataset, root, cache)
        return self._why[key], first


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """What a pretraining config needs besides data: its registered names (the check
    ``simclr-pretrain`` makes, :func:`pretrain.run.check_names`), a model that builds (on
    the meta device: no memory, no weights) and a run name."""
    check_names(cfg)
    with torch.device("meta"):
        build_model(cfg.model)
    run_name(cfg)


def finished_cells(run_dir: Path) -> set[str]:
    """The evaluation cells whose records are already in ``run_dir/results.jsonl``."""
    done = set()
    for rec in read_jsonl(run_dir / RESULTS_FILE):
        cell = (rec.get("tags") or {}).get("cell")
        if cell:
            done.add(cell)
    return done


def evaluator_argv(line: str, run_dir: Path, tags: dict[str, str]) -> list[str]:
    """``simclr-transfer`` arguments for one evaluator line of a suite.

    The run directory replaces ``{run}`` where the line has it (needed when positional config
    overrides follow it, as in ``detection --config X {run} train.max_iter=100``); otherwise it
    goes right after the evaluator name. Tags go before everything else.
    """
    name, *rest = shlex.split(line)
    tag_args = [a for k, v in tags.items() for a in ("--tag", f"{k}={v}")]
    if "{run}" in rest:
        return [name, *tag_args, *[str(run_dir) if a == "{run}" else a for a in rest]]
    return [name, *tag_args, str(run_dir), *rest]


def run_evaluator_line(line: str, run_dir: Path, tags: dict[str, str]) -> dict[str, Any]:
    """Run ``simclr-transfer <line>`` on ``run_dir`` in this process; exceptions propagate."""
    return run_command(evaluator_argv(line, run_dir, tags))


def check_detection_arguments(args: argparse.Namespace) -> None:
    """``detection``'s config file or preset exists and its overrides load."""
    load_config(DetectionConfig, resolve_preset(args.config), args.overrides)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")


def check_finetune_arguments(args: argparse.Namespace) -> None:
    """``finetune``'s numeric options are in range (:func:`transfer.finetune.command.check_options`)."""
    check_finetune_options(from_args(FinetuneOptions, args))


# Checks of an evaluator's parsed arguments that need no data, by evaluator name.
ARGUMENT_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "detection": check_detection_arguments,
    "finetune": check_finetune_arguments,
}


def check_evaluator_line(line: str, run_dir: Path) -> None:
    """``line`` names a registered evaluator, parses with its parser, and passes its
    :data:`ARGUMENT_CHECKS`; ``run_dir`` stands in for the run (it is not read)."""
    try:
        name = shlex.split(line)[0]
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"cannot split the line: {exc}") from None
    if name not in EVALUATORS:
        raise ConfigError(f"unknown evaluator {name!r}; valid: {', '.join(EVALUATORS.names())}")
    _, args = parse_command(evaluator_argv(line, run_dir, {"suite": "check", "cell": "check"}))
    if name in ARGUMENT_CHECKS:
        ARGUMENT_CHECKS[name](args)


def check_suite(suite: SuiteConfig) -> list[PretrainCell]:
    """Check every entry of ``suite`` that can be checked without data; returns its cells.

    Raises:
        ConfigError: one line naming the bad entry (``variants.mlp-2``, ``evaluators[1] 'lnear
            --tap h'``, ``tables[0]``) and what is wrong with it.
    """
    cells = plan(suite)
    for cell in cells:
        with entry(f"variants.{cell.variant}"):
            check_pretrain_config(cell.config)
    for i, line in enumerate(suite.evaluators):
        with entry(f"evaluators[{i}] {line!r}"):
            for d in suite.datasets if DATASET_SLOT in line else [""]:
                check_evaluator_line(line.replace(DATASET_SLOT, d), cells[0].run_dir)
    for i, spec in enumerate(suite.tables):
        with entry(f"tables[{i}]"):
            request = table_request(suite, spec)
            check_request(request)
            if spec.verdict:
                check_axes(tuple(request.rows), tuple(request.cols))
    return cells


@dataclass
class SuiteReport:
    pretrained: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # cells of datasets with no local copy
    failed: list[str] = field(default_factory=list)  # status lines of cells that failed
    seconds: float = 0.0


def run_suite(suite: SuiteConfig, progress: bool = True,
              cells: list[PretrainCell] | None = None) -> SuiteReport:
    """Run every unfinished cell of ``suite``; returns what ran and what was skipped.

    ``cells`` are :func:`check_suite`'s result when the caller has checked already; otherwise
    the suite is checked here first."""
    cells = check_suite(suite) if cells is None else cells
    report = SuiteReport()
    availability = DatasetAvailability()
    start = time.perf_counter()
    for cell in cells:
        label = f"{cell.variant}/s{cell.seed}"
        if cell.done():
            report.skipped.append(cell.key)
        else:
            if progress:
                print(f"[suite {suite.name}] pretrain {label}")
            run_cell(suite, cell)
            report.pretrained.append(label)
        done = finished_cells(cell.run_dir)
        for ev in eval_cells(suite, cell):
            if ev.key in done:
                report.skipped.append(ev.key)
                continue
            why, first = availability.check(ev.line, ev.dataset, cell)
            if why:
                if first and progress:
                    print(f"[suite {suite.name}] skipping {ev.dataset}: {why}")
                report.absent.append(ev.key)
                continue
            if progress:
                print(f"[suite {suite.name}] {ev.key}")
            run_cell(suite, ev)
            report.evaluated.append(ev.key)
    report.seconds = time.perf_counter() - start
    return report


def table_request(suite: SuiteConfig, spec: TableSpec) -> TableRequest:
    """One of the suite's tables as the table builder's request (records of this suite only)."""
    return TableRequest(
        rows=parse_fields(spec.rows),
        cols=parse_fields(spec.cols),
        metrics=[spec.metric] if spec.metric else [],
        filters=[Filter.parse(f"tags.suite={suite.name}"), *map(Filter.parse, spec.filter)],
        compare=[parse_compare(spec.compare)] if spec.compare else [],
        mean_column=spec.mean_column,
    )


def print_tables(suite: SuiteConfig) -> None:
    """Print every table of the suite (Markdown), built from its records only."""
    if not suite.tables:
        return
    records = load_records([suite_dir(suite)])
    for spec in suite.tables:
        request = table_request(suite, spec)
        if request.compare and len(suite.seeds) < 2:  # a paired comparison needs 2 seeds
            request = dataclasses.replace(request, compare=[])
            print(f"\n(compare {spec.compare} left out: the suite has 1 seed, pairing needs 2)")
        table, comparisons = make_table(records, request)
        print()
        print(render(table, "md", comparisons), end="")
        if spec.verdict:
            print()
            print(head_verdict(table, spec.metric or "the metric"))
