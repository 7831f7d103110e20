"""Tests for genattn.models.scheduler.DDIMScheduler against independent formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genattn.models import DDIMScheduler

S_COS = 0.008


def cosine_reference(T: int) -> tuple[np.ndarray, np.ndarray]:
    """f(t) / f(0) (Nichol & Dhariwal 2021) and the implied betas, in numpy."""
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + S_COS) / (1 + S_COS) * np.pi / 2) ** 2
    betas = 1.0 - f[1:] / f[:-1]
    return f / f[0], betas


# --------------------------------------------------------------------------- #
# Schedules
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("T", [1, 10, 20, 100, 1000])
def test_cosine_alphas_cumprod_match_closed_form(T):
    abar = np.array(DDIMScheduler(T, "cosine").alphas_cumprod)
    ref, betas = cosine_reference(T)
    assert abar.shape == (T + 1,)
    clipped = np.flatnonzero(betas > 0.999) + 1  # timesteps whose beta is clipped
    # f(T) = cos(pi/2)^2 = 0, so the last beta is always clipped; no other one is here.
    assert clipped.tolist() == [T]
    np.testing.assert_allclose(abar[:T], ref[:T], rtol=1e-12, atol=0)
    assert abar[T] == pytest.approx(abar[T - 1] * (1 - 0.999), rel=1e-12)


@pytest.mark.parametrize("T", [1, 10, 20, 100, 1000])
def test_linear_alphas_cumprod_match_product_of_one_minus_beta(T):
    abar = np.array(DDIMScheduler(T, "linear").alphas_cumprod)
    scale = 1000.0 / T
    b0, b1 = 1e-4 * scale, min(0.02 * scale, 0.999)
    betas = np.linspace(b0, b1, T) if T > 1 else np.array([b0])
    ref = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    np.testing.assert_allclose(abar, ref, rtol=1e-10, atol=1e-300)


def test_linear_schedule_at_1000_steps_is_the_ddpm_one():
    # Ho et al. 2020: betas 1e-4 .. 0.02 over 1000 steps, abar_1000 ~= 4.04e-5.
    abar = DDIMScheduler(1000, "linear").alphas_cumprod
    assert abar[1000] == pytest.approx(4.0358e-5, rel=1e-3)
    assert abar[1] == pytest.approx(1 - 1e-4, rel=1e-12)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("T", [1, 2, 20, 100])
def test_alphas_cumprod_start_at_one_and_decrease_in_unit_interval(schedule, T):
    abar = np.array(DDIMScheduler(T, schedule).alphas_cumprod)
    assert abar[0] == 1.0
    assert np.all(np.diff(abar) < 0)
    assert np.all((abar > 0) & (abar <= 1))


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        DDIMScheduler(0)
    with pytest.raises(ValueError):
        DDIMScheduler(10, "sigmoid")
    assert DDIMScheduler(7, "linear").to_dict() == {"num_train_steps": 7, "schedule": "linear"}


# --------------------------------------------------------------------------- #
# Timesteps
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("T,n,expected", [
    (100, 4, [100, 75, 50, 25]),
    (20, 5, [20, 16, 12, 8, 4]),
    (20, 1, [20]),
    (20, 2, [20, 10]),
    (5, 5, [5, 4, 3, 2, 1]),
])
def test_timesteps_hand_cases(T, n, expected):
    assert DDIMScheduler(T).timesteps(n) == expected


@pytest.mark.parametrize("T", [1, 7, 20, 100])
def test_timesteps_properties(T):
    sched = DDIMScheduler(T)
    for n in sorted({1, 2, 3, 4, 8, 16, T} & set(range(1, T + 1))):
        ts = sched.timesteps(n)
        assert len(ts) == n
        assert all(type(t) is int for t in ts)  # noqa: E721 - Python ints fold into traced graphs
        assert ts[0] == T
        assert all(a > b for a, b in zip(ts, ts[1:]))
        assert 1 <= ts[-1]
        gaps = np.diff([*ts, 0])
        assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding


@pytest.mark.parametrize("n", [0, -1, 21, 100])
def test_timesteps_reject_out_of_range(n):
    with pytest.raises(ValueError):
        DDIMScheduler(20).timesteps(n)


# --------------------------------------------------------------------------- #
# Step function
# --------------------------------------------------------------------------- #
def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_deterministic_step_matches_ddim_formula(schedule):
    sched = DDIMScheduler(50, schedule)
    x0, xt = _rand(4, 3, seed=1), _rand(4, 3, seed=2)
    for t, tp in [(50, 40), (40, 1), (10, 9), (3, 1)]:
        a, ap = sched.alphas_cumprod[t], sched.alphas_cumprod[tp]
        eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
        ref = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps
        torch.testing.assert_close(sched.step(x0, t, tp, xt), ref, rtol=1e-12, atol=1e-12)


def test_stochastic_step_matches_ddim_formula():
    sched = DDIMScheduler(50)
    x0, xt, z = _rand(5, seed=1), _rand(5, seed=2), _rand(5, seed=3)
    t, tp, eta = 30, 20, 0.7
    a, ap = sched.alphas_cumprod[t], sched.alphas_cumprod[tp]
    sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
    ref = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eps + sigma * z
    torch.testing.assert_close(sched.step(x0, t, tp, xt, eta, z), ref, rtol=1e-12, atol=1e-12)
    assert sched.sigma(t, tp, eta) == pytest.approx(sigma, rel=1e-12)


def test_consistent_state_steps_onto_the_forward_process():
    """If x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps exactly, an eta = 0 step to t'
    lands on sqrt(abar_t') x0 + sqrt(1 - abar_t') eps (same x0, same eps)."""
    sched = DDIMScheduler(100)
    x0, eps = _rand(2, 6, seed=4), _rand(2, 6, seed=5)
    t = torch.full((2,), 80)
    xt = sched.add_noise(x0, eps, t)
    for tp in (60, 7, 1):
        torch.testing.assert_close(sched.step(x0, 80, tp, xt), sched.add_noise(x0, eps, torch.full((2,), tp)),
                                   rtol=1e-10, atol=1e-10)


def test_last_step_lands_on_the_prediction():
    sched = DDIMScheduler(20)
    x0, xt = _rand(7, seed=6), _rand(7, seed=7)
    for eta in (0.0, 1.0):
        assert torch.equal(sched.step(x0, 4, 0, xt, eta), x0)  # no noise needed at t' = 0


def test_step_is_pure_and_deterministic():
    sched = DDIMScheduler(20)
    x0, xt, z = _rand(3, 4, seed=8), _rand(3, 4, seed=9), _rand(3, 4, seed=10)
    x0c, xtc, zc = x0.clone(), xt.clone(), z.clone()
    ts = sched.timesteps(20) + [0]
    for eta, noise in [(0.0, None), (0.0, z), (1.0, z)]:
        for t, tp in zip(ts[:-1], ts[1:]):
            r1 = sched.step(x0, t, tp, xt, eta, noise)
            r2 = sched.step(x0, t, tp, xt, eta, noise)
            assert torch.equal(r1, r2)
    assert torch.equal(x0, x0c) and torch.equal(xt, xtc) and torch.equal(z, zc)  # inputs untouched
    # eta = 0 ignores any noise passed.
    assert torch.equal(sched.step(x0, 10, 9, xt, 0.0, z), sched.step(x0, 10, 9, xt, 0.0, None))


def test_eta_without_noise_raises():
    sched = DDIMScheduler(20)
    x = _rand(3)
    with pytest.raises(ValueError, match="noise"):
        sched.step(x, 10, 5, x, eta=0.5)


def test_add_noise_matches_closed_form():
    sched = DDIMScheduler(30, "linear")
    x0, eps = _rand(4, 2, 3, seed=11), _rand(4, 2, 3, seed=12)
    t = torch.tensor([0, 1, 17, 30])
    out = sched.add_noise(x0, eps, t)
    for b, tb in enumerate(t.tolist()):
        a = sched.alphas_cumprod[tb]
        torch.testing.assert_close(out[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0], x0[0])  # t = 0: no noise


# --------------------------------------------------------------------------- #
# DDIM (n = T, eta = 1) == ancestral DDPM, on a 1-D Gaussian with the exact predictor
# --------------------------------------------------------------------------- #
M, S = 1.5, 0.5


def optimal_x0(x_t: torch.Tensor, a: float) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(M, S^2), x_t = sqrt(a) x0 + sqrt(1-a) eps."""
    return M + math.sqrt(a) * S * S / (a * S * S + 1 - a) * (x_t - math.sqrt(a) * M)


def ddpm_coefficients(abar: tuple[float, ...], t: int) -> tuple[float, float, float]:
    """Posterior q(x_{t-1} | x_t, x0): mean coef1 * x0 + coef2 * x_t, variance beta_tilde."""
    a, ap = abar[t], abar[t - 1]
    beta = 1 - a / ap
    coef1 = math.sqrt(ap) * beta / (1 - a)
    coef2 = math.sqrt(1 - beta) * (1 - ap) / (1 - a)
    return coef1, coef2, (1 - ap) / (1 - a) * beta


def ddpm_sample(abar, T, n, g) -> torch.Tensor:
    x = torch.randn(n, generator=g, dtype=torch.float64)
    for t in range(T, 0, -1):
        c1, c2, var = ddpm_coefficients(abar, t)
        x = c1 * optimal_x0(x, abar[t]) + c2 * x + math.sqrt(var) * torch.randn(n, generator=g, dtype=torch.float64)
    return x


def ddpm_exact_moments(abar, T) -> tuple[float, float]:
    """The chain above is linear-Gaussian: propagate its mean and variance exactly."""
    mu, var = 0.0, 1.0
    for t in range(T, 0, -1):
        a = abar[t]
        c1, c2, v = ddpm_coefficients(abar, t)
        k = math.sqrt(a) * S * S / (a * S * S + 1 - a)
        A, c = c1 * k + c2, c1 * M * (1 - k * math.sqrt(a))
        mu, var = A * mu + c, A * A * var + v
    return mu, math.sqrt(var)


def ddim_sample(sched: DDIMScheduler, n_steps: int, eta: float, n: int, g) -> torch.Tensor:
    x = torch.randn(n, generator=g, dtype=torch.float64)
    ts = sched.timesteps(n_steps) + [0]
    for t, tp in zip(ts[:-1], ts[1:]):
        noise = torch.randn(n, generator=g, dtype=torch.float64) if (eta > 0 and tp > 0) else None
        x = sched.step(optimal_x0(x, sched.alphas_cumprod[t]), t, tp, x, eta, noise)
    return x


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddim_full_steps_eta_one_is_ancestral_ddpm(schedule):
    T, N = 20, 20000
    sched = DDIMScheduler(T, schedule)
    abar = sched.alphas_cumprod
    ddim = ddim_sample(sched, T, 1.0, N, torch.Generator().manual_seed(0))
    ddpm = ddpm_sample(abar, T, N, torch.Generator().manual_seed(1))
    mu, sd = ddpm_exact_moments(abar, T)
    tol = 0.012  # ~5 standard errors at N = 20000
    assert abs(ddim.mean().item() - ddpm.mean().item()) < 2 * tol
    assert abs(ddim.std().item() - ddpm.std().item()) < 2 * tol
    for x in (ddim, ddpm):
        assert abs(x.mean().item() - mu) < tol
        assert abs(x.std().item() - sd) < tol
    # The data distribution: the mean is exact; the plug-in predictor E[x0|x_t] drops
    # Var(x0|x_t) from every reverse step, so the spread is somewhat below S.
    assert abs(mu - M) < 1e-3
    assert 0.35 < sd <= S
    # Sensitivity: a deterministic sampler (eta = 0) is measurably different here,
    # so a wrong sigma in `step` would not pass the comparisons above.
    ddim0 = ddim_sample(sched, T, 0.0, N, torch.Generator().manual_seed(0))
    assert abs(ddim0.std().item() - sd) > 2 * tol
