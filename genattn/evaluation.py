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
from .data import Split, pad_ages, pad_left
from .distributed import World
from .metrics import KS, diversity_metrics, rank_metrics
from .models import SASRec, Sampling, default_sampling, make_noise, stochastic_sampling


SCORE_BUDGET = 1 << 26  # scores per evaluation batch (fp32: 256 MB)


@dataclass
class EvalSet:
    inputs: list[np.ndarray]   # model inputs (full history; the newest max_len are used)
    targets: np.ndarray        # (U,) internal item index
    seen: list[np.ndarray]     # items masked out of each ranking
    times: list[np.ndarray] | None = None  # the inputs' timestamps (models with time gaps)

    def batch(self, users, model: SASRec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """These users' padded inputs (B, max_len) and, for a model with time gaps, their ages."""
        L = model.cfg.max_len
        seq = torch.from_numpy(pad_left([self.inputs[u] for u in users], L))
        if not model.cfg.time_buckets:
            return seq, None
        if self.times is None:
            raise ValueError("this model attends over time gaps, and the evaluation data has no timestamps")
        return seq, torch.from_numpy(pad_ages([self.times[u] for u in users], L))


def eval_sets(split: Split, max_users: int = 0, seed: int = 0) -> dict[str, EvalSet]:
    """Validation and test sets; `max_users` > 0 keeps a fixed random subset of users
    (the same for both), for catalogs where scoring every user each epoch is too slow."""
    sets = {
        "valid": EvalSet(split.valid_inputs, split.valid_targets, split.valid_inputs, split.valid_times),
        "test": EvalSet(split.test_inputs, split.test_targets, split.test_inputs, split.test_times),
    }
    n = len(split.valid_targets)
    if not max_users or max_users >= n:
        return sets
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_users, replace=False))
    return {name: EvalSet([es.inputs[u] for u in keep], es.targets[keep], [es.seen[u] for u in keep],
                          None if es.times is None else [es.times[u] for u in keep])
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
             mc_dropout: float = 0.0, mc_passes: int = 1, world: World | None = None,
             aggregate: str = "mean", ranks_into: list | None = None) -> dict[str, float]:
    """HR/NDCG/MRR@{10,20}, coverage@10, ILD@10, novelty@10 over all users of `data`.

    A stochastic `sampling` draws its noise from a generator seeded with `seed`, scaled
    by `noise_scale` (the prior's sampling temperature). Serving-time diversification
    (genattn.diversify): `rerank` reorders the scores (seen items masked), `mc_dropout`
    keeps dropout on at that rate and averages the scores of `mc_passes` passes, its
    dropout masks drawn from `seed`. `aggregate` ("mean", "interleave", "vote";
    genattn/models/aggregate.py) builds each list from the S samples' own lists instead of
    their mean scores; a target outside the aggregated top-20 counts as a miss at every K.
    With a data-parallel `world`, each rank scores every
    size-th user and the per-user ranks are gathered, so every rank returns the metrics
    of all users. The batch defaults to what keeps one batch's scores near 256 MB.
    `ranks_into`, a list, receives the per-user target ranks (0 = first; users in `data`'s
    order), for statistics over users such as a paired bootstrap.
    """
    was_training = model.training
    model.eval()
    dropout = diversify.mc_dropout(model, mc_dropout, seed=0 if seed is None else seed) if mc_dropout > 0 \
        else contextlib.nullcontext()
    passes = mc_passes if mc_dropout > 0 else 1
    batch_size = batch_size or max(1, min(512, SCORE_BUDGET // (model.cfg.n_items + 1)))
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    n = len(data.targets)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    mine = np.arange(rank, n, size)
    ranks, tops = [np.zeros(0, dtype=np.int64)], [np.zeros((0, max(KS)), dtype=np.int64)]
    with dropout:
        for start in range(0, len(mine), batch_size):
            users = mine[start:start + batch_size]
            seq, ages = (None if t is None else t.to(device) for t in data.batch(users, model))
            noise = make_noise(model, sampling, len(seq), generator=gen, scale=noise_scale) if sampling else None
            if aggregate == "mean":
                nz = None if noise is None else noise.to(device)
                scores = model.scores(seq, sampling, nz, ages).float().cpu()
                for _ in range(passes - 1):
                    scores += model.scores(seq, sampling, nz, ages).float().cpu()
                scores /= passes
                mask_seen(scores, [data.seen[u] for u in users])
            else:
                scores = aggregated_list_scores(model, seq, sampling, noise, [data.seen[u] for u in users],
                                                aggregate, device, ages)
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
    if ranks_into is not None:
        ranks_into.append(rank_all)
    emb = None if genres is not None else model.item_emb.weight.detach().float().cpu().numpy()
    out.update(diversity_metrics(top[:, :10], model.cfg.n_items, popularity, n_users,
                                 genres=genres, embeddings=emb))
    return out


def sample_scores(model: SASRec, seq: torch.Tensor, sampling: Sampling | None, noise: torch.Tensor | None,
                  seen: list[np.ndarray], device, ages: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S, N + 1) each sample's catalog scores on CPU, the seen items at -inf."""
    h = model.sample_states(seq, sampling, None if noise is None else noise.to(device), ages)
    scores = model.logits(h).float().cpu()
    B, S, n = scores.shape
    flat = scores.reshape(B * S, n)
    mask_seen(flat, [s for s in seen for _ in range(S)])
    return flat.view(B, S, n)


def aggregated_list_scores(model: SASRec, seq: torch.Tensor, sampling: Sampling | None, noise: torch.Tensor | None,
                           seen: list[np.ndarray], how: str, device, ages: torch.Tensor | None = None) -> torch.Tensor:
    """Scores whose ranking is the aggregated top-20 list (positions as scores, the rest -inf),
    so the rank metrics read the list as they read any ranking."""
    from .models.aggregate import aggregate as combine

    if sampling is None or sampling.samples(model.cfg.attention) < 2:
        raise ValueError(f"aggregate {how!r} needs a stochastic sampling with n_samples >= 2")
    k = max(KS)
    items, _ = combine(sample_scores(model, seq, sampling, noise, seen, device, ages), k, how)
    out = torch.full((len(seq), model.cfg.n_items + 1), float("-inf"))
    out.scatter_(1, items, torch.arange(k, 0, -1, dtype=torch.float32).expand(len(seq), -1).contiguous())
    return out


@torch.no_grad()
def user_signals(model: SASRec, data: EvalSet, *, sampling: Sampling | None = None, seed: int = 0,
                 k: int = 10, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per user: the target's rank under the mean scores, and the uncertainty signals an
    application could act on — for every model the maximum softmax probability and the
    entropy of softmax(scores) over the unseen catalog; with S >= 2 samples, their top-k
    agreement (`confidence`, genattn/models/aggregate.py) and the mean per-item std of their
    scores over the mean list."""
    from .models.aggregate import confidence

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list] = {"rank": [], "max_prob": [], "entropy": [], "confidence": [], "score_std": []}
    S = sampling.samples(model.cfg.attention) if sampling is not None else 1
    for start in range(0, len(data.targets), batch_size):
        users = np.arange(start, min(start + batch_size, len(data.targets)))
        seq, ages = data.batch(users, model)
        noise = make_noise(model, sampling, len(seq), generator=gen) if sampling else None
        per = sample_scores(model, seq, sampling, noise, [data.seen[u] for u in users], "cpu", ages)
        mean = per.mean(1)
        tgt = torch.from_numpy(np.asarray(data.targets[users], dtype=np.int64))
        out["rank"].append((mean > mean.gather(1, tgt[:, None])).sum(1).numpy())
        logp = torch.log_softmax(mean, dim=1)
        p = logp.exp()
        out["max_prob"].append(p.max(1).values.numpy())
        out["entropy"].append(-(p * logp.nan_to_num(neginf=0.0)).sum(1).numpy())
        if S >= 2:
            out["confidence"].append(confidence(per, k).numpy())
            top = mean.topk(k, dim=1).indices
            out["score_std"].append(per.gather(2, top[:, None, :].expand(-1, S, -1)).std(1).mean(1).numpy())
    return {key: np.concatenate(v) for key, v in out.items() if v}


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
