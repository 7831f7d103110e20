"""Synthetic event logs drawn from a known sequential process.

The process is built so that the next item is largely predictable from the
previous one (a sparse item->item transition table) while popularity alone
predicts it poorly; tests and demos use it to check that a sequential model
actually learns order, not just frequency.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .readers import Interactions, ItemGenres

logger = logging.getLogger(__name__)

__all__ = ["synthetic_interactions"]

# Fixed successor preferences, strongest first, so each item has one clearly
# most likely successor (what the tests recover from the data).
_SUCCESSOR_PROBS = np.array([0.6, 0.3, 0.1])
_ZIPF_EXPONENT = 1.0
_MAX_REDRAWS = 8  # vectorised redraws before the exact (slow, rare) fallback
_START_TIME = 1_600_000_000.0  # Unix seconds, only to look like real data
_CHUNK_CELLS = 1 << 22  # history cells compared at once in the no-repeat check (a 4 MB bool temporary)


def synthetic_interactions(
    n_users: int = 1000,
    n_items: int = 500,
    n_topics: int = 10,
    seq_len: tuple[int, int] = (20, 60),
    drift: float = 0.1,
    transition_strength: float = 0.7,
    seed: int = 0,
) -> Interactions:
    """Generate ``n_users`` sequences with lengths uniform in ``seq_len`` (inclusive).

    Items ``1..n_items`` are split evenly into topics. Each user holds a current
    topic that switches to a uniformly random topic with probability ``drift``
    per step. When it does not switch, the next item follows the previous
    item's transition table (a few preferred successors in the same topic) with
    probability ``transition_strength``; otherwise it is a Zipf-popularity draw
    from the current topic. Items never repeat within a user. Deterministic for
    a given ``seed``. Memory grows with ``n_users * seq_len[1]`` and ``n_items``,
    never their product: 250,000 users x 1,000,000 items (10M events) takes
    well under 1 GB.
    """
    lo, hi = (int(v) for v in seq_len)
    if n_users < 1 or not 2 <= n_items < 2**31:
        raise ValueError(f"need n_users >= 1 and 2 <= n_items < 2**31, got {n_users}, {n_items}")
    if not 1 <= n_topics <= n_items // 2:
        raise ValueError(f"n_topics must be in [1, n_items // 2] so every topic has 2+ items, got {n_topics}")
    if not 1 <= lo <= hi <= n_items:
        raise ValueError(f"seq_len must satisfy 1 <= min <= max <= n_items (no repeats), got {seq_len}")
    if not (0.0 <= drift <= 1.0 and 0.0 <= transition_strength <= 1.0):
        raise ValueError(f"drift and transition_strength must be probabilities, got {drift}, {transition_strength}")

    rng = np.random.default_rng(seed)
    started = time.perf_counter()

    # Items sorted by topic so each topic is a contiguous block [start, end).
    topic_of = np.sort(rng.permutation(np.arange(n_items) % n_topics))
    block_start = np.searchsorted(topic_of, np.arange(n_topics), side="left")
    block_end = np.searchsorted(topic_of, np.arange(n_topics), side="right")
    block_size = block_end - block_start
    # Shuffle which item (raw id) sits where, so ids carry no topic information.
    raw_id = rng.permutation(n_items).astype(np.int64) + 1

    # Zipf popularity within each topic: a random rank order inside each block
    # (sorting random keys offset by the topic shuffles every block at once).
    order = np.argsort(topic_of + rng.random(n_items), kind="stable")
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items) - block_start[topic_of[order]] + 1
    popularity = 1.0 / rank.astype(np.float64) ** _ZIPF_EXPONENT
    # Offsetting each block's CDF by its topic index lets one searchsorted
    # sample "a popular item of topic k" for every user at once.
    cum = np.cumsum(popularity)
    before = np.r_[0.0, cum[block_end[:-1] - 1]]  # mass of all earlier blocks
    total = cum[block_end - 1] - before
    cdf = topic_of + (cum - before[topic_of]) / total[topic_of]
    cdf[block_end - 1] = np.arange(n_topics) + 1.0

    def draw_popular(topics: np.ndarray) -> np.ndarray:
        needles = topics + rng.random(len(topics))
        # Sorted needles search about twice as fast over a large CDF (nearby hits stay in cache).
        order = np.argsort(needles)
        idx = np.empty(len(needles), dtype=np.int64)
        idx[order] = np.searchsorted(cdf, needles[order], side="right")
        # Guard against topic + r rounding up to topic + 1.
        return np.minimum(idx, block_end[topics] - 1)

    successors, succ_probs = _successor_table(rng, topic_of, block_start, block_size)
    n_succ = successors.shape[1]

    lengths = rng.integers(lo, hi + 1, size=n_users)
    # Item indices fit int32 (n_items < 2**31 checked above): half the memory of int64.
    seqs = np.zeros((n_users, hi), dtype=np.int32)
    topic = rng.integers(n_topics, size=n_users)
    item = draw_popular(topic)
    for t in range(hi):
        if t > 0:
            switched = rng.random(n_users) < drift
            topic = np.where(switched, rng.integers(n_topics, size=n_users), topic)
            follow = ~switched & (rng.random(n_users) < transition_strength)
            pick = rng.choice(n_succ, size=n_users, p=succ_probs)
            item = np.where(follow, successors[item, pick], draw_popular(topic))
        # No repeats: redraw collisions with the user's own earlier items from
        # the topic's popularity.
        clash = np.flatnonzero(_repeats(seqs, t, item))
        for _ in range(_MAX_REDRAWS):
            if len(clash) == 0:
                break
            item[clash] = draw_popular(topic[clash])
            clash = clash[_repeats(seqs, t, item[clash], clash)]
        for u in clash:  # topic nearly exhausted for this user: exact draw
            item[u] = _draw_unseen(rng, seqs[u, :t], popularity, block_start, block_end, int(topic[u]))
        seqs[:, t] = item

    keep = np.arange(hi)[None, :] < lengths[:, None]
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    items = raw_id[seqs[keep]]
    del seqs
    # Positive gaps make timestamps strictly increasing within each user.
    gaps = 1.0 + np.round(rng.exponential(3600.0, size=(n_users, hi)))
    gaps[:, 0] = np.round(rng.uniform(0.0, 30 * 86400.0, size=n_users))
    np.cumsum(gaps, axis=1, out=gaps)
    gaps += _START_TIME
    timestamps = gaps[keep]
    del gaps

    # One genre per item, its topic, as a (n_items, n_topics) matrix.
    genre_matrix = np.zeros((n_items, n_topics), dtype=bool)
    genre_matrix[np.arange(n_items), topic_of] = True
    genres = ItemGenres(ids=raw_id, matrix=genre_matrix, names=[f"topic{k}" for k in range(n_topics)])
    source = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_topics={n_topics}, seq_len=({lo}, {hi}), "
        f"drift={drift}, transition_strength={transition_strength}, seed={seed})"
    )
    logger.info("generated %d events in %.1f s: %s", len(items), time.perf_counter() - started, source)
    return Interactions(users=users, items=items, timestamps=timestamps, item_genres=genres, source=source)


def _successor_table(
    rng: np.random.Generator, topic_of: np.ndarray, block_start: np.ndarray, block_size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(n_items, n_succ) distinct same-topic successors per item, never the item itself, and their probabilities.

    Each successor is an offset 1..size-1 from the item within its topic block,
    taken modulo the block size, so it can never land on the item; rows whose
    offsets repeat are redrawn (rare unless a topic has few items). This draws
    an ordered sample without replacement from the rest of the block, for all
    items at once.
    """
    n_succ = min(len(_SUCCESSOR_PROBS), int(block_size.min()) - 1)
    succ_probs = _SUCCESSOR_PROBS[:n_succ] / _SUCCESSOR_PROBS[:n_succ].sum()
    size = block_size[topic_of][:, None]  # (n_items, 1)
    offsets = rng.integers(1, size, size=(len(topic_of), n_succ))
    dup = _rows_with_repeats(offsets)
    while len(dup):
        offsets[dup] = rng.integers(1, size[dup], size=(len(dup), n_succ))
        dup = dup[_rows_with_repeats(offsets[dup])]
    start = block_start[topic_of][:, None]
    position = np.arange(len(topic_of))[:, None] - start
    return start + (position + offsets) % size, succ_probs


def _rows_with_repeats(a: np.ndarray) -> np.ndarray:
    """Indices of rows of a (n, k) array, k small, holding some value twice."""
    ordered = np.sort(a, axis=1)
    return np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))


def _repeats(seqs: np.ndarray, t: int, item: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Whether item[j] is already among seqs[rows[j], :t] (rows None: all users, in order).

    Works through users in chunks so the temporaries stay small whatever the user count.
    """
    out = np.zeros(len(item), dtype=bool)
    if t == 0:
        return out
    step = max(1, _CHUNK_CELLS // t)
    for lo in range(0, len(item), step):
        part = slice(lo, lo + step)
        history = seqs[lo : lo + step, :t] if rows is None else seqs[rows[part], :t]
        out[part] = (history == item[part, None]).any(axis=1)
    return out


def _draw_unseen(
    rng: np.random.Generator,
    own: np.ndarray,
    popularity: np.ndarray,
    block_start: np.ndarray,
    block_end: np.ndarray,
    topic: int,
) -> int:
    """Popularity draw among the items the user has not had yet, preferring the current topic."""
    candidates = np.setdiff1d(np.arange(block_start[topic], block_end[topic]), own)
    if len(candidates) == 0:
        candidates = np.setdiff1d(np.arange(len(popularity)), own)  # non-empty: seq_len max <= n_items
    weights = popularity[candidates]
    return int(rng.choice(candidates, p=weights / weights.sum()))
