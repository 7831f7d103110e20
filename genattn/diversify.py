"""The usual ways to diversify a trained model's recommendations at serving time —
the baselines a generative prior's own knobs are measured against (the accuracy–
diversity frontier, `benchmarks/frontier.py`).

Each re-ranker maps a batch of scores (B, N + 1), seen items already at -inf, to new
scores whose order is the served ranking, so the evaluation's ranking metrics apply
unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

Rerank = Callable[[Tensor], Tensor]


def gumbel_topk(temperature: float, seed: int = 0) -> Rerank:
    """Sample a ranking from softmax(scores / T) without replacement (Gumbel top-k,
    Kool et al. 2019): scores / T + Gumbel noise, sorted. T -> 0 is the plain ranking."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    gen = torch.Generator().manual_seed(seed)

    def rerank(scores: Tensor) -> Tensor:
        u = torch.rand(scores.shape, generator=gen).clamp_(1e-12, 1.0)
        return scores / temperature - torch.log(-torch.log(u))

    return rerank


def mmr(item_emb: Tensor, lam: float, k: int = 20, candidates: int = 100) -> Rerank:
    """Maximal marginal relevance (Carbonell & Goldstein 1998) over item embeddings:
    greedily pick argmax lam * relevance - (1 - lam) * max cosine to the items already
    picked, among the top `candidates`. Relevance is the score min-max scaled within
    the candidates. The picked k come first, the rest keep their order below them."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    unit = nn.functional.normalize(item_emb.detach().float(), dim=-1)

    def rerank(scores: Tensor) -> Tensor:
        B, C = scores.shape[0], min(candidates, scores.shape[1])
        n_pick = min(k, C)
        top_s, top_i = scores.topk(C, dim=1)  # (B, C)
        finite = torch.isfinite(top_s)  # seen items (-inf) can reach the candidates in small catalogs
        lo = top_s.masked_fill(~finite, float("inf")).amin(dim=1, keepdim=True)
        hi = top_s[:, :1]
        rel = ((top_s - lo) / (hi - lo).clamp_min(1e-9)).masked_fill(~finite, 0.0)
        e = unit[top_i]  # (B, C, D)
        sim = e @ e.transpose(1, 2)  # (B, C, C)
        picked = torch.zeros(B, C, dtype=torch.bool)
        max_sim = torch.zeros(B, C)
        order = []
        for _ in range(n_pick):
            gain = lam * rel - (1 - lam) * max_sim
            gain = gain.masked_fill(picked | ~finite, float("-inf"))
            j = gain.argmax(dim=1)  # (B,)
            order.append(j)
            picked[torch.arange(B), j] = True
            max_sim = torch.maximum(max_sim, sim[torch.arange(B), j])
        # Picked items go just above the row's best score, in pick order; the rest keep
        # their scores (and order) below them. Offsets stay small so float32 resolves them.
        chosen = top_i.gather(1, torch.stack(order, dim=1))  # (B, n_pick)
        rank_value = hi + torch.arange(n_pick, 0, -1, dtype=scores.dtype).expand(B, n_pick)
        keep = torch.isfinite(scores.gather(1, chosen))
        out = scores.clone()
        out.scatter_(1, chosen, torch.where(keep, rank_value, scores.gather(1, chosen)))
        return out

    return rerank


@contextlib.contextmanager
def mc_dropout(model: nn.Module, p: float, seed: int | None = None) -> Iterator[None]:
    """Monte Carlo dropout (Gal & Ghahramani 2016): dropout with rate p stays on while
    scoring; every module's rate and mode are restored afterwards. With `seed`, the
    dropout masks come from that seed (the global random state is restored on exit)."""
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    saved = [(m.p, m.training) for m in drops]
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        try:
            for m in drops:
                m.p = p
                m.train()
            yield
        finally:
            for m, (rate, mode) in zip(drops, saved):
                m.p = rate
                m.train(mode)
