"""SASRec-style causal transformer with pluggable attention (docs/model.md, "Backbone").

`forward` computes the training loss; `scores` is the serving path: it runs only
the newest query row in the last block and returns full-catalog scores.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .attention import AttentionWeights, CausalSelfAttention, SoftmaxWeights, ages_missing
from .diffusion import DiffusionWeights
from .loss import full_ce
from .sampling import NoiseReader, Sampling
from .vae import VAEWeights

WEIGHTS = {"softmax": SoftmaxWeights, "vae": VAEWeights, "diffusion": DiffusionWeights}
GENERATIVE_SEED_OFFSET = 0x6E6A  # the generative modules' stream: global seed + this


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, weights: AttentionWeights):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, weights)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def generative(self) -> bool:
        return self.attn.weights.kind != "softmax"

    def forward(self, x: Tensor, pad: Tensor, masks: tuple, *,
                last_only: bool = False, **attn_kw) -> tuple[Tensor, Tensor]:
        """x (B, L, D) -> (B, Lq, D); pad (B, L, 1) is 1 for real items."""
        h = self.ln1(x)
        a, aux = self.attn(h, *masks, last_only=last_only, **attn_kw)
        if last_only:
            x, pad = x[:, -1:], pad[:, -1:]
        x = x + self.drop(a)
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x * pad, aux


class SASRec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.n_items < 1:
            raise ValueError("ModelConfig.n_items must be set to the catalog size")
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = []
        # Paired seeds: the generative modules draw their initial values from a stream of
        # their own (derived from the global seed), so the global stream — and with it every
        # shared parameter — is the same for every kind under one seed.
        own_seed = (torch.initial_seed() + GENERATIVE_SEED_OFFSET) % (1 << 63)
        for b in range(cfg.n_blocks):
            generative = cfg.attention != "softmax" and (cfg.generative_blocks == "all" or b == cfg.n_blocks - 1)
            if generative:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(own_seed + b)
                    weights = WEIGHTS[cfg.attention](cfg)
            else:
                weights = SoftmaxWeights(cfg)
            blocks.append(Block(cfg, weights))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # Each gap bucket's exact bounds (2^k, 2^(k+1)), one row per bucket (not saved: a function of
        # time_buckets; no RNG draw).
        self.register_buffer("gap_edges", torch.tensor([[2.0 ** k, 2.0 ** (k + 1)] for k in range(cfg.time_buckets)]),
                             persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # ---- shared pieces -------------------------------------------------------------
    def masks(self, seq: Tensor, ages: Tensor | None = None) -> tuple:
        """allowed (B, 1, L, L), valid_q (B, 1, L, 1), rel (L, L) and the time-gap buckets (B, L, L)
        (None without time gaps), every query row; `newest_row` takes the serving path's."""
        L = seq.shape[1]
        key_ok = (seq != 0)[:, None, None, :]  # (B, 1, 1, L)
        i = torch.arange(L, device=seq.device)
        causal = i[:, None] >= i[None, :]  # (L, L)
        # The diagonal is always allowed so a padding query's row is never empty (no NaN).
        allowed = (causal & key_ok) | (i[:, None] == i[None, :])
        valid_q = (seq != 0)[:, None, :, None]
        rel = (i[:, None] - i[None, :]).clamp(0, self.cfg.max_len - 1)
        return allowed, valid_q, rel, self.gap_buckets(ages, i)

    @staticmethod
    def newest_row(masks: tuple) -> tuple:
        """The newest query's row of `masks`: what the last block needs on the serving path (a slice,
        so the gaps are not bucketed twice)."""
        allowed, valid_q, rel, gaps = masks
        return allowed[:, :, -1:], valid_q[:, :, -1:], rel[-1:], None if gaps is None else gaps[:, -1:]

    def gap_buckets(self, ages: Tensor | None, qi: Tensor) -> Tensor | None:
        """(B, Lq, L) long: floor(log2(1 + t_i - t_j)) of the seconds between query i's event and
        key j's, clamped to the last bucket; from ages (B, L), each event's seconds before the
        newest one. Keys after the query (masked anyway) fall in bucket 0."""
        n = self.cfg.time_buckets
        if not n:
            return None
        if ages is None:
            raise ages_missing(n)
        span = (ages[:, None, :] - ages[:, qi, None]).float().clamp_min(0.0) + 1.0  # (B, Lq, L), 1 + gap
        b = torch.log2(span).floor().clamp(0, n - 1).long()
        # log2 may miss an exact power of two by an ulp (ONNX Runtime's gives 14.99... for 2^15, and
        # whole-second gaps hit 2^k - 1 often): the bucket's exact bounds settle it, so torch and
        # every runtime put a gap in the same bucket.
        lo, hi = F.embedding(b, self.gap_edges).unbind(-1)  # one Gather of both bounds when exported
        b = b + (span >= hi).long() - (span < lo).long()
        return b.clamp(0, n - 1)

    def embed(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        L = seq.shape[1]
        if L > self.cfg.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.cfg.max_len}")
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device)
        pad = (seq != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model) + self.pos_emb(pos)
        return self.drop(x) * pad, pad

    def target_queries(self, block: Block, targets: Tensor) -> Tensor:
        w, b = block.attn.q_weight()
        return F.linear(block.ln1(self.item_emb(targets)), w, b)  # (B, L, D)

    def run_blocks(self, seq: Tensor, *, targets: Tensor | None = None, last_only: bool = False,
                   rng: torch.Generator | None = None, sampling: Sampling | None = None,
                   noise: Tensor | None = None, samples: int = 1,
                   ages: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Hidden states (B·samples, L or 1, D) after the final LayerNorm, and summed aux loss.

        targets given -> posterior path (training); otherwise the prior path. samples > 1:
        rows are repeated (user-major) from the first generative block on, so the
        deterministic blocks before it run once; noise (B, samples·n) holds each user's
        samples one after another. ages (B, L): each event's seconds before the newest one
        (models with time_buckets > 0 only).
        """
        if ages is not None and ages.shape != seq.shape:
            raise ValueError(f"ages {tuple(ages.shape)} must have the sequence's shape {tuple(seq.shape)}")
        x, pad = self.embed(seq)
        full = self.masks(seq, ages)
        reader = NoiseReader(noise) if noise is not None else None
        aux = x.new_zeros(())
        expand = samples > 1
        for n, block in enumerate(self.blocks):
            if expand and block.generative:
                expand = False
                x, pad = (t.repeat_interleave(samples, dim=0) for t in (x, pad))
                # The masks and gap buckets are functions of the rows, so they repeat with them
                # (bucketing the repeated gaps again would cost a dozen ops on S times the pairs).
                allowed, valid_q, rel, gaps = full
                full = (allowed.repeat_interleave(samples, dim=0), valid_q.repeat_interleave(samples, dim=0), rel,
                        None if gaps is None else gaps.repeat_interleave(samples, dim=0))
                if noise is not None:
                    reader = NoiseReader(noise.reshape(x.shape[0], -1))
            last = last_only and n == len(self.blocks) - 1
            masks = self.newest_row(full) if last else full
            tq = self.target_queries(block, targets) if (targets is not None and block.generative) else None
            x, a = block(x, pad, masks, last_only=last, target_q=tq, rng=rng, sampling=sampling, noise=reader)
            aux = aux + a
        if reader is not None and reader.offset != reader.flat.shape[1]:
            raise ValueError(f"noise input has {noise.shape[1]} values per row, the sampler used "
                             f"{reader.offset * noise.shape[1] // reader.flat.shape[1]}")
        return self.ln_f(x), aux

    def logits(self, h: Tensor) -> Tensor:
        out = h @ self.item_emb.weight.T  # (..., N + 1)
        is_pad = torch.arange(out.shape[-1], device=out.device) == 0
        return out.masked_fill(is_pad, float("-inf"))  # padding is never an answer

    # ---- training -----------------------------------------------------------------------
    def forward(self, seq: Tensor, targets: Tensor, *, rng: torch.Generator | None = None,
                beta: float | None = None, loss=None, n_targets: float | None = None,
                ages: Tensor | None = None) -> dict[str, Tensor]:
        """Training loss. seq, targets (B, L); targets[b, i] is the item after seq[b, i], 0 = none.

        `loss` maps (states (P, D), targets (P,), item table) to per-position CE (models/loss.py;
        default: full CE); a sampled loss draws its negatives once here (`bind`), for every CE
        term of the step. CE terms are sums over positions divided by `n_targets` (default:
        this batch's count); data-parallel training passes the global count / world size, so
        averaging the ranks' gradients gives exactly the single-process gradient.
        """
        cfg = self.cfg
        mask = targets != 0
        y = targets[mask]
        loss = loss or full_ce
        if hasattr(loss, "bind"):  # a sampled loss: one draw of negatives for every CE term below
            loss = loss.bind(y)
        denom = float(n_targets) if n_targets is not None else max(int(mask.sum()), 1)

        def ce(h: Tensor, weight: Tensor | None = None) -> Tensor:
            return loss(h[mask], y, self.item_emb.weight if weight is None else weight).sum() / denom

        if cfg.attention == "softmax":
            h, _ = self.run_blocks(seq, ages=ages)
            total = ce(h)
            return {"loss": total, "ce": total.detach()}
        beta = cfg.beta if beta is None else beta
        if cfg.posterior_ce == "generative":
            # The posterior path (which sees the target) trains only the generative modules
            # (posterior, prior / denoiser): every other parameter enters it detached, so the
            # backbone is shaped by the served prior path alone.
            params = {f"model.{n}": (p if ".attn.weights." in n else p.detach()) for n, p in self.named_parameters()}
            h_q, bound = torch.func.functional_call(_PosteriorPass(self), params, (seq, targets, rng, ages))
            ce_q = ce(h_q, self.item_emb.weight.detach())
        else:
            h_q, bound = self.run_blocks(seq, targets=targets, rng=rng, ages=ages)
            ce_q = ce(h_q)
        h_p, _ = self.run_blocks(seq, rng=rng, ages=ages)  # prior path: what is served
        ce_p = ce(h_p)
        total = ce_q + beta * bound + cfg.gamma * ce_p
        return {"loss": total, "ce": ce_p.detach(), "ce_posterior": ce_q.detach(), "bound": bound.detach()}

    # ---- serving ------------------------------------------------------------------------
    def noise_size(self, sampling: Sampling) -> int:
        """Values per user of the flat noise input the serving path consumes."""
        cfg, L, n = self.cfg, self.cfg.max_len, 0
        for b, block in enumerate(self.blocks):
            lq = 1 if b == len(self.blocks) - 1 else L
            n += sampling.draws(block.attn.weights.kind) * cfg.n_heads * lq * L
        return n * (sampling.n_samples if n else 1)

    def sample_states(self, seq: Tensor, sampling: Sampling | None = None, noise: Tensor | None = None,
                      ages: Tensor | None = None) -> Tensor:
        """(B, S, D): each of the S samples' user state (S = 1 when deterministic)."""
        S = sampling.samples(self.cfg.attention) if sampling is not None else 1
        h, _ = self.run_blocks(seq, last_only=True, sampling=sampling, noise=noise, samples=S, ages=ages)
        return h[:, -1].view(seq.shape[0], S, -1)

    def user_state(self, seq: Tensor, sampling: Sampling | None = None, noise: Tensor | None = None,
                   ages: Tensor | None = None) -> Tensor:
        """(B, D); with S samples, the mean of the S sampled states (scores are linear in
        the state, so this is the mean of the S sampled score vectors)."""
        h = self.sample_states(seq, sampling, noise, ages)
        return h.mean(1) if h.shape[1] > 1 else h[:, 0]

    def scores(self, seq: Tensor, sampling: Sampling | None = None, noise: Tensor | None = None,
               ages: Tensor | None = None) -> Tensor:
        """Full-catalog scores (B, N + 1) for the next item; index 0 is -inf."""
        return self.logits(self.user_state(seq, sampling, noise, ages))


class _PosteriorPass(nn.Module):
    """The posterior pass as a module, so torch.func.functional_call can run it with the
    backbone's parameters swapped for detached copies (posterior_ce = "generative")."""

    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, seq: Tensor, targets: Tensor, rng: torch.Generator | None, ages: Tensor | None = None):
        return self.model.run_blocks(seq, targets=targets, rng=rng, ages=ages)


def make_noise(model: SASRec, sampling: Sampling, batch: int, seed: int | None = None,
               generator: torch.Generator | None = None, scale: float = 1.0) -> Tensor | None:
    """Normal noise input for a stochastic sampling (std `scale`, the prior's sampling
    temperature, as the runtime's `diversity`); None when deterministic."""
    n = model.noise_size(sampling)
    if n == 0:
        return None
    g = generator or torch.Generator().manual_seed(0 if seed is None else seed)
    noise = torch.randn(batch, n, generator=g)
    return noise if scale == 1.0 else noise * scale
