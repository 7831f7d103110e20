"""How the generative prior is run at inference: the `Sampling` settings, the flat
noise input they consume, the one place noise is drawn, and each kind's serving defaults.

One place for these, so training, evaluation, export and the benchmarks agree (and
training and evaluation need not import each other).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from ..config import ModelConfig


@dataclass(frozen=True)
class Sampling:
    """How the prior is run at inference (and in the prior path of training).

    vae:       mode "mean" (Z = prior mean) or "sample" (Z = mu + sigma * eps).
    diffusion: n_steps DDIM steps with eta, starting from zeros ("zeros") or noise ("noise").
    n_samples: S sampled attention maps whose scores are averaged (both kinds; the
               samples share every deterministic block and are batched, not looped).
    A sampling is deterministic when it draws no noise.
    """
    mode: str = "mean"          # vae: "mean" | "sample"
    n_samples: int = 1          # S: score-averaged samples (stochastic samplings only)
    n_steps: int = 8            # diffusion DDIM steps
    eta: float = 0.0            # diffusion DDIM eta
    start: str = "zeros"        # diffusion: "zeros" | "noise"

    def __post_init__(self) -> None:
        if self.mode not in ("mean", "sample"):
            raise ValueError(f"mode must be 'mean' or 'sample', got {self.mode!r}")
        if self.start not in ("zeros", "noise"):
            raise ValueError(f"start must be 'zeros' or 'noise', got {self.start!r}")
        if self.n_samples < 1 or self.n_steps < 1:
            raise ValueError("n_samples and n_steps must be >= 1")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    def draws(self, kind: str) -> int:
        """Noise maps one generative layer consumes per query row and per sample
        (0 = deterministic)."""
        if kind == "vae":
            return 1 if self.mode == "sample" else 0
        if kind == "diffusion":
            return (1 if self.start == "noise" else 0) + (self.n_steps - 1 if self.eta > 0 else 0)
        return 0

    def samples(self, kind: str) -> int:
        """Samples actually drawn: a deterministic sampling has one, whatever n_samples says."""
        return self.n_samples if self.draws(kind) else 1


def default_sampling(cfg: ModelConfig) -> Sampling | None:
    """The serving default of each kind (what validation selects on); None for softmax."""
    if cfg.attention == "vae":
        return Sampling(mode="mean")
    if cfg.attention == "diffusion":
        return Sampling(n_steps=cfg.train_sample_steps)
    return None


def stochastic_sampling(kind: str, base: Sampling, **overrides) -> Sampling:
    """`base` made to draw noise (vae: sample mode; diffusion: noise start); overrides win."""
    changes = {} if base.draws(kind) else ({"mode": "sample"} if kind == "vae" else {"start": "noise"})
    return replace(base, **{**changes, **overrides})


class NoiseReader:
    """Hands out consecutive slices of one flat noise tensor (B, N) as shaped maps.

    Offsets are Python ints, so a traced graph reads fixed slices of one input.
    """

    def __init__(self, flat: Tensor):
        self.flat, self.offset = flat, 0

    def take(self, shape: tuple[int, ...]) -> Tensor:  # shape excludes batch
        n = math.prod(shape)
        if self.offset + n > self.flat.shape[1]:
            raise ValueError(f"noise input too short: need {self.offset + n} values per row, "
                             f"got {self.flat.shape[1]}")
        out = self.flat[:, self.offset:self.offset + n].reshape(-1, *shape)
        self.offset += n
        return out


class NoiseSource(Protocol):
    """Where a layer call's noise comes from (the attention inputs carry both fields)."""
    noise: NoiseReader | None          # inference: the graph's explicit noise input
    rng: torch.Generator | None        # training: the run's generator


def draw_noise(src: NoiseSource, like: Tensor) -> Tensor:
    """Standard normal noise shaped like `like`: from the explicit inference noise input when
    given, else from the training generator."""
    if src.noise is not None:
        return src.noise.take(tuple(like.shape[1:]))
    if src.rng is not None:
        return torch.randn(like.shape, generator=src.rng, device=like.device, dtype=like.dtype)
    raise ValueError("this sampling mode draws noise: pass noise (inference) or rng (training)")
