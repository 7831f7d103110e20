"""Synthetic event logs drawn from a known sequential process.

The process is built so that the next item is largely predictable from the
previous one (a sparse item->item transition table) while popularity alone
predicts it poorly; tests and demos use it to check that a sequential model
actually learns order, not just frequency.
"""

from __future__ import annotations

import logging

import numpy as np

from .readers import Interactions

logger = logging.getLogger(__name__)

__all__ = ["synthetic_interactions"]

# Fixed successor preferences, strongest first, so each item has one clearly
# most likely successor (what the tests recover from the data).
_SUCCESSOR_PROBS = np.array([0.6, 0.3, 0.1])
_ZIPF_EXPONENT = 1.0
_MAX_REDRAWS = 8  # vectorised redraws before the exact (slow, rare) fallback
_START_TIME = 1_600_000_000.0  # Unix seconds, only to look like real data


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
    a given ``seed``.
    """
    lo, hi = (int(v) for v in seq_len)
    if n_users < 1 or n_items < 2:
        raise ValueError(f"need n_users >= 1 and n_items >= 2, got {n_users}, {n_items}")
    if not 1 <= n_topics <= n_items // 2:
        raise ValueError(f"n_topics must be in [1, n_items // 2] so every topic has 2+ items, got {n_topics}")
    if not 1 <= lo <= hi <= n_items:
        raise ValueError(f"seq_len must satisfy 1 <= min <= max <= n_items (no repeats), got {seq_len}")
    if not (0.0 <= drift <= 1.0 and 0.0 <= transition_strength <= 1.0):
        raise ValueError(f"drift and transition_strength must be probabilities, got {drift}, {transition_strength}")

    rng = np.random.default_rng(seed)

    # Items sorted by topic so each topic is a contiguous block [start, end).
    topic_of = np.sort(rng.permutation(np.arange(n_items) % n_topics))
    block_start = np.searchsorted(topic_of, np.arange(n_topics), side="left")
    block_end = np.searchsorted(topic_of, np.arange(n_topics), side="right")
    # Shuffle which item (raw id) sits where, so ids carry no topic information.
    raw_id = rng.permutation(n_items) + 1

    # Zipf popularity within each topic (random rank order inside the block).
    popularity = np.empty(n_items)
    for k in range(n_topics):
        size = block_end[k] - block_start[k]
        popularity[block_start[k] : block_end[k]] = 1.0 / rng.permutation(np.arange(1, size + 1)) ** _ZIPF_EXPONENT
    # Offsetting each block's CDF by its topic index lets one searchsorted
    # sample "a popular item of topic k" for every user at once.
    cdf = np.empty(n_items)
    for k in range(n_topics):
        block = popularity[block_start[k] : block_end[k]]
        cdf[block_start[k] : block_end[k]] = k + np.cumsum(block) / block.sum()
        cdf[block_end[k] - 1] = k + 1.0

    def draw_popular(topics: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(cdf, topics + rng.random(len(topics)), side="right")
        # Guard against topic + r rounding up to topic + 1.
        return np.minimum(idx, block_end[topics] - 1)

    # Sparse transition table: a few distinct same-topic successors per item.
    n_succ = min(len(_SUCCESSOR_PROBS), int((block_end - block_start).min()) - 1)
    succ_probs = _SUCCESSOR_PROBS[:n_succ] / _SUCCESSOR_PROBS[:n_succ].sum()
    successors = np.empty((n_items, n_succ), dtype=np.int64)
    for i in range(n_items):
        k = topic_of[i]
        others = np.r_[block_start[k] : i, i + 1 : block_end[k]]
        successors[i] = rng.choice(others, size=n_succ, replace=False)

    lengths = rng.integers(lo, hi + 1, size=n_users)
    seqs = np.zeros((n_users, hi), dtype=np.int64)
    seen = np.zeros((n_users, n_items), dtype=bool)
    rows = np.arange(n_users)
    topic = rng.integers(n_topics, size=n_users)
    item = draw_popular(topic)
    for t in range(hi):
        if t > 0:
            switched = rng.random(n_users) < drift
            topic = np.where(switched, rng.integers(n_topics, size=n_users), topic)
            follow = ~switched & (rng.random(n_users) < transition_strength)
            pick = rng.choice(n_succ, size=n_users, p=succ_probs)
            item = np.where(follow, successors[item, pick], draw_popular(topic))
        # No repeats: redraw collisions from the topic's popularity.
        clash = np.flatnonzero(seen[rows, item])
        for _ in range(_MAX_REDRAWS):
            if len(clash) == 0:
                break
            item[clash] = draw_popular(topic[clash])
            clash = clash[seen[clash, item[clash]]]
        for u in clash:  # topic nearly exhausted for this user: exact draw
            item[u] = _draw_unseen(rng, seen[u], popularity, topic_of, int(topic[u]))
        seen[rows, item] = True
        seqs[:, t] = item

    keep = np.arange(hi)[None, :] < lengths[:, None]
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    items = raw_id[seqs[keep]].astype(np.int64)
    # Positive gaps make timestamps strictly increasing within each user.
    gaps = 1.0 + np.round(rng.exponential(3600.0, size=(n_users, hi)))
    gaps[:, 0] = np.round(rng.uniform(0.0, 30 * 86400.0, size=n_users))
    timestamps = (_START_TIME + np.cumsum(gaps, axis=1))[keep]

    genres = {int(raw_id[i]): [f"topic{int(topic_of[i])}"] for i in range(n_items)}
    source = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_topics={n_topics}, seq_len=({lo}, {hi}), "
        f"drift={drift}, transition_strength={transition_strength}, seed={seed})"
    )
    logger.debug("generated %d events: %s", len(items), source)
    return Interactions(users=users, items=items, timestamps=timestamps, item_genres=genres, source=source)


def _draw_unseen(
    rng: np.random.Generator, seen: np.ndarray, popularity: np.ndarray, topic_of: np.ndarray, topic: int
) -> int:
    """Popularity draw among the user's unseen items, preferring the current topic."""
    candidates = np.flatnonzero(~seen & (topic_of == topic))
    if len(candidates) == 0:
        candidates = np.flatnonzero(~seen)  # non-empty: seq_len max <= n_items
    weights = popularity[candidates]
    return int(rng.choice(candidates, p=weights / weights.sum()))
