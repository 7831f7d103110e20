"""What S sampled attention maps give besides their mean: one list built from the
samples' own lists (multi-interest), and how much the samples agree (confidence).

Each sample's user state is a different reading of the history; its score vector
ranks the catalog its own way. Given per-sample scores (B, S, N + 1) with excluded
items already at -inf:

mean        the mean score vector's top-k (what averaging S samples always did)
interleave  round-robin over the samples' top-k lists — rank 1 of every sample, then
            rank 2, ... — duplicates dropped, first k kept: each reading contributes
vote        the union of the samples' top-k lists ranked by how many samples list an
            item, ties by mean score: consensus first, then the items only some
            samples found
confidence  mean pairwise overlap of the samples' top-k lists, in [0, 1]:
            (sum_i c_i^2 - S k) / (S (S - 1) k) with c_i the number of lists holding
            item i (sum_i c_i^2 counts ordered pairs of lists sharing an item)

Only tensor ops (topk, scatter, gather, comparisons): no loop over data, no random
op, so the same code traces into the serving graph.
"""
from __future__ import annotations

import torch
from torch import Tensor

AGGREGATES = ("mean", "interleave", "vote")


def per_sample_top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(B, S, N + 1) -> each sample's top-k items and scores, (B, S, k)."""
    vals, idx = scores.topk(k, dim=-1)
    return idx, vals


def list_counts(top: Tensor, n: int) -> Tensor:
    """(B, S, k) item lists -> (B, n) how many of the S lists hold each item."""
    B = top.shape[0]
    flat = top.reshape(B, -1)
    return torch.zeros(B, n, dtype=torch.float32, device=top.device).scatter_add_(
        1, flat, torch.ones(flat.shape, dtype=torch.float32, device=top.device))


def interleave(scores: Tensor, k: int, top: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Round-robin merge of the samples' top-k lists, duplicates removed -> (B, k) items and
    their mean scores (in list order, not sorted).

    Each item's first position in the rank-major order (rank 1 of every sample, then rank 2,
    ...) comes from one scatter-min over the catalog: O(kS + N) per user, where comparing
    every listed pair would be O((kS)^2). The k earliest first positions are the list; any
    prefix of it is the interleave of shorter lists (sample 1's own k items all appear by rank k).
    top: the samples' sorted lists of at least k items when already computed (one TopK serves
    every aggregate in the serving graph).
    """
    B, S, n = scores.shape
    top = per_sample_top(scores, k)[0] if top is None else top[..., :k]
    order = top.transpose(1, 2).reshape(B, k * S)               # rank-major: rank 1 of each sample, ...
    pos = torch.arange(k * S, device=scores.device).expand(B, -1)
    first = torch.full((B, n), k * S, dtype=torch.long, device=scores.device).scatter_reduce(
        1, order, pos, reduce="amin")                           # unlisted items keep k*S: never chosen
    items = (-first).topk(k, dim=1).indices                     # distinct first positions: no ties
    return items, scores.mean(1).gather(1, items)


def vote(scores: Tensor, k: int, depth: int | None = None, top: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The union of the samples' top-`depth` lists (depth defaults to k) ranked by how many
    list each item, ties by mean score -> (B, k) items and their mean scores. The serving
    graph fixes depth and outputs K items, so a shorter request reads a prefix of the
    same ranking."""
    depth = k if depth is None else depth
    top = per_sample_top(scores, depth)[0] if top is None else top[..., :depth]
    counts = list_counts(top, scores.shape[-1])
    mean = scores.mean(1)
    finite = torch.isfinite(mean)
    span = torch.where(finite, mean.abs(), torch.zeros_like(mean)).amax(1, keepdim=True) * 2 + 1
    key = torch.where(finite, counts * span + mean, mean)       # count first; mean inside one count
    items = key.topk(k, dim=1).indices
    return items, mean.gather(1, items)


def aggregate(scores: Tensor, k: int, how: str) -> tuple[Tensor, Tensor]:
    """(B, S, N + 1) per-sample scores -> (B, k) items and scores by `how` (AGGREGATES)."""
    if how == "mean":
        vals, items = scores.mean(1).topk(k, dim=1)
        return items, vals
    if how == "interleave":
        return interleave(scores, k)
    if how == "vote":
        return vote(scores, k)
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")


def confidence(scores: Tensor, k: int, top: Tensor | None = None) -> Tensor:
    """(B, S, N + 1) -> (B,) mean pairwise overlap of the samples' top-k lists in [0, 1]
    (1: every sample ranks the same k items first). Needs S >= 2."""
    S = scores.shape[1]
    if S < 2:
        raise ValueError("confidence needs at least 2 samples")
    top = per_sample_top(scores, k)[0] if top is None else top[..., :k]
    c = list_counts(top, scores.shape[-1])
    return ((c * c).sum(1) - S * k) / (S * (S - 1) * k)
