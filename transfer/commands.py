"""Registers the built-in transfer commands with the evaluator registry.

``detection`` (an evaluator: Faster R-CNN fine-tuning, writes records) and ``export`` (a tool:
backbone weights in torchvision, timm or detectron2 format).
"""

from __future__ import annotations

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
