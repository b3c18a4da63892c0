"""Registers the built-in transfer commands with the evaluator registry.

``detection`` (an evaluator: Faster R-CNN fine-tuning, writes records), ``export`` (a tool:
backbone weights in torchvision, timm or detectron2 format), and the record tools ``suite``,
``table``, ``plot`` and ``report`` (registered by importing :mod:`transfer.tools`).
"""

from __future__ import annotations

import transfer.tools  # noqa: F401  (registers suite, table, plot, report)
from probes.registry import Evaluator, register_evaluator
from transfer.detection import command as detection
from transfer.export import command as export

register_evaluator(Evaluator(
    name="detection",
    help="fine-tune Faster R-CNN (FPN or C4) from a backbone; COCO and VOC AP",
    add_arguments=detection.add_arguments,
    run=detection.run,
    kind="evaluator",
))
register_evaluator(Evaluator(
    name="export",
    help="write backbone weights as torchvision, timm or detectron2 files",
    add_arguments=export.add_arguments,
    run=export.run,
    kind="tool",
))
