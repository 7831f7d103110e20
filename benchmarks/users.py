"""How much of a difference between two models is the choice of users: per-user top-10 ranks
and a paired bootstrap over users.

A results entry's seed spread says how much training noise moves a metric; it says nothing about
the users the test split happens to hold. ML-100K has 943 of them, one target each, so two models
evaluated on the same users can differ by chance about as much as the kinds differ. Each seed's
record therefore keeps its deterministic ranks inside the top 10 (`encode`: one character per
user, "0"-"9" the rank, "-" a miss), enough for HR@10 and NDCG@10 per user, and `paired_ci`
resamples the users with replacement to bound the mean difference of two entries.
"""
from __future__ import annotations

import numpy as np

from genattn.metrics import ndcg_per_user

K = 10
MISS = "-"


def encode(ranks: np.ndarray) -> str:
    """Per-user target ranks (0 = first) -> one character per user: the rank below K, else "-"."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or (ranks < 0).any():
        raise ValueError("ranks must be one non-negative rank per user")
    return "".join(str(int(r)) if r < K else MISS for r in ranks)


def ndcg(code: str) -> np.ndarray:
    """Per-user NDCG@10 from `encode`'s string (a miss scores 0)."""
    if set(code) - set("0123456789" + MISS):
        raise ValueError(f"not a top-{K} rank string: {sorted(set(code) - set('0123456789' + MISS))[:5]}")
    return ndcg_per_user(np.array([K if c == MISS else int(c) for c in code]), K)


def paired_ci(a: list[str], b: list[str], *, level: float = 0.95, resamples: int = 4000,
              seed: int = 0) -> dict[str, float]:
    """Mean over users of b − a in NDCG@10 and its percentile bootstrap interval over users.

    `a` and `b` hold one rank string per training seed, paired by position (the same seeds, the
    same users in the same order); each user's score is averaged over the seeds first, so the
    interval is about the users, the seeds' own spread being reported beside it."""
    if not a or len(a) != len(b):
        raise ValueError("paired_ci needs the same number (>= 1) of seeds on both sides")
    if len({len(c) for c in a + b}) != 1:
        raise ValueError("rank strings of different lengths: not the same users")
    diff = np.mean([ndcg(y) - ndcg(x) for x, y in zip(a, b)], axis=0)
    rng = np.random.default_rng(seed)
    users = len(diff)
    means = np.concatenate([diff[rng.integers(0, users, size=(min(500, resamples - i), users))].mean(1)
                            for i in range(0, resamples, 500)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "se": float(means.std()),
            "users": users, "seeds": len(a), "level": level, "resamples": resamples}
