"""From an event log to per-user item sequences, splits and padded batches.

Internal item indices run 1..n_items with 0 reserved for padding, matching
what the models' embedding tables expect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from .readers import DataError, Interactions, ItemGenres

logger = logging.getLogger(__name__)

__all__ = [
    "SequenceDataset",
    "build_dataset",
    "Split",
    "leave_one_out",
    "pad_left",
    "pad_ages",
    "training_windows",
    "training_ages",
    "item_popularity",
]

_MIN_LOO_EVENTS = 3  # leave-one-out needs one train, one valid and one test item


@dataclass
class SequenceDataset:
    """Per-user item sequences in time order, with raw <-> internal id maps."""

    item_ids: list[Any]  # raw id of internal item index i is item_ids[i - 1]
    user_ids: list[Any]  # raw user id of sequences[u]
    sequences: list[np.ndarray]  # int64 internal item indices, oldest first
    # float64 event timestamps (the source's unit, seconds for MovieLens), parallel to
    # `sequences`; None when the dataset was built without them.
    times: list[np.ndarray] | None = None
    item_genres: np.ndarray | None = None  # (n_items + 1, n_genres) bool, row 0 all False
    genre_names: list[str] | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    source: str = ""
    # Wall seconds per loading stage ("read": generating or reading the events,
    # "build": build_dataset), for logs and benchmarks.
    load_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_index(self) -> dict[Any, int]:
        """Raw item id -> internal index (1-based)."""
        return {raw: i for i, raw in enumerate(self.item_ids, start=1)}

    def to_json_mapping(self) -> dict[str, Any]:
        """The item vocabulary in a JSON-serialisable form (numpy scalars -> Python)."""
        return {"item_ids": [_to_native(x) for x in self.item_ids], "n_items": self.n_items}


@dataclass
class Split:
    """Leave-one-out split: last item tests, second-to-last validates, the rest trains."""

    train: list[np.ndarray]
    valid_inputs: list[np.ndarray]
    valid_targets: np.ndarray
    test_inputs: list[np.ndarray]
    test_targets: np.ndarray
    # The inputs' timestamps, parallel to them (None when the dataset has none).
    train_times: list[np.ndarray] | None = None
    test_times: list[np.ndarray] | None = None

    @property
    def valid_times(self) -> list[np.ndarray] | None:
        return self.train_times  # validation's inputs are the training sequences


def build_dataset(inter: Interactions, min_user_events: int = _MIN_LOO_EVENTS, k_core: int = 0) -> SequenceDataset:
    """Group events into per-user sequences ordered by time.

    Ties in timestamp keep the original row order. With ``k_core > 0`` users and
    items with fewer than ``k_core`` events are removed repeatedly until none
    remain; then users with fewer than ``min_user_events`` events are dropped.
    Items are numbered 1..N in sorted raw-id order, users likewise 0..U-1.
    """
    started = time.perf_counter()
    users, items = np.asarray(inter.users), np.asarray(inter.items)
    timestamps = np.asarray(inter.timestamps, dtype=np.float64)
    src = inter.source or "interactions"
    if not (users.ndim == items.ndim == timestamps.ndim == 1 and len(users) == len(items) == len(timestamps)):
        raise DataError(
            f"{src}: users, items and timestamps must be 1-D and equally long, got shapes "
            f"{users.shape}, {items.shape}, {timestamps.shape}"
        )
    if len(users) == 0:
        raise DataError(f"{src}: no events")
    if not np.all(np.isfinite(timestamps)):
        raise DataError(f"{src}: {int((~np.isfinite(timestamps)).sum())} timestamps are NaN or infinite")

    dropped = dict(inter.dropped)
    user_vocab, user_code = _encode(users, "user", src)
    item_vocab, item_code = _encode(items, "item", src)
    keep = np.ones(len(users), dtype=bool)

    if k_core > 0:
        keep = _k_core(user_code, item_code, k_core, dropped)

    counts = np.bincount(user_code[keep], minlength=int(user_code.max()) + 1)
    short = (counts > 0) & (counts < min_user_events)
    if short.any():
        n_short = int(short.sum())
        short_rows = keep & short[user_code]
        dropped["users_below_min_events"] = n_short
        dropped["events_of_short_users"] = int(short_rows.sum())
        logger.warning(
            "%s: dropped %d users with fewer than %d events (%d events)",
            src,
            n_short,
            min_user_events,
            int(short_rows.sum()),
        )
        keep &= ~short_rows
    if not keep.any():
        raise DataError(
            f"{src}: no users left after filtering (min_user_events={min_user_events}, k_core={k_core}); "
            f"drops: {dropped}"
        )

    if not keep.all():
        # Re-encode over the surviving events so that indices are dense and items
        # seen only by dropped users are not in the vocabulary.
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
        user_vocab, user_code = _encode(users, "user", src)
        item_vocab, item_code = _encode(items, "item", src)
    del users, items, keep
    if _in_user_time_order(user_code, timestamps):
        sorted_items = item_code.astype(np.int64) + 1  # e.g. generated logs: no sort needed
        sorted_times = timestamps
    else:
        # lexsort is stable: equal (user, timestamp) keep their original row order.
        order = np.lexsort((timestamps, user_code))
        sorted_items = item_code[order].astype(np.int64) + 1
        sorted_times = timestamps[order]
        del order
    # Views into one buffer: one array object per user, none per event.
    ends = np.cumsum(np.bincount(user_code, minlength=len(user_vocab))).tolist()
    bounds = list(zip([0, *ends[:-1]], ends))
    sequences = [sorted_items[a:b] for a, b in bounds]
    times = [sorted_times[a:b] for a, b in bounds]

    genre_matrix, genre_names = _genre_matrix(item_vocab, inter.item_genres)
    ds = SequenceDataset(
        item_ids=item_vocab.tolist(),
        user_ids=user_vocab.tolist(),
        sequences=sequences,
        times=times,
        item_genres=genre_matrix,
        genre_names=genre_names,
        dropped=dropped,
        source=inter.source,
        load_seconds={"build": time.perf_counter() - started},
    )
    logger.info(
        "%s: %d users, %d items, %d events, built in %.1f s",
        src, ds.n_users, ds.n_items, ds.n_events, ds.load_seconds["build"],
    )
    return ds


def leave_one_out(ds: SequenceDataset) -> Split:
    """Hold out each user's last item for test and second-to-last for validation."""
    short = [i for i, s in enumerate(ds.sequences) if len(s) < _MIN_LOO_EVENTS]
    if short:
        raise DataError(
            f"{ds.source or 'dataset'}: leave-one-out needs >= {_MIN_LOO_EVENTS} events per user; "
            f"{len(short)} users have fewer (e.g. user {ds.user_ids[short[0]]!r})"
        )
    train = [s[:-2] for s in ds.sequences]
    return Split(
        train=train,
        valid_inputs=train,
        valid_targets=np.array([s[-2] for s in ds.sequences], dtype=np.int64),
        test_inputs=[s[:-1] for s in ds.sequences],
        test_targets=np.array([s[-1] for s in ds.sequences], dtype=np.int64),
        train_times=None if ds.times is None else [t[:-2] for t in ds.times],
        test_times=None if ds.times is None else [t[:-1] for t in ds.times],
    )


def pad_left(seqs: list[np.ndarray], max_len: int, dtype: npt.DTypeLike = np.int64) -> np.ndarray:
    """(N, max_len) ``dtype``; keeps each sequence's newest ``max_len`` items, left-padded with 0.

    A narrower ``dtype`` (int32) writes straight into the smaller array, with no int64 copy.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.zeros((len(seqs), max_len), dtype=dtype)
    if not seqs:
        return out
    full = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    kept = np.minimum(full, max_len)
    if kept.sum() == 0:
        return out
    # Slice by start index, not s[-k:], which would return everything for k=0.
    flat = np.concatenate([np.asarray(s[n - k :]) for s, n, k in zip(seqs, full.tolist(), kept.tolist())])
    rows = np.repeat(np.arange(len(seqs)), kept)
    first = np.cumsum(kept) - kept  # offset of each row's items in `flat`
    cols = np.arange(len(flat)) - np.repeat(first, kept) + np.repeat(max_len - kept, kept)
    out[rows, cols] = flat
    return out


def pad_ages(times: list[np.ndarray], max_len: int) -> np.ndarray:
    """(N, max_len) float32: the newest ``max_len`` events' ages, each event's time before the
    row's newest event (0 for the newest and for padding), laid out as ``pad_left`` lays out
    the items. Relative to the row, so float32 keeps one-second steps over months of gaps."""
    return pad_left([t[-1] - t[-max_len:] if len(t) else t for t in times], max_len, np.float32)


def _windows(n: int, max_len: int):
    """(lo, end) of each training window over n next-item pairs, newest first."""
    for end in range(n, 0, -max_len):
        yield max(0, end - max_len), end


def training_windows(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each training sequence into non-overlapping windows of max_len next-item pairs,
    newest first, so long histories contribute all their items (left-padded).
    int32: half the memory of int64 for the largest arrays training holds."""
    inputs, targets = [], []
    for s in seqs:
        x, y = s[:-1], s[1:]
        for lo, end in _windows(len(x), max_len):
            inputs.append(x[lo:end])
            targets.append(y[lo:end])
    return pad_left(inputs, max_len, np.int32), pad_left(targets, max_len, np.int32)


def training_ages(times: list[np.ndarray], max_len: int) -> np.ndarray:
    """The ages (`pad_ages`) of the inputs of each window `training_windows` cuts from the
    sequences these timestamps belong to, row for row."""
    return pad_ages([t[:-1][lo:end] for t in times for lo, end in _windows(len(t) - 1, max_len)], max_len)


def item_popularity(seqs: list[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items + 1,) int64 event counts per internal item; index 0 (padding) is 0."""
    counts = np.zeros(n_items + 1, dtype=np.int64)
    nonempty = [s for s in seqs if len(s)]
    if not nonempty:
        return counts
    flat = np.concatenate(nonempty).astype(np.int64, copy=False)
    if flat.min() < 0 or flat.max() > n_items:
        raise ValueError(f"item indices must lie in [0, {n_items}], got [{flat.min()}, {flat.max()}]")
    counts += np.bincount(flat, minlength=n_items + 1)
    counts[0] = 0
    return counts


# --------------------------------------------------------------------------- #
def _encode(ids: np.ndarray, what: str, src: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and each row's position among them (what np.unique returns).

    Hashes first and sorts only the distinct ids: np.unique sorts every row,
    which takes seconds for a million string ids (ML-1M's movie titles).
    """
    codes, uniques = pd.factorize(np.asarray(ids).reshape(-1), use_na_sentinel=False)
    uniques = np.asarray(uniques)
    try:
        order = np.argsort(uniques, kind="stable")
    except TypeError as exc:  # e.g. an object array mixing int and str
        raise DataError(f"{src}: {what} ids mix incomparable types ({exc}); use all ints or all strings") from exc
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    return uniques[order], rank[codes]


def _in_user_time_order(user_code: np.ndarray, timestamps: np.ndarray) -> bool:
    """Whether rows already run user by user, oldest first (what the stable sort would give)."""
    same_user = user_code[1:] == user_code[:-1]
    return bool(np.all((user_code[1:] >= user_code[:-1]) & (~same_user | (timestamps[1:] >= timestamps[:-1]))))


def _k_core(user_code: np.ndarray, item_code: np.ndarray, k: int, dropped: dict[str, int]) -> np.ndarray:
    """Mask of events surviving the iterative k-core filter on users and items."""
    keep = np.ones(len(user_code), dtype=bool)
    n_users0 = len(np.unique(user_code))
    n_items0 = len(np.unique(item_code))
    while True:
        u_counts = np.bincount(user_code[keep], minlength=int(user_code.max()) + 1)
        i_counts = np.bincount(item_code[keep], minlength=int(item_code.max()) + 1)
        bad = keep & ((u_counts[user_code] < k) | (i_counts[item_code] < k))
        if not bad.any():
            break
        keep &= ~bad
    n_users_cut = n_users0 - len(np.unique(user_code[keep]))
    n_items_cut = n_items0 - len(np.unique(item_code[keep]))
    n_events_cut = int((~keep).sum())
    if n_events_cut:
        dropped["kcore_users"] = n_users_cut
        dropped["kcore_items"] = n_items_cut
        dropped["kcore_events"] = n_events_cut
        logger.warning(
            "%d-core filter dropped %d users, %d items, %d events", k, n_users_cut, n_items_cut, n_events_cut
        )
    return keep


def _genre_matrix(
    item_vocab: np.ndarray, item_genres: ItemGenres | dict[Any, list[str]] | None
) -> tuple[np.ndarray | None, list[str] | None]:
    """(n_items + 1, G) bool over internal indices, keeping only genres some item in the data has."""
    genres = ItemGenres.coerce(item_genres)
    if genres is None or not len(genres) or not genres.names:
        return None, None
    # Hash lookup of every vocabulary id among the genre table's ids; -1 = no genres.
    row = pd.Index(genres.ids).get_indexer(item_vocab)
    found = row >= 0
    matrix = np.zeros((len(item_vocab) + 1, len(genres.names)), dtype=bool)
    matrix[1:][found] = genres.matrix[row[found]]
    used = matrix.any(axis=0)
    if not used.any():
        return None, None
    names = np.asarray(genres.names, dtype=object)[used]
    order = np.argsort(names.astype(str), kind="stable")  # sorted names, whatever order the table had
    return np.ascontiguousarray(matrix[:, np.flatnonzero(used)[order]]), names[order].tolist()


def _to_native(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x
