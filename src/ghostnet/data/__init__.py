"""Data sets, transform presets and reproducible loaders for training and evaluation."""
from .check import DataReport, check_data, format_report
from .datasets import (ArrayDataset, CorruptImageError, ImageFolderDataset, SkippedSample, check_same_classes,
                       dataset_class_ids,
                       dataset_classes, load_rgb, open_split, read_class_names)
from .loader import (BadImageCounter, BadImageLimitError, Batch, ResumableSampler, SeededDataset, ShardSampler,
                     collate_skipping, make_loader, sample_seed, subset)
from .transforms import TransformConfig, eval_transform, train_transform

__all__ = ["ArrayDataset", "BadImageCounter", "BadImageLimitError", "Batch", "CorruptImageError", "DataReport",
           "ImageFolderDataset", "ResumableSampler", "SeededDataset", "ShardSampler", "SkippedSample",
           "TransformConfig", "check_data", "check_same_classes", "collate_skipping", "dataset_class_ids",
           "dataset_classes", "eval_transform", "format_report", "load_rgb", "make_loader", "open_split",
           "read_class_names", "sample_seed", "subset", "train_transform"]
