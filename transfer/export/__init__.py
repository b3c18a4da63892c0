"""Backbone weights out of a run: torchvision, timm and detectron2 formats (see ``command``;
the detectron2 key map lives with detection, in ``transfer.detection.detectron2_weights``)."""
