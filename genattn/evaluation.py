"""Full-ranking evaluation of a trained model (torch).

History items (everything the user touched before the target) are masked out of
the ranking, in validation and test alike, and so is padding. Metrics come from
`genattn.metrics`, shared with the ONNX Runtime evaluation.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import diversify
from .data import Split, pad_left
from .distributed import World
from .metrics import KS, diversity_metrics, rank_metrics
from .models import SASRec, Sampling, default_sampling, make_noise, stochastic_sampling


SCORE_BUDGET = 1 << 26  # scores per evaluation batch (fp32: 256 MB)


@dataclass
class EvalSet:
    inputs: list[np.ndarray]   # model inputs (full history; the newest max_len are used)
    targets: np.ndarray        # (U,) internal item index
    seen: list[np.ndarray]     # items masked out of each ranking


def eval_sets(split: Split, max_users: int = 0, seed: int = 0) -> dict[str, EvalSet]:
    """Validation and test sets; `max_users` > 0 keeps a fixed random subset of users
    (the same for both), for catalogs where scoring every user each epoch is too slow."""
    sets = {
        "valid": EvalSet(split.valid_inputs, split.valid_targets, split.valid_inputs),
        "test": EvalSet(split.test_inputs, split.test_targets, split.test_inputs),
    }
    n = len(split.valid_targets)
    if not max_users or max_users >= n:
        return sets
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_users, replace=False))
    return {name: EvalSet([es.inputs[u] for u in keep], es.targets[keep], [es.seen[u] for u in keep])
            for name, es in sets.items()}


def mask_seen(scores: torch.Tensor, seen: list[np.ndarray]) -> None:
    """Set scores of each row's seen items to -inf, in place (one scatter for the batch)."""
    rows = np.repeat(np.arange(len(seen)), [len(s) for s in seen])
    cols = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    scores[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = float("-inf")


@torch.no_grad()
def evaluate(model: SASRec, data: EvalSet, *, popularity: np.ndarray, n_users: int,
             genres: np.ndarray | None = None, sampling: Sampling | None = None,
             seed: int | None = None, batch_size: int | None = None, device: str | torch.device = "cpu",
             noise_scale: float = 1.0, rerank: Callable[[torch.Tensor], torch.Tensor] | None = None,
             mc_dropout: float = 0.0, world: World | None = None) -> dict[str, float]:
    """HR/NDCG/MRR@{10,20}, coverage@10, ILD@10, novelty@10 over all users of `data`.

    A stochastic `sampling` draws its noise from a generator seeded with `seed`, scaled
    by `noise_scale` (the prior's sampling temperature). Serving-time diversification
    (genattn.diversify): `rerank` reorders the scores (seen items masked), `mc_dropout`
    keeps dropout on at that rate. With a data-parallel `world`, each rank scores every
    size-th user and the per-user ranks are gathered, so every rank returns the metrics
    of all users. The batch defaults to what keeps one batch's scores near 256 MB.
    """
    was_training = model.training
    model.eval()
    dropout = diversify.mc_dropout(model, mc_dropout) if mc_dropout > 0 else contextlib.nullcontext()
    L = model.cfg.max_len
    batch_size = batch_size or max(1, min(512, SCORE_BUDGET // (model.cfg.n_items + 1)))
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    n = len(data.targets)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    mine = np.arange(rank, n, size)
    ranks, tops = [np.zeros(0, dtype=np.int64)], [np.zeros((0, max(KS)), dtype=np.int64)]
    with dropout:
        for start in range(0, len(mine), batch_size):
            users = mine[start:start + batch_size]
            seq = torch.from_numpy(pad_left([data.inputs[u] for u in users], L)).to(device)
            noise = make_noise(model, sampling, len(seq), generator=gen, scale=noise_scale) if sampling else None
            scores = model.scores(seq, sampling, None if noise is None else noise.to(device)).float().cpu()
            mask_seen(scores, [data.seen[u] for u in users])
            if rerank is not None:
                scores = rerank(scores)
            tgt = torch.from_numpy(np.asarray(data.targets[users], dtype=np.int64))
            t_score = scores.gather(1, tgt[:, None])
            ranks.append((scores > t_score).sum(1).numpy())
            tops.append(scores.topk(max(KS), dim=1).indices.numpy())
    model.train(was_training)
    rank_all, top = np.concatenate(ranks), np.concatenate(tops)
    if size > 1:  # back to user order: rank r holds users r, r + size, ...
        parts = world.gather((rank_all, top))
        rank_all, top = np.zeros(n, dtype=np.int64), np.zeros((n, max(KS)), dtype=np.int64)
        for r, (rk, tp) in enumerate(parts):
            rank_all[r::size], top[r::size] = rk, tp
    out = rank_metrics(rank_all)
    emb = None if genres is not None else model.item_emb.weight.detach().float().cpu().numpy()
    out.update(diversity_metrics(top[:, :10], model.cfg.n_items, popularity, n_users,
                                 genres=genres, embeddings=emb))
    return out


def evaluate_checkpoint(path, *, split: str = "both", seeds: list[int] | None = None, steps: int | None = None,
                        eta: float | None = None, start: str | None = None, vae_mode: str | None = None,
                        samples: int | None = None, device: str = "cpu") -> dict:
    """Rebuild the checkpoint's data, then evaluate the deterministic sampling and,
    for generative kinds, each stochastic seed (mean ± std over seeds)."""
    from dataclasses import replace

    from .checkpoint import checkpoint_data, load_checkpoint
    from .data import leave_one_out
    from .metrics import mean_std

    ck = load_checkpoint(path, device=device)
    ds = checkpoint_data(ck)
    sets = eval_sets(leave_one_out(ds))
    names = ["valid", "test"] if split == "both" else [split]
    base = default_sampling(ck.run.model)
    if base is not None:
        over = {k: v for k, v in dict(n_steps=steps, eta=eta, start=start, mode=vae_mode, n_samples=samples).items()
                if v is not None}
        base = replace(base, **over)
    kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres, device=device)
    out: dict = {"checkpoint": str(path), "attention": ck.run.model.attention,
                 "sampling": None if base is None else base.__dict__}
    for name in names:
        det = evaluate(ck.model, sets[name], sampling=base, **kw)
        out[name] = {"deterministic" if (base is None or not base.draws(ck.run.model.attention)) else "seed0": det}
        if base is not None and seeds:
            stoch = stochastic_sampling(ck.run.model.attention, base)
            runs = [evaluate(ck.model, sets[name], sampling=stoch, seed=s, **kw) for s in seeds]
            out[name]["stochastic"] = {"sampling": stoch.__dict__, "seeds": seeds, **mean_std(runs)}
    return out
