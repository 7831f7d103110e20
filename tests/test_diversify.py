"""Serving-time diversification baselines (genattn.diversify) and their use in evaluate."""
from __future__ import annotations

import pytest
import torch

from genattn import diversify


def _scores(B=4, N=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, N + 1, generator=g) * 3
    s[:, 0] = float("-inf")  # padding
    s[:, 1:4] = float("-inf")  # seen
    return s


def test_gumbel_topk_at_low_temperature_is_the_plain_ranking_and_samples_at_high():
    s = _scores()
    cold = diversify.gumbel_topk(1e-4, seed=1)(s)
    assert torch.equal(cold.topk(10).indices, s.topk(10).indices)
    hot_a, hot_b = diversify.gumbel_topk(5.0, seed=1)(s), diversify.gumbel_topk(5.0, seed=2)(s)
    assert not torch.equal(hot_a.topk(10).indices, hot_b.topk(10).indices)
    # Seen and padding stay excluded whatever the noise.
    assert torch.isinf(hot_a[:, :4]).all()
    with pytest.raises(ValueError):
        diversify.gumbel_topk(0.0)


def test_mmr_lambda_one_keeps_the_order_and_lower_lambda_spreads_the_list():
    torch.manual_seed(0)
    # Items 1..50 in 5 tight clusters; scores favour cluster 0 strongly.
    centers = torch.randn(5, 8)
    emb = torch.cat([torch.zeros(1, 8), centers.repeat_interleave(10, 0) + 0.01 * torch.randn(50, 8)])
    s = torch.full((1, 51), 0.0)
    s[0, 1:] = torch.linspace(10, 0, 50)
    s[0, 0] = float("-inf")
    plain = s.topk(10).indices
    assert torch.equal(diversify.mmr(emb, 1.0, k=10)(s).topk(10).indices, plain)
    spread = diversify.mmr(emb, 0.3, k=10)(s).topk(10).indices[0]
    clusters = lambda idx: len({(int(i) - 1) // 10 for i in idx})  # noqa: E731
    assert clusters(plain[0]) == 1 and clusters(spread) == 5
    with pytest.raises(ValueError):
        diversify.mmr(emb, 1.5)


def test_mmr_never_recommends_seen_items():
    s = _scores(N=30)
    emb = torch.randn(31, 8)
    out = diversify.mmr(emb, 0.5, k=10, candidates=100)(s)  # more candidates than items
    top = out.topk(10).indices
    assert not ((top >= 1) & (top <= 3)).any() and not (top == 0).any()


def test_mc_dropout_turns_dropout_on_and_restores_every_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2), torch.nn.Dropout(0.0))
    model.eval()
    x = torch.ones(64, 4)
    with diversify.mc_dropout(model, 0.5):
        assert all(m.p == 0.5 and m.training for m in model if isinstance(m, torch.nn.Dropout))
        assert not torch.equal(model(x), model(x))
    assert [m.p for m in model if isinstance(m, torch.nn.Dropout)] == [0.2, 0.0]
    assert not any(m.training for m in model)


def test_mc_dropout_honours_its_seed_and_leaves_the_global_stream_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2))
    x = torch.ones(64, 4)

    def draw(seed):
        with diversify.mc_dropout(model, 0.5, seed=seed):
            return model(x)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_mc_dropout_evaluation_averages_passes(tiny_dataset):
    from conftest import tiny_config
    from genattn.data import item_popularity, leave_one_out
    from genattn.evaluation import eval_sets, evaluate
    from genattn.models import SASRec

    torch.manual_seed(0)
    model = SASRec(tiny_config("softmax", n_items=tiny_dataset.n_items, dropout=0.3))
    split = leave_one_out(tiny_dataset)
    kw = dict(popularity=item_popularity(split.train, tiny_dataset.n_items), n_users=tiny_dataset.n_users)
    test = eval_sets(split)["test"]
    one = evaluate(model, test, mc_dropout=0.3, seed=0, **kw)
    assert one == evaluate(model, test, mc_dropout=0.3, seed=0, **kw)  # the seed is honoured
    many = evaluate(model, test, mc_dropout=0.3, mc_passes=8, seed=0, **kw)
    plain = evaluate(model, test, **kw)
    # Averaging passes moves the ranking back toward the dropout-free one.
    assert abs(many["ndcg@10"] - plain["ndcg@10"]) <= abs(one["ndcg@10"] - plain["ndcg@10"]) + 0.02
    assert many != one
