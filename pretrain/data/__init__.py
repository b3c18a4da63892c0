"""Datasets by name: :mod:`pretrain.data.images` (the image container, the registry, digits,
cifar10, imagefolder) and :mod:`pretrain.data.benchmark` (Kornblith et al.'s 12 transfer
datasets). Importing this package registers them all."""

from pretrain.data import benchmark as benchmark  # registers the transfer datasets
from pretrain.data.holdout import stratified_holdout
from pretrain.data.images import (
    ARCHIVE_SUFFIXES,
    DATASETS,
    DIGITS_SIZE,
    HEADLINE_METRICS,
    IMAGE_EXTENSIONS,
    DatasetInfo,
    ImageDataset,
    Loader,
    MissingSplitError,
    TransformedDataset,
    dataset_fingerprint,
    extract_archive,
    file_identity,
    file_stats,
    find_shared_archive,
    load_dataset,
    load_rgb,
    scan_image_folder,
    shared_data_dirs,
)

__all__ = [
    "ARCHIVE_SUFFIXES", "DATASETS", "DIGITS_SIZE", "HEADLINE_METRICS", "IMAGE_EXTENSIONS",
    "DatasetInfo", "ImageDataset", "Loader", "MissingSplitError", "TransformedDataset",
    "dataset_fingerprint", "extract_archive", "file_identity", "file_stats",
    "find_shared_archive", "load_dataset", "load_rgb", "scan_image_folder", "shared_data_dirs",
    "stratified_holdout",
]
