"""Registers every built-in ``simclr-transfer`` command with the evaluator registry.

Importing this module is what makes the registry complete: the frozen-feature probes
(:mod:`probes.commands`), ``finetune`` (classification fine-tuning from any tap with label
fractions, :mod:`transfer.finetune`), ``detection`` (an evaluator: Faster R-CNN fine-tuning,
writes records),
``export`` (a tool: backbone weights in torchvision, timm or detectron2 format), the record tools
``table``, ``plot`` and ``report`` (:mod:`transfer.tools`) and ``suite`` (:mod:`transfer.suite_command`).
"""

from __future__ import annotations

import probes.commands  # noqa: F401  (registers linear, knn, retrieval, quality, fewshot)
from probes.commands import probe_evaluator
from probes.registry import Evaluator, register_evaluator
from transfer.detection import command as detection
from transfer.export import command as export
from transfer.finetune.command import FinetuneOptions, finetune
from transfer.suite_command import add_suite_arguments, run_suite_tool
from transfer.tools import TOOLS

BUILTINS = (
    Evaluator(
        name="detection",
        help="fine-tune Faster R-CNN (FPN or C4) from a backbone; COCO and VOC AP",
        add_arguments=detection.add_arguments,
        run=detection.run,
        kind="evaluator",
    ),
    probe_evaluator("finetune", "fine-tune the encoder (+ head layers up to --from-tap) with "
                    "1%/10%/all labels; SimCLR, SimCLRv2 and transfer protocols",
                    FinetuneOptions, finetune),
    Evaluator(
        name="export",
        help="write backbone weights as torchvision, timm or detectron2 files",
        add_arguments=export.add_arguments,
        run=export.run,
        kind="tool",
    ),
    Evaluator("suite", "run an experiment grid (variants x seeds x evaluators), resumable, and "
              "print its tables", add_suite_arguments, run_suite_tool, kind="tool"),
    *TOOLS,
)
for _command in BUILTINS:
    register_evaluator(_command)
