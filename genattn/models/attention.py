"""Causal self-attention with a pluggable way of turning scores into weights.

`CausalSelfAttention` owns the projections and heads; an `AttentionWeights`
module maps the scaled scores S (B, H, Lq, L) to weights A. The baseline is
softmax; the generative kinds (vae.py, diffusion.py) sample a logit map instead.
Every kind returns (A, aux_loss); the target enters only through `target_aff`
(training), and randomness only through `rng` (training) or `noise` (inference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .sampling import NoiseReader, Sampling

NEG_INF = float("-inf")


class PairPack:
    """The (b, h, i, j) entries a pair MLP must evaluate in training: allowed keys of real
    query rows. The rest are masked to -inf by the softmax or left out of the KL / bound,
    so their MLP outputs never matter; evaluating only these rows (38% of the pairs at
    max_len 50 on ML-100K, 15% at 200) gives the same values and gradients for less work.
    Unpacked outputs hold `fill` at the skipped entries."""

    def __init__(self, keep: Tensor, n_heads: int, rel: Tensor, tgap: Tensor | None = None):
        B, _, Lq, L = keep.shape
        self.shape = (B, n_heads, Lq, L)
        self.idx = keep.expand(self.shape).reshape(-1).nonzero().squeeze(1)
        self.batch = self.idx // (n_heads * Lq * L)
        self.head = (self.idx // (Lq * L)) % n_heads
        self.rel = rel.reshape(-1)[self.idx % (Lq * L)]
        self.tgap = None if tgap is None else tgap.reshape(-1)[self.batch * (Lq * L) + self.idx % (Lq * L)]
        self._onehot: dict[torch.dtype, Tensor] = {}  # head_onehot's, per dtype

    def head_onehot(self, dtype: torch.dtype) -> Tensor:
        """(P, n_heads): each pair's head, one-hot; made once per forward pass and dtype."""
        if dtype not in self._onehot:
            self._onehot[dtype] = F.one_hot(self.head, self.shape[1]).to(dtype)
        return self._onehot[dtype]

    def pack(self, t: Tensor) -> Tensor:
        """(B, H, Lq, L) -> (P,)"""
        return t.reshape(-1)[self.idx]

    def unpack(self, p: Tensor, fill: float = 0.0) -> Tensor:
        """(P, n) -> (B, H, Lq, L, n)"""
        n = p.shape[-1]
        out = p.new_full((math.prod(self.shape), n), fill)
        return out.index_put((self.idx,), p).view(*self.shape, n)


@dataclass
class AttnInputs:
    """What a weights module may look at for one layer call."""
    s: Tensor                    # (B, H, Lq, L) scaled scores QK^T/sqrt(d_h)
    allowed: Tensor              # (B, 1, Lq, L) bool: causal, key not padding (diagonal always)
    valid_q: Tensor              # (B, 1, Lq, 1) bool: query is a real item (loss rows)
    rel: Tensor                  # (Lq, L) long: recency i - j clamped to [0, max_len - 1]
    tgap: Tensor | None = None   # (B, Lq, L) long: time-gap bucket of (i, j) (time_buckets > 0)
    target_aff: Tensor | None = None   # (B, H, Lq, L) y_i . k_j / sqrt(d_h); training only
    rng: torch.Generator | None = None  # training noise
    sampling: Sampling | None = None    # prior path settings
    noise: NoiseReader | None = None    # inference noise
    pairs: PairPack | None = None       # training with every query: the pair MLPs see only these


class AttentionWeights(nn.Module):
    kind = "base"

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def ages_missing(time_buckets: int) -> ValueError:
    """The error of a model with time gaps called without the events' ages."""
    return ValueError(f"this model attends over time gaps (time_buckets={time_buckets}): pass the events' ages")


def masked_softmax(z: Tensor, allowed: Tensor) -> Tensor:
    return torch.softmax(z.masked_fill(~allowed, NEG_INF), dim=-1)


def row_context(s: Tensor, allowed: Tensor) -> Tensor:
    """S_ij - max_j S_ij over allowed keys: scale-free position of a score in its row."""
    m = s.masked_fill(~allowed, NEG_INF).amax(dim=-1, keepdim=True)
    return s - m


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over allowed keys, mean over real query rows and heads."""
    mask = mask.to(values.dtype)
    rows = mask.amax(dim=-1, keepdim=True)  # (B, 1, Lq, 1)
    denom = (rows.sum() * values.shape[1]).clamp_min(1.0)
    return (values * mask).sum() / denom


class SoftmaxWeights(AttentionWeights):
    """SASRec baseline: A = softmax(S + M)."""
    kind = "softmax"

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        return masked_softmax(x.s, x.allowed), x.s.new_zeros(())


class PairMLP(nn.Module):
    """Small MLP on each (query i, key j) pair of each head.

    The first layer is rank-1 in each scalar feature, plus a learned recency
    embedding r(i - j), with `time_buckets` a learned embedding of the time-gap bucket,
    and a per-head bias; terms that do not change across sampling steps are computed
    once (`const`) and reused (`run`).
    Cost O(B·H·Lq·L·hidden²).
    """

    def __init__(self, n_scalars: int, hidden: int, n_out: int, n_heads: int, max_len: int,
                 time_buckets: int = 0):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(n_scalars, hidden) * 0.5)
        self.rel = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.rel.weight, std=0.1)
        # Zeros, drawn from no RNG: the other parameters start as they would without time gaps.
        self.gap = nn.Parameter(torch.zeros(time_buckets, hidden)) if time_buckets else None
        self.head_bias = nn.Parameter(torch.zeros(n_heads, hidden))
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, n_out)
        # Zero output: a fresh generative layer starts as softmax attention (Z = S).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def const(self, scalars: list[Tensor], rel: Tensor, first: int = 0, pairs: PairPack | None = None,
              tgap: Tensor | None = None) -> Tensor:
        """First-layer pre-activation from scalars[k] (B, H, Lq, L) using weights w_in[first + k]
        (and the time-gap buckets tgap (B, Lq, L) when the MLP has a gap embedding):
        (B, H, Lq, L, hidden), or (P, hidden) for the packed pairs."""
        w = self.w_in[first:first + len(scalars)]
        if self.gap is not None and tgap is None:
            raise ages_missing(len(self.gap))
        if pairs is not None:
            # Not head_bias[pairs.head]: on CUDA the backward of indexing sums each index's
            # duplicates serially, and millions of pairs share a handful of heads; a one-hot
            # matmul's backward is one parallel reduction (docs/results.md, "Training on a GPU").
            # Lookups over many more rows (recency, time-gap bucket) go through F.embedding,
            # whose backward splits long runs of duplicates up.
            h = self.rel(pairs.rel) + pairs.head_onehot(self.head_bias.dtype) @ self.head_bias  # (P, hidden)
            if self.gap is not None:
                h = h + F.embedding(pairs.tgap, self.gap)
            return h + torch.stack([pairs.pack(t) for t in scalars], dim=-1) @ w
        h = self.rel(rel) + self.head_bias[:, None, None, :]  # (H, Lq, L, hidden)
        if self.gap is not None:
            h = h + F.embedding(tgap, self.gap)[:, None]  # (B, H, Lq, L, hidden); a Gather when exported
        # One small matmul over the stacked scalars instead of a multiply and an add per
        # scalar on the (B, H, Lq, L, hidden) tensor: ~3x faster with its backward on CPU.
        return h + torch.stack(scalars, dim=-1) @ w

    def run(self, pre: Tensor, pairs: PairPack | None = None) -> Tensor:
        """(B, H, Lq, L, n_out); packed pre-activations are unpacked (zeros where skipped)."""
        h = F.silu(pre)
        h = F.silu(self.mid(h))
        out = self.out(h)
        return out if pairs is None else pairs.unpack(out)


class Posterior(nn.Module):
    """q(Z | S, y) = N(S + g_h (a - max_j a) + f_mu, exp(2 f_s)): sees the target-key
    affinity a. Training only.

    The learned per-head gain g_h (initialised at cfg.posterior_gain) is a skip path
    for the affinity: from the first step the posterior leans toward the history items
    that explain the target, so the latent carries information about y for the prior
    to learn (without it the posterior stayed target-blind: docs/results.md, "The collapse,
    measured directly").
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp = PairMLP(4, cfg.pair_hidden, 2, cfg.n_heads, cfg.max_len, cfg.time_buckets)
        self.lo, self.hi = cfg.logstd_min, cfg.logstd_max
        # posterior_gain 0 = no skip path (and no parameter: older checkpoints load as they were).
        self.gain = nn.Parameter(torch.full((cfg.n_heads, 1, 1), float(cfg.posterior_gain))) \
            if cfg.posterior_gain else None
        nn.init.constant_(self.mlp.out.bias, 0.0)
        with torch.no_grad():
            self.mlp.out.bias[1] = -1.0  # start with std ~0.37

    def forward(self, x: AttnInputs, s_rel: Tensor) -> tuple[Tensor, Tensor]:
        a = x.target_aff
        a_rel = row_context(a, x.allowed)
        out = self.mlp.run(self.mlp.const([x.s, s_rel, a, a_rel], x.rel, pairs=x.pairs, tgap=x.tgap), x.pairs)
        mu = out[..., 0]
        if self.gain is not None:
            mu = mu + self.gain * a_rel.masked_fill(~x.allowed, 0.0)
        return mu, out[..., 1].clamp(self.lo, self.hi)  # offset mean, log std


class CausalSelfAttention(nn.Module):
    pack_pairs = True  # False: the pair MLPs evaluate every entry (the reference PairPack is tested against)

    def __init__(self, cfg: ModelConfig, weights: AttentionWeights):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # Zero at the start (plain S); no draw from the RNG, so the other parameters' initial
        # values do not depend on whether time gaps are on.
        self.time_bias = nn.Parameter(torch.zeros(cfg.time_buckets, cfg.n_heads)) if cfg.time_buckets else None
        self.recency_bias = nn.Parameter(torch.zeros(cfg.max_len, cfg.n_heads)) if cfg.recency_bias else None
        self.weights = weights

    def split(self, t: Tensor) -> Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, d_h)

    def forward(self, h: Tensor, allowed: Tensor, valid_q: Tensor, rel: Tensor, tgap: Tensor | None = None, *,
                target_q: Tensor | None = None, last_only: bool = False,
                rng: torch.Generator | None = None, sampling: Sampling | None = None,
                noise: NoiseReader | None = None) -> tuple[Tensor, Tensor]:
        """h (B, L, D) -> (out (B, Lq, D), aux). last_only: queries = newest position only.

        target_q (B, L, D): the target items' embeddings projected like queries
        (training posterior only).
        """
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if last_only:
            q = q[:, -1:]
        q, k, v = self.split(q), self.split(k), self.split(v)  # (B, H, L*, d_h)
        scale = 1.0 / math.sqrt(self.d_head)
        s = (q @ k.transpose(-1, -2)) * scale  # (B, H, Lq, L)
        if self.time_bias is not None:
            if tgap is None:
                raise ages_missing(len(self.time_bias))
            # F.embedding, not time_bias[tgap]: the same lookup, exported as a Gather rather than a
            # GatherND (a third of the time terms' serving cost at batch 1)
            s = s + F.embedding(tgap, self.time_bias).permute(0, 3, 1, 2)  # (B, Lq, L, H) -> (B, H, Lq, L)
        if self.recency_bias is not None:
            s = s + F.embedding(rel, self.recency_bias).permute(2, 0, 1)  # (Lq, L, H) -> (H, Lq, L)
        aff = None
        if target_q is not None:
            aff = (self.split(target_q) @ k.transpose(-1, -2)) * scale  # (B, H, L, L)
        pairs = None
        if self.pack_pairs and self.training and not last_only and self.weights.kind != "softmax":
            pairs = PairPack(allowed & valid_q, self.n_heads, rel, tgap)
        inputs = AttnInputs(s=s, allowed=allowed, valid_q=valid_q, rel=rel, tgap=tgap, target_aff=aff,
                            rng=rng, sampling=sampling, noise=noise, pairs=pairs)
        a, aux = self.weights(inputs)  # (B, H, Lq, L)
        out = (a @ v).transpose(1, 2).reshape(h.shape[0], -1, self.n_heads * self.d_head)
        return self.proj(out), aux

    def q_weight(self) -> tuple[Tensor, Tensor]:
        d = self.n_heads * self.d_head
        return self.qkv.weight[:d], self.qkv.bias[:d]
