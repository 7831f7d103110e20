"""Sampled softmax and SASRec's bce (genattn/models/loss.py) against their definitions, and training with them."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import KIND_IDS, KIND_LAYOUTS, random_batch, tiny_config
from genattn.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from genattn.data import leave_one_out
from genattn.evaluation import eval_sets, evaluate
from genattn.models import SampledBCE, SampledSoftmax, SASRec, full_ce
from genattn.training import make_loss, train, warn_objective_for_loss


def _setup(n_items=40, d=8, p=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_items + 1, d, generator=g)
    h = torch.randn(p, d, generator=g)
    y = torch.randint(1, n_items + 1, (p,), generator=g)
    pop = np.r_[0, np.arange(1, n_items + 1)].astype(float)  # item i seen i times
    return h, y, weight, pop


def test_logq_corrected_uniform_sampling_estimates_full_ce():
    h, y, weight, pop = _setup()
    full = full_ce(h, y, weight)
    ss = SampledSoftmax(40, 200_000, pop, in_batch=False, generator=torch.Generator().manual_seed(1))
    sampled = ss(h, y, weight)
    # log(exp(s_y) + Z_hat) vs log Z: the same up to the positive counted once more and sampling noise.
    assert torch.allclose(sampled, full, atol=0.05), (sampled - full).abs().max()
    # Without the correction the estimate is off by log(M / N) per row: the correction matters.
    uncorrected = torch.logsumexp(h @ weight[ss.draw()].T, 1) - (h * weight[y]).sum(1)
    assert (uncorrected - full).abs().mean() > 5.0


def test_in_batch_negatives_are_corrected_by_their_presence_probability():
    # P = 4,000 targets drawn from popularity over 40 items: every item is in the batch,
    # at most once after deduplication, so the in-batch set alone already is the whole
    # catalog and the loss must equal full CE. Counting popular items P p_j times instead
    # would shrink their logits by log(P p_j) (~log 100 here) and badly underestimate Z.
    _, _, weight, pop = _setup()
    g = torch.Generator().manual_seed(5)
    y = torch.multinomial(torch.from_numpy(pop).float(), 4000, replacement=True, generator=g)
    h = torch.randn(4000, 8, generator=g)
    ss = SampledSoftmax(40, 0, pop, in_batch=True)
    assert len(torch.unique(y)) == 40
    assert torch.allclose(ss(h, y, weight), full_ce(h, y, weight), atol=0.02)  # rare items: presence < 1


@pytest.mark.parametrize("sampler", ["popularity", "mixed"])
def test_non_uniform_samplers_are_corrected_too(sampler):
    h, y, weight, pop = _setup()
    ss = SampledSoftmax(40, 200_000, pop, sampler=sampler, in_batch=False, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ss(h, y, weight), full_ce(h, y, weight), atol=0.1)


def test_draws_never_padding_and_follow_popularity():
    pop = np.zeros(11)
    pop[[3, 7]] = [1.0, 3.0]
    ss = SampledSoftmax(10, 4000, pop, sampler="popularity", generator=torch.Generator().manual_seed(0))
    counts = np.bincount(ss.draw().numpy(), minlength=11)
    assert set(np.flatnonzero(counts)) == {3, 7}
    assert 2.6 < counts[7] / counts[3] < 3.4
    uni = SampledSoftmax(10, 4000, pop, sampler="uniform", generator=torch.Generator().manual_seed(0)).draw()
    assert int(uni.min()) >= 1 and int(uni.max()) <= 10 and len(torch.unique(uni)) == 10


def test_accidental_hits_are_masked():
    # In-batch only, every row has the same target: the only candidate is each row's own
    # positive, so once masked the softmax has one entry and the loss is exactly 0.
    _, _, weight, pop = _setup()
    h = torch.randn(5, 8)
    y = torch.full((5,), 7)
    ss = SampledSoftmax(40, 0, pop, in_batch=True)
    assert torch.equal(ss(h, y, weight), torch.zeros(5))


def test_gradient_touches_only_candidate_and_target_rows():
    h, y, weight, pop = _setup()
    weight.requires_grad_(True)
    ss = SampledSoftmax(40, 5, pop, in_batch=False, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    expected_neg = set(torch.randint(1, 41, (5,), generator=g).tolist())
    ss(h, y, weight).sum().backward()
    touched = set(torch.nonzero(weight.grad.abs().sum(1)).flatten().tolist())
    assert touched <= expected_neg | set(y.tolist()) and set(y.tolist()) <= touched
    assert 0 not in touched


def test_bad_sampler_settings_are_refused():
    pop = np.ones(11)
    with pytest.raises(ValueError, match="negative sampler"):
        SampledSoftmax(10, 4, pop, sampler="zipf")
    with pytest.raises(ValueError, match="n_items \\+ 1"):
        SampledSoftmax(10, 4, np.ones(5))
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(ConfigError, match="negatives >= 1 or in_batch"):
        TrainConfig(loss="sampled", negatives=0, in_batch_negatives=False)
    with pytest.raises(ConfigError, match="negative_sampler"):
        TrainConfig(negative_sampler="zipf")


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_every_kind_trains_with_sampled_softmax(kind, blocks):
    torch.manual_seed(0)
    cfg = tiny_config(kind, blocks)
    model = SASRec(cfg)
    seq = random_batch(6, cfg.max_len, cfg.n_items, seed=1)
    tgt = torch.where(seq != 0, torch.randint(1, cfg.n_items + 1, seq.shape, generator=torch.Generator().manual_seed(2)), 0)
    tc = TrainConfig(loss="sampled", negatives=8, negative_sampler="mixed")
    loss_fn = make_loss(tc, cfg.n_items, np.r_[0, np.ones(cfg.n_items)], torch.device("cpu"), seed=0)
    out = model(seq, tgt, rng=torch.Generator().manual_seed(0), loss=loss_fn)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grad_rows = torch.nonzero(model.item_emb.weight.grad.abs().sum(1)).flatten()
    assert len(grad_rows) < cfg.n_items + 1  # only candidates, targets and history rows move
    if kind != "softmax":
        assert "ce_posterior" in out and torch.isfinite(out["ce_posterior"])


def test_sampled_softmax_learns_the_synthetic_process(tmp_path, tiny_dataset):
    model = ModelConfig(max_len=8, d_model=16, n_heads=2, n_blocks=2, dropout=0.1, attention="softmax")
    base = dict(epochs=6, batch_size=32, lr=5e-3, device="cpu", threads=1, patience=100, seed=0)
    full = train(RunConfig(model=model, train=TrainConfig(**base)), tmp_path / "full", progress=False,
                 dataset=tiny_dataset)
    sampled = train(RunConfig(model=ModelConfig(**{**model.__dict__}),
                              train=TrainConfig(**base, loss="sampled", negatives=16)),
                    tmp_path / "sampled", progress=False, dataset=tiny_dataset)
    hist = sampled.checkpoint.metrics["history"]
    assert hist[-1]["ce"] < hist[0]["ce"]
    # It learns (beats the untrained model) and lands near full CE on the tiny catalog.
    sets = eval_sets(leave_one_out(tiny_dataset))
    untrained = evaluate(SASRec(sampled.checkpoint.run.model), sets["valid"],
                         popularity=sampled.checkpoint.popularity, n_users=tiny_dataset.n_users)
    assert sampled.metrics["valid"]["ndcg@10"] > untrained["ndcg@10"] + 0.02
    assert sampled.metrics["valid"]["ndcg@10"] > 0.6 * full.metrics["valid"]["ndcg@10"]
    assert sampled.checkpoint.run.train.loss == "sampled"


def test_full_ce_that_cannot_fit_is_refused_before_training(tmp_path):
    from genattn.training import check_full_ce_fits

    tc = TrainConfig(batch_size=128)
    with pytest.raises(ConfigError, match="--loss sampled"):
        check_full_ce_fits(tc, 10**9, 50, torch.device("cpu"), 1)
    check_full_ce_fits(tc, 10_000, 50, torch.device("cpu"), 1)  # fits: no error
    check_full_ce_fits(TrainConfig(loss="sampled"), 10**9, 50, torch.device("cpu"), 1)


# ---- bce: SASRec's loss, one uniform negative per position ----------------------------

def test_bce_negatives_are_uniform_never_padding_never_the_target():
    n = 10
    y = torch.randint(1, n + 1, (200_000,), generator=torch.Generator().manual_seed(0))
    neg = SampledBCE(n, generator=torch.Generator().manual_seed(1)).draw(y)
    assert int(neg.min()) >= 1 and int(neg.max()) <= n
    assert not bool((neg == y).any())
    # Uniform over the other N - 1 items: for targets equal to 3, each other item ~1/9.
    counts = np.bincount(neg[y == 3].numpy(), minlength=n + 1)[1:]
    share = counts / counts.sum()
    assert share[2] == 0 and np.all(np.abs(np.delete(share, 2) - 1 / 9) < 0.01)


def test_bce_is_the_binary_cross_entropy_of_positive_and_drawn_negative():
    h, y, weight, _ = _setup()
    loss = SampledBCE(40, generator=torch.Generator().manual_seed(4))
    got = loss(h, y, weight)
    neg = SampledBCE(40, generator=torch.Generator().manual_seed(4)).draw(y)
    pos_l, neg_l = (h * weight[y]).sum(1), (h * weight[neg]).sum(1)
    want = -torch.log(torch.sigmoid(pos_l)) - torch.log(1 - torch.sigmoid(neg_l))
    assert torch.allclose(got, want, atol=1e-5)


def test_bce_gradient_touches_only_the_positive_and_drawn_rows():
    h, y, weight, _ = _setup(p=6)
    weight.requires_grad_(True)
    neg = SampledBCE(40, generator=torch.Generator().manual_seed(3)).draw(y)
    SampledBCE(40, generator=torch.Generator().manual_seed(3))(h, y, weight).sum().backward()
    touched = set(torch.nonzero(weight.grad.abs().sum(1)).flatten().tolist())
    assert touched == set(y.tolist()) | set(neg.tolist())
    assert 0 not in touched


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_every_kind_trains_with_bce_and_padding_positions_are_masked(kind, blocks):
    torch.manual_seed(0)
    cfg = tiny_config(kind, blocks)
    model = SASRec(cfg)
    seq = random_batch(6, cfg.max_len, cfg.n_items, seed=1, min_len=2)
    tgt = torch.where(seq != 0, torch.randint(1, cfg.n_items + 1, seq.shape, generator=torch.Generator().manual_seed(2)), 0)
    loss_fn = make_loss(TrainConfig(loss="bce"), cfg.n_items, np.r_[0, np.ones(cfg.n_items)], torch.device("cpu"), 0)
    out = model(seq, tgt, rng=torch.Generator().manual_seed(0), loss=loss_fn)
    assert torch.isfinite(out["loss"])
    # Padding positions (target 0) give no loss: hiding more targets changes nothing for the rest,
    # and the loss is the per-target mean of the kept positions.
    calls = []

    def spy(h, y, weight):
        calls.append(y.clone())
        return loss_fn(h, y, weight)

    model(seq, tgt, rng=torch.Generator().manual_seed(0), loss=spy)
    assert all(int(c.min()) >= 1 and len(c) == int((tgt != 0).sum()) for c in calls)
    assert len(calls) == (1 if kind == "softmax" else 2)  # generative: both CE terms are BCE terms


def _draws_per_step(kind, blocks, tc):
    """How many times the loss drew negatives in one training forward pass of this kind."""
    torch.manual_seed(0)
    cfg = tiny_config(kind, blocks)
    seq = random_batch(6, cfg.max_len, cfg.n_items, seed=1, min_len=2)
    tgt = torch.where(seq != 0, torch.randint(1, cfg.n_items + 1, seq.shape, generator=torch.Generator().manual_seed(2)), 0)
    loss_fn = make_loss(tc, cfg.n_items, np.r_[0, np.ones(cfg.n_items)], torch.device("cpu"), 0)
    draw, drawn = loss_fn.draw, []
    loss_fn.draw = lambda *a: drawn.append(draw(*a)) or drawn[-1]
    seen = []

    class Spy:  # what each CE term was scored against: the same table rows for one draw
        def bind(self, y):
            bound = loss_fn.bind(y)
            return lambda h, y_, w: seen.append(getattr(bound, "drawn", None)) or bound(h, y_, w)

    out = SASRec(cfg)(seq, tgt, rng=torch.Generator().manual_seed(0), loss=Spy())
    assert torch.isfinite(out["loss"])
    return len(drawn), seen


@pytest.mark.parametrize("loss", ["bce", "sampled"])
@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_every_ce_term_of_a_step_ranks_against_one_draw(kind, blocks, loss):
    """Softmax has one CE term a step, a generative kind two: both see the same negatives, so no
    kind learns from more negatives per step than another."""
    n, seen = _draws_per_step(kind, blocks, TrainConfig(loss=loss, negatives=16))
    assert n == 1
    assert len(seen) == (1 if kind == "softmax" else 2)
    assert all(torch.equal(s, seen[0]) for s in seen)


@pytest.mark.parametrize("loss", ["bce", "sampled"])
def test_share_negatives_false_draws_per_term_as_earlier_runs_did(loss):
    n, _ = _draws_per_step("vae", "last", TrainConfig(loss=loss, negatives=16, share_negatives=False))
    assert n == 2
    n, _ = _draws_per_step("softmax", "all", TrainConfig(loss=loss, negatives=16, share_negatives=False))
    assert n == 1


@pytest.mark.parametrize("loss", ["bce", "sampled"])
def test_a_bound_draw_scores_like_the_loss_drawing_it_itself(loss):
    h, y, weight, pop = _setup()

    def make():
        g = torch.Generator().manual_seed(5)
        return SampledBCE(40, generator=g) if loss == "bce" else SampledSoftmax(40, 8, pop, generator=g)

    assert torch.allclose(make().bind(y)(h, y, weight), make()(h, y, weight))
    bound = make().bind(y)
    assert torch.equal(bound(h, y, weight), bound(h, y, weight))  # no new draw on the second term


def test_runs_recorded_before_the_option_read_as_drawing_per_term():
    from genattn.checkpoint import saved_run_config

    assert saved_run_config({"model": {"attention": "vae"}, "train": {"loss": "bce"}}).train.share_negatives is False
    assert TrainConfig().share_negatives is True


def test_bce_trains_end_to_end_and_is_recorded(tmp_path, tiny_dataset):
    model = ModelConfig(max_len=8, d_model=16, n_heads=2, n_blocks=2, dropout=0.1, attention="softmax")
    res = train(RunConfig(model=model, train=TrainConfig(epochs=4, batch_size=32, lr=5e-3, device="cpu",
                                                         threads=1, patience=100, seed=0, loss="bce")),
                tmp_path / "bce", progress=False, dataset=tiny_dataset)
    hist = res.checkpoint.metrics["history"]
    assert hist[-1]["ce"] < hist[0]["ce"]
    assert res.checkpoint.run.train.loss == "bce"
    sets = eval_sets(leave_one_out(tiny_dataset))
    untrained = evaluate(SASRec(res.checkpoint.run.model), sets["valid"],
                         popularity=res.checkpoint.popularity, n_users=tiny_dataset.n_users)
    assert res.metrics["valid"]["ndcg@10"] > untrained["ndcg@10"] + 0.02


@pytest.mark.parametrize("posterior_ce, loss, warned", [
    ("generative", "bce", True),    # the VAE's default, chosen under full CE, trained worse under BCE
    ("all", "bce", False),
    ("generative", "full", False),
    ("generative", "sampled", False),
])
def test_vae_default_objective_under_bce_is_warned_about_once(tmp_path, tiny_dataset, caplog, posterior_ce,
                                                              loss, warned):
    model = ModelConfig(max_len=8, d_model=16, n_heads=2, n_blocks=1, attention="vae", posterior_ce=posterior_ce)
    run = RunConfig(model=model, train=TrainConfig(epochs=1, batch_size=32, device="cpu", threads=1, loss=loss,
                                                   negatives=4))
    with caplog.at_level(logging.WARNING, logger="genattn.training"):
        train(run, tmp_path / "ck", progress=False, dataset=tiny_dataset)
    said = [r.getMessage() for r in caplog.records if "posterior_ce" in r.getMessage()]
    assert len(said) == int(warned), said
    if warned:
        assert "--set model.posterior_ce=all" in said[0]
    assert ModelConfig(attention="vae").posterior_ce == "generative"  # the case the warning is for
    softmax = RunConfig(model=ModelConfig(attention="softmax"), train=TrainConfig(loss="bce"))
    assert warn_objective_for_loss(softmax) is False


def test_bce_needs_two_items():
    with pytest.raises(ValueError, match="at least 2 items"):
        SampledBCE(1)
