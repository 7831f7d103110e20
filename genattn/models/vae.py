"""VAE attention: a conditional VAE over the attention logit map Z.

prior      p(Z | S)    = N(S + g_mu(phi), exp(2 g_s(phi)))        runs at inference
posterior  q(Z | S, y) = N(S + f_mu(phi, a), exp(2 f_s(phi, a)))  training only
with phi_ij = [S_ij, S_ij - max_j S_ij, r(i - j)] and a_ij = y_i . k_j / sqrt(d_h).
The returned aux loss is KL(q || p) over allowed entries; the model weights it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..config import ModelConfig
from .attention import AttentionWeights, AttnInputs, PairMLP, Posterior, masked_mean, masked_softmax, row_context
from .sampling import Sampling, draw_noise


class VAEWeights(AttentionWeights):
    kind = "vae"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.prior = PairMLP(2, cfg.pair_hidden, 2, cfg.n_heads, cfg.max_len, cfg.time_buckets)
        with torch.no_grad():
            self.prior.out.bias[1] = -1.0
        self.posterior = Posterior(cfg)
        self.lo, self.hi = cfg.logstd_min, cfg.logstd_max
        self.prior_ce_trains_prior = cfg.prior_ce == "through"
        self.train_sampling = Sampling(mode="sample" if cfg.train_prior_noise else "mean")

    def prior_params(self, x: AttnInputs, s_rel: Tensor) -> tuple[Tensor, Tensor]:
        out = self.prior.run(self.prior.const([x.s, s_rel], x.rel, pairs=x.pairs, tgap=x.tgap), x.pairs)
        return out[..., 0], out[..., 1].clamp(self.lo, self.hi)  # (B, H, Lq, L) each

    def forward(self, x: AttnInputs) -> tuple[Tensor, Tensor]:
        s_rel = row_context(x.s, x.allowed)
        if x.target_aff is not None:  # posterior path (training)
            mu_p, ls_p = self.prior_params(x, s_rel)
            mu_q, ls_q = self.posterior(x, s_rel)
            z = x.s + mu_q + ls_q.exp() * draw_noise(x, mu_q)
            kl = ls_p - ls_q + ((2 * ls_q).exp() + (mu_q - mu_p) ** 2) / (2 * (2 * ls_p).exp()) - 0.5
            return masked_softmax(z, x.allowed), masked_mean(kl, x.allowed & x.valid_q)
        samp = x.sampling or (self.train_sampling if self.training else Sampling())
        # In training with prior_ce = "backbone" the prior's draw is taken as given: the
        # CE trains S (and everything downstream), never the prior's parameters.
        stop = self.training and not self.prior_ce_trains_prior
        with torch.set_grad_enabled(torch.is_grad_enabled() and not stop):
            mu_p, ls_p = self.prior_params(x, s_rel)
            offset = mu_p if samp.mode == "mean" else mu_p + ls_p.exp() * draw_noise(x, mu_p)
        return masked_softmax(x.s + offset, x.allowed), x.s.new_zeros(())
