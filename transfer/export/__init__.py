"""Backbone weights out of a run: torchvision, timm and detectron2 formats (see ``command``)."""
