"""Data loading for genattn: event-log readers, a synthetic generator, and
per-user sequence datasets with leave-one-out splits.

Deliberately torch-free (numpy/pandas only) so that data preparation and the
inference runtime can import it without a deep-learning stack.
"""

from __future__ import annotations

from .dataset import (SequenceDataset, Split, build_dataset, item_popularity, leave_one_out, pad_ages, pad_left,
                      training_ages, training_windows)
from .readers import DataError, Interactions, ItemGenres, load_ml100k, locate_ml100k, read_interactions
from .fetch import data_root, fetch_dataset, load_ml1m, locate_ml1m
from .synthetic import synthetic_interactions
from .sources import load_source

__all__ = [
    "DataError",
    "Interactions",
    "ItemGenres",
    "read_interactions",
    "locate_ml100k",
    "load_ml100k",
    "locate_ml1m",
    "load_ml1m",
    "fetch_dataset",
    "data_root",
    "synthetic_interactions",
    "SequenceDataset",
    "build_dataset",
    "Split",
    "leave_one_out",
    "pad_left",
    "pad_ages",
    "training_windows",
    "training_ages",
    "item_popularity",
    "load_source",
]
