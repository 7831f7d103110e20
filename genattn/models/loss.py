"""Next-item losses over the catalog, per target position (the model sums and normalises).

full      cross-entropy against every item: logits are positions x catalog, exact, and
          the default for catalogs that fit (at 1M items one batch of 128 x 50 positions
          would need 25.6 GB of fp32 logits).
sampled   sampled softmax: the positive against M shared negatives drawn from q
          (uniform, training popularity, or an even mixture) plus, optionally, the
          batch's other targets (in-batch negatives, drawn from the data distribution).
          Each candidate's logit is corrected by the log of its expected count in the
          candidate set (logQ correction): M q_j for the draws, plus 1 - (1 - p_j)^P for
          the deduplicated in-batch targets of P positions (an item appears there at
          most once, however popular: counting it P p_j times would under-weight
          popular negatives); a
          candidate equal to a row's own target (an accidental hit) is masked out of
          that row, and the positive enters once, uncorrected. The denominator then
          estimates the full catalog's, and the loss tends to the full CE as M grows.
bce       the original SASRec loss (Kang & McAuley 2018), which this research line trains
          with: binary cross-entropy of the positive against one negative per position,
          drawn uniformly from the catalog minus that position's target,
          -log sigmoid(h.e_y) - log(1 - sigmoid(h.e_n)). SASRec's code also avoids every
          item of the user's history; here only the target is excluded (a history item is
          drawn with probability |history| / N, ~6% on ML-100K). Much weaker than full CE
          on the same data (docs/training.md): it is here to run the paper's protocol.

One draw per step. The generative kinds have two CE terms per step (posterior path, prior
path) where softmax has one; `bind(y)` fixes a step's negatives so that every term ranks
the positive against the same draw. Drawing per term would give a generative model two
negatives per position where softmax gets one — under bce that doubles its negative signal
(docs/results.md, "One negative per position for every kind"). `share_negatives = false`
(TrainConfig) keeps the per-term draws of earlier results.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LOSSES, SAMPLERS  # noqa: F401 (the names live with the config, torch-free)


def full_ce(h: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """(P, D) states, (P,) targets, (N + 1, D) item table -> (P,) CE; padding never an answer.

    The padding row is left out of the product rather than set to -inf afterwards: the
    same loss, without the in-place write whose backward copies and fills the whole
    (P, N) gradient (~10% of a generative training step on ML-100K)."""
    logits = h @ weight[1:].T
    return F.cross_entropy(logits.float(), y - 1, reduction="none")


class SampledSoftmax:
    """Sampled softmax with logQ correction (see the module docstring).

    `popularity` (N + 1,) holds training counts (index 0 is padding, never drawn); it
    defines the popularity sampler and the in-batch negatives' distribution.
    """

    def __init__(self, n_items: int, negatives: int, popularity: np.ndarray, *, sampler: str = "uniform",
                 in_batch: bool = True, generator: torch.Generator | None = None, share: bool = True):
        if sampler not in SAMPLERS:
            raise ValueError(f"negative sampler must be one of {SAMPLERS}, got {sampler!r}")
        if negatives < 1 and not in_batch:
            raise ValueError("sampled softmax needs negatives >= 1 or in-batch negatives")
        pop = np.asarray(popularity, dtype=np.float64)
        if pop.shape != (n_items + 1,):
            raise ValueError(f"popularity must have n_items + 1 = {n_items + 1} entries, got {pop.shape}")
        pop = pop.copy()
        pop[0] = 0.0
        if pop.sum() <= 0:
            raise ValueError("popularity is all zero: no training events")
        p_data = pop / pop.sum()
        uniform = np.full(n_items + 1, 1.0 / n_items)
        uniform[0] = 0.0
        q = {"uniform": uniform, "popularity": p_data, "mixed": 0.5 * (uniform + p_data)}[sampler]
        self.n_items, self.negatives, self.sampler, self.in_batch = n_items, int(negatives), sampler, in_batch
        self.generator, self.share = generator, share
        self.q = torch.from_numpy(q).float()
        self.p_data = torch.from_numpy(p_data).float()
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> "SampledSoftmax":
        self.q, self.p_data, self._device = self.q.to(device), self.p_data.to(device), torch.device(device)
        return self

    def draw(self) -> Tensor:
        """(M,) shared negatives, with replacement (padding never drawn)."""
        g, dev = self.generator, self._device
        if self.sampler == "uniform":
            return torch.randint(1, self.n_items + 1, (self.negatives,), generator=g, device=dev)
        return torch.multinomial(self.q, self.negatives, replacement=True, generator=g)

    def bind(self, y: Tensor):
        """The loss for one step's CE terms: its shared draw fixed (share), else itself."""
        return _Bound(self, self.draw() if self.negatives > 0 else None) if self.share else self

    def __call__(self, h: Tensor, y: Tensor, weight: Tensor, drawn: Tensor | None = None) -> Tensor:
        """drawn: a fixed draw of negatives (bind); None = draw now."""
        if drawn is None and self.negatives > 0:
            drawn = self.draw()
        parts = [] if drawn is None else [drawn]
        if self.in_batch:
            parts.append(torch.unique(y))
        cand = torch.cat(parts)
        P = y.shape[0]

        def log_count(items: Tensor) -> Tensor:
            expected = self.negatives * self.q[items]
            if self.in_batch:  # deduplicated: present at most once, with probability 1 - (1 - p)^P
                expected = expected - torch.expm1(P * torch.log1p(-self.p_data[items].clamp_max(1 - 1e-7)))
            return torch.log(expected.clamp_min(1e-12))

        pos = (h * weight[y]).sum(-1)                                 # (P,) the given positive
        neg = h @ weight[cand].T - log_count(cand)                    # (P, C) corrected draws
        neg = neg.masked_fill(cand[None, :] == y[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos[:, None], neg], dim=1).float()
        return F.cross_entropy(logits, torch.zeros_like(y), reduction="none")


class SampledBCE:
    """The `bce` loss of the module docstring: one uniform negative per position, never
    padding and never that position's own target; only the positive's and the negative's
    item rows receive gradient."""

    def __init__(self, n_items: int, generator: torch.Generator | None = None, share: bool = True):
        if n_items < 2:
            raise ValueError(f"bce needs at least 2 items to draw a negative, got {n_items}")
        self.n_items, self.generator, self.share = n_items, generator, share
        self._device = torch.device("cpu") if generator is None else generator.device

    def to(self, device: torch.device) -> "SampledBCE":
        self._device = torch.device(device)
        return self

    def draw(self, y: Tensor) -> Tensor:
        """(P,) negatives, uniform over 1..N without y: draw from N - 1 values, skip y."""
        neg = torch.randint(1, self.n_items, y.shape, generator=self.generator, device=self._device)
        return neg + (neg >= y).long()

    def bind(self, y: Tensor):
        """The loss for one step's CE terms: one negative per position of y fixed (share), else itself."""
        return _Bound(self, self.draw(y)) if self.share else self

    def __call__(self, h: Tensor, y: Tensor, weight: Tensor, drawn: Tensor | None = None) -> Tensor:
        """drawn: (P,) a fixed draw of negatives for these targets (bind); None = draw now."""
        neg = self.draw(y) if drawn is None else drawn
        pos_logit = (h * weight[y]).sum(-1).float()
        neg_logit = (h * weight[neg]).sum(-1).float()
        return F.softplus(-pos_logit) + F.softplus(neg_logit)  # -log s(pos) - log(1 - s(neg))


class _Bound:
    """A sampled loss with its negatives drawn once: every call of one step reuses them."""

    def __init__(self, loss, drawn: Tensor | None):
        self.loss, self.drawn = loss, drawn

    def __call__(self, h: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        return self.loss(h, y, weight, drawn=self.drawn)
