"""Diffusion attention: a conditional VAE whose prior over the logit map is a
diffusion model.

We diffuse the offset X = Z - S (so X = 0 is plain softmax attention). The
posterior q(X | S, y) is shared with the VAE kind; the prior is a denoiser
f_theta(X_t, t, phi) predicting X_0, sampled with DDIM (scheduler.py) for a fixed
list of integer timesteps, so tracing unrolls the loop. Training aux loss:
E_t ||f_theta(X_t, t, phi) - X_q||^2 - H(q) over allowed entries.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .attention import (AttentionWeights, AttnInputs, PairMLP, PairPack, Posterior, masked_mean, masked_softmax,
                        row_context)
from .sampling import Sampling, draw_noise
from .scheduler import DDIMScheduler


class Denoiser(nn.Module):
    """x0-prediction network on pairs: features [X_t, S, S - rowmax], r(i - j), t."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp = PairMLP(3, cfg.pair_hidden, 1, cfg.n_heads, cfg.max_len, cfg.time_buckets)
        self.temb = nn.Embedding(cfg.diffusion_steps + 1, cfg.pair_hidden)
        nn.init.normal_(self.temb.weight, std=0.1)

    def condition(self, x: AttnInputs, s_rel: Tensor) -> Tensor:
        """Step-invariant part of the first layer, computed once per layer call:
        (B, H, Lq, L, hidden), or (P, hidden) for x.pairs."""
        return self.mlp.const([x.s, s_rel], x.rel, first=1, pairs=x.pairs, tgap=x.tgap)

    def forward(self, x_t: Tensor | None, t: int | Tensor, cond: Tensor, pairs: PairPack | None = None) -> Tensor:
        """x_t None = all zeros (the deterministic start): its term is skipped, not computed.
        pairs: cond is packed (condition() with x.pairs); x_t stays (B, H, Lq, L)."""
        if isinstance(t, int):  # inference: a constant row, folded when traced
            te = self.temb.weight[t]
        elif pairs is not None:  # training, packed: each pair's example's timestep
            te = self.temb(t[pairs.batch])  # an embedding lookup: see PairMLP.const on why not indexing
        else:  # training: one timestep per example (B,)
            te = self.temb(t)[:, None, None, None, :]
        pre = cond + te
        if x_t is not None:
            xt = x_t if pairs is None else pairs.pack(x_t)
            pre = pre + xt.unsqueeze(-1) * self.mlp.w_in[0]
        return self.mlp.run(pre, pairs)[..., 0]  # (B, H, Lq, L)


class DiffusionWeights(AttentionWeights):
    kind = "diffusion"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.scheduler = DDIMScheduler(cfg.diffusion_steps, cfg.schedule)
        self.denoiser = Denoiser(cfg)
        self.posterior = Posterior(cfg)
        self.prior_ce_trains_prior = cfg.prior_ce == "through"
        self.train_sampling = (Sampling(n_steps=cfg.train_sample_steps, start="noise", eta=1.0)
                               if cfg.train_prior_noise else Sampling(n_steps=cfg.train_sample_steps))
        self.serve_sampling = Sampling(n_steps=cfg.train_sample_steps)

    def sample(self, x: AttnInputs, cond: Tensor, samp: Sampling) -> Tensor:
        """DDIM from X_T to X_0 in samp.n_steps steps (a plain loop over a fixed list)."""
        ts = self.scheduler.timesteps(samp.n_steps) + [0]
        x_t = draw_noise(x, x.s) if samp.start == "noise" else None  # None: zeros, not materialised
        for t, t_prev in zip(ts[:-1], ts[1:]):
            x0_hat = self.denoiser(x_t, t, cond, x.pairs)
            noise = draw_noise(x, x.s) if (samp.eta > 0 and t_prev > 0) else None
            x_t = self.scheduler.step(x0_hat, t, t_prev, x_t, samp.eta, noise)
        return x_t

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        s_rel = row_context(x.s, x.allowed)
        if x.target_aff is not None:  # posterior path (training)
            cond = self.denoiser.condition(x, s_rel)
            mu_q, ls_q = self.posterior(x, s_rel)
            x0 = mu_q + ls_q.exp() * draw_noise(x, mu_q)  # (B, H, L, L) offset sample
            B = x0.shape[0]
            t = torch.randint(1, self.scheduler.num_train_steps + 1, (B,), generator=x.rng,
                              device=x0.device)
            x_t = self.scheduler.add_noise(x0, draw_noise(x, x0), t)
            mse = (self.denoiser(x_t, t, cond, x.pairs) - x0) ** 2
            bound = masked_mean(mse - ls_q, x.allowed & x.valid_q)  # -H(q) up to a constant
            return masked_softmax(x.s + x0, x.allowed), bound
        samp = x.sampling or (self.train_sampling if self.training else self.serve_sampling)
        # In training with prior_ce = "backbone" the sampled map is taken as given: the CE
        # trains S (and everything downstream), never the denoiser, so it cannot reward a
        # denoiser that ignores X_t; the denoiser learns from the diffusion bound alone.
        stop = self.training and not self.prior_ce_trains_prior
        with torch.set_grad_enabled(torch.is_grad_enabled() and not stop):
            x0 = self.sample(x, self.denoiser.condition(x, s_rel), samp)
        return masked_softmax(x.s + x0, x.allowed), x.s.new_zeros(())
