"""Shared small fixtures for the model, scheduler, metrics and training tests.

Everything here is tiny on purpose (max_len 8, d_model 16, ~30 items) so that the
whole suite runs in seconds on two CPU cores.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from genattn.config import ModelConfig
from genattn.data import SequenceDataset, build_dataset, synthetic_interactions
from genattn.models import SASRec

# Tiny tensors: one intra-op thread is fastest and does not fight other jobs for cores.
torch.set_num_threads(1)

# (attention kind, generative_blocks): every distinct model layout.
KIND_LAYOUTS = [
    ("softmax", "all"),
    ("vae", "all"),
    ("vae", "last"),
    ("diffusion", "all"),
    ("diffusion", "last"),
]
KIND_IDS = [f"{k}-{b}" if k != "softmax" else k for k, b in KIND_LAYOUTS]

TINY = dict(n_items=30, max_len=8, d_model=16, n_heads=2, n_blocks=2, dropout=0.0,
            pair_hidden=8, diffusion_steps=20, train_sample_steps=2)
# The objective ModelConfig defaulted to before its defaults became per kind (genattn/config.py,
# KIND_DEFAULTS): no posterior skip, a deterministic prior path in training that the prior-path
# CE trains through. The model tests were written against it and keep it explicitly; a test of
# the new objective passes its fields.
FIRST_OBJECTIVE = dict(posterior_gain=0.0, prior_ce="through", train_prior_noise=False, beta_warmup_steps=1000)


def tiny_config(kind: str = "softmax", blocks: str = "all", **overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **FIRST_OBJECTIVE, "attention": kind, "generative_blocks": blocks, **overrides})


def randomize_generative(model: SASRec, seed: int = 0, scale: float = 0.5) -> SASRec:
    """Give every pair MLP a random output layer.

    A fresh generative layer outputs exactly zero offsets (it starts as softmax
    attention, and the denoiser ignores its input), which would make noise, the
    prior and the denoiser invisible; tests that need them to matter call this.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".out." in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture
def make_model() -> Callable[..., SASRec]:
    """make_model(kind, blocks, seed=0, randomize=True, **cfg_overrides) -> SASRec in eval mode."""

    def factory(kind: str = "softmax", blocks: str = "all", seed: int = 0, randomize: bool = True,
                **overrides) -> SASRec:
        torch.manual_seed(seed)
        model = SASRec(tiny_config(kind, blocks, **overrides))
        if randomize:
            randomize_generative(model, seed)
        return model.eval()

    return factory


def random_batch(batch: int, max_len: int, n_items: int, seed: int = 0, min_len: int = 1) -> torch.Tensor:
    """(batch, max_len) int64 left-padded sequences of distinct items with random lengths."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, max_len), dtype=np.int64)
    for b in range(batch):
        n = int(rng.integers(min_len, max_len + 1))
        out[b, max_len - n:] = rng.choice(np.arange(1, n_items + 1), size=n, replace=False)
    return torch.from_numpy(out)


@pytest.fixture(scope="session")
def tiny_dataset() -> SequenceDataset:
    """60 users, 40 items, sequences of 5..12 events (with topic genres)."""
    return build_dataset(synthetic_interactions(n_users=60, n_items=40, n_topics=4, seq_len=(5, 12), seed=0))


def assert_packing_changes_nothing(model: SASRec, seed: int = 3, **forward_kw) -> dict:
    """Train-mode loss and gradients with the pair MLPs packed (PairPack) and evaluating every
    pair must agree (the skipped entries are masked or left out of the bound); returns the
    packed run's gradients. forward_kw go to the model's forward (e.g. ages=)."""
    from genattn.models.attention import CausalSelfAttention

    seq = random_batch(6, model.cfg.max_len, model.cfg.n_items, seed=seed)
    seq[0] = 0  # an empty window too
    targets = torch.roll(seq, -1, 1)
    targets[:, -1] = 1
    targets[seq == 0] = 0
    runs = []
    for pack in (True, False):
        CausalSelfAttention.pack_pairs = pack
        try:
            model.zero_grad()
            torch.manual_seed(5)  # the same dropout masks in both runs
            out = model(seq, targets, rng=torch.Generator().manual_seed(1),
                        **{k: (v(seq) if callable(v) else v) for k, v in forward_kw.items()})
            out["loss"].backward()
        finally:
            CausalSelfAttention.pack_pairs = True
        runs.append((out["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None}))
    (loss_p, grads_p), (loss_f, grads_f) = runs
    assert torch.allclose(loss_p, loss_f, atol=1e-6)
    assert grads_p.keys() == grads_f.keys() and any(".attn.weights." in n for n in grads_p)
    for name in grads_p:
        assert torch.allclose(grads_p[name], grads_f[name], atol=1e-6), name
    return grads_p
