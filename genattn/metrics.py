"""Ranking and diversity metrics on numpy arrays (torch-free, so exported models
scored through ONNX Runtime use the very same code).

Conventions: full ranking over the whole catalog; `rank` is the 0-based number of
catalog items scored strictly above the target (history items already masked out
by the caller); top-K lists hold internal item indices.
"""
from __future__ import annotations

import numpy as np

KS = (10, 20)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among all items: count of items scored strictly higher."""
    t = scores[np.arange(len(targets)), targets][:, None]
    return (scores > t).sum(axis=1)


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k of one target at 0-based `ranks` (0 outside the top k)."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR@K, NDCG@K, MRR@K averaged over users (one target each)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_per_user(ranks, k).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return out


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    return float(len(np.unique(topk[topk > 0])) / n_items)


def intra_list_diversity(topk: np.ndarray, *, genres: np.ndarray | None = None,
                         embeddings: np.ndarray | None = None) -> float:
    """Mean pairwise distance inside each list, averaged over lists.

    genres (n_items + 1, G) bool -> Jaccard distance between genre sets;
    otherwise embeddings (n_items + 1, D) -> cosine distance.
    """
    n = topk.shape[1]
    if n < 2:
        return 0.0
    off = ~np.eye(n, dtype=bool)
    if genres is not None:
        g = genres[topk].astype(np.float32)  # (U, K, G)
        inter = np.einsum("ukg,ujg->ukj", g, g)
        size = g.sum(-1)
        union = size[:, :, None] + size[:, None, :] - inter
        dist = np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), 0.0)
    elif embeddings is not None:
        e = embeddings[topk].astype(np.float32)
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        dist = 1.0 - np.einsum("ukd,ujd->ukj", e, e)
    else:
        raise ValueError("intra_list_diversity needs genres or embeddings")
    return float(dist[:, off].mean())


def novelty(topk: np.ndarray, popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information -log2(p(i)) of recommended items, p(i) = users who had i / users."""
    p = np.clip(popularity[topk], 1, max(n_users, 1)) / max(n_users, 1)  # p <= 1 even for event counts
    return float((-np.log2(p)).mean())


def category_coverage(topk: np.ndarray, genres: np.ndarray) -> float:
    """cc@k: the share of all categories present in a user's list, averaged over users
    (genres (n_items + 1, G) bool; an item may have several)."""
    present = genres[topk].any(axis=1)  # (U, G)
    return float(present.sum(1).mean() / max(genres.shape[1], 1))


def diversity_metrics(topk10: np.ndarray, n_items: int, popularity: np.ndarray, n_users: int, *,
                      genres: np.ndarray | None = None, embeddings: np.ndarray | None = None) -> dict[str, float]:
    out = {
        "coverage@10": coverage(topk10, n_items),
        "ild@10": intra_list_diversity(topk10, genres=genres, embeddings=embeddings),
        "novelty@10": novelty(topk10, popularity, n_users),
    }
    if genres is not None:  # category coverage needs categories
        out["cc@10"] = category_coverage(topk10, genres)
    return out


def mean_std(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-metric mean and (sample) std over runs."""
    keys = runs[0].keys()
    out = {}
    for k in keys:
        v = np.array([r[k] for r in runs], dtype=float)
        out[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out
