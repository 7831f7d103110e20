"""DDIM noise schedule and step function, apart from the denoiser.

Everything here is plain Python floats and integers: when the sampler loop is
traced for export, timesteps and coefficients fold into graph constants and the
loop unrolls to exactly n steps. `step` is pure: no step counter, no stored
history, noise passed in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import Tensor


def cosine_alphas_cumprod(T: int, s: float = 0.008) -> list[float]:
    """abar_t for t = 0..T (Nichol & Dhariwal 2021), betas clipped at 0.999."""
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = [1.0]
    for t in range(1, T + 1):
        beta = min(1.0 - f[t] / f[t - 1], 0.999)
        abar.append(abar[-1] * (1.0 - beta))
    return abar


def linear_alphas_cumprod(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> list[float]:
    """abar_t for t = 0..T with betas linear in t (Ho et al. 2020), rescaled so any T
    spans the same noise range as T = 1000."""
    scale = 1000.0 / T
    b0, b1 = beta_start * scale, min(beta_end * scale, 0.999)
    abar = [1.0]
    for t in range(1, T + 1):
        beta = b0 + (b1 - b0) * (t - 1) / max(T - 1, 1)
        abar.append(abar[-1] * (1.0 - beta))
    return abar


@dataclass(frozen=True)
class DDIMScheduler:
    num_train_steps: int = 100
    schedule: str = "cosine"
    alphas_cumprod: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_train_steps < 1:
            raise ValueError(f"num_train_steps must be >= 1, got {self.num_train_steps}")
        if self.schedule == "cosine":
            abar = cosine_alphas_cumprod(self.num_train_steps)
        elif self.schedule == "linear":
            abar = linear_alphas_cumprod(self.num_train_steps)
        else:
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'cosine' or 'linear'")
        object.__setattr__(self, "alphas_cumprod", tuple(abar))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("alphas_cumprod")
        return d

    def timesteps(self, n: int) -> list[int]:
        """n integer timesteps, descending from T, evenly spaced (DDIM 'trailing')."""
        T = self.num_train_steps
        if not 1 <= n <= T:
            raise ValueError(f"n sampling steps must be in 1..{T} (the training steps), got {n}")
        ts = [round(k * T / n) for k in range(n, 0, -1)]
        return ts

    def sigma(self, t: int, t_prev: int, eta: float) -> float:
        a_t, a_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        if eta == 0.0:
            return 0.0
        return eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)

    def step(self, x0_hat: Tensor, t: int, t_prev: int, x_t: Tensor | None, eta: float = 0.0,
             noise: Tensor | None = None) -> Tensor:
        """x_{t_prev} from x_t and the denoiser's x0 prediction (Song et al. 2021, eq. 12).

        With eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t) the update is linear in
        x0_hat and x_t; its two coefficients are folded here as Python floats, so a traced
        step is two scalings and an add. x_t None means an all-zero x_t (deterministic start).
        """
        a_t, a_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        if t_prev == 0:
            return x0_hat  # abar_0 = 1: the last step lands on the prediction
        sigma = self.sigma(t, t_prev, eta)
        dir_coef = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) / math.sqrt(1.0 - a_t)
        x_prev = (math.sqrt(a_prev) - dir_coef * math.sqrt(a_t)) * x0_hat
        if x_t is not None:
            x_prev = x_prev + dir_coef * x_t
        if sigma > 0.0:
            if noise is None:
                raise ValueError("eta > 0 needs noise for every step")
            x_prev = x_prev + sigma * noise
        return x_prev

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process q(x_t | x0) for a tensor of per-example timesteps t (B,)."""
        import torch

        abar = torch.tensor(self.alphas_cumprod, dtype=x0.dtype, device=x0.device)[t]
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
