"""Multi-interest aggregation of S sampled score vectors and their agreement
(genattn/models/aggregate.py), and their use in evaluation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import randomize_generative, tiny_config
from genattn.data import leave_one_out
from genattn.evaluation import eval_sets, evaluate, user_signals
from genattn.models import SASRec, Sampling
from genattn.models.aggregate import aggregate, confidence

NEG = float("-inf")


def _scores(lists: list[list[int]], n: int = 8) -> torch.Tensor:
    """(1, S, n) scores whose top lists are `lists` (first = best), other items far below."""
    s = torch.full((1, len(lists), n), -10.0)
    for j, items in enumerate(lists):
        for r, i in enumerate(items):
            s[0, j, i] = 10.0 - r
    return s


def test_interleave_takes_each_samples_next_best_and_drops_duplicates():
    s = _scores([[1, 2, 3], [2, 4, 5]])
    items, scores = aggregate(s, 3, "interleave")
    assert items.tolist() == [[1, 2, 4]]  # rank 1 of both (1, 2), then rank 2: 2 is listed, 4 is new
    assert torch.allclose(scores, s.mean(1).gather(1, items))


def test_interleave_equals_the_round_robin_definition_and_its_prefixes_are_shorter_interleaves():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(4, 6, 30, generator=g)
    s[:, :, 0] = NEG
    for k in (1, 4, 9):
        items, _ = aggregate(s, k, "interleave")
        top = s.topk(k, dim=-1).indices
        for b in range(len(s)):
            want = []
            for r in range(k):  # rank r of every sample in order, each new item once
                for j in range(s.shape[1]):
                    i = int(top[b, j, r])
                    if i not in want:
                        want.append(i)
            assert items[b].tolist() == want[:k]
    long_items, _ = aggregate(s, 9, "interleave")
    assert torch.equal(long_items[:, :4], aggregate(s, 4, "interleave")[0])


def test_vote_counts_lists_of_its_own_depth_whatever_the_output_length():
    from genattn.models.aggregate import vote

    s = _scores([[1, 2, 3], [2, 4, 5], [2, 1, 6]])
    items, _ = vote(s, 6, depth=1)  # counts only each sample's first item: 2 twice, 1 once
    assert items[0, :2].tolist() == [2, 1]
    assert torch.equal(vote(s, 3, depth=3)[0], aggregate(s, 3, "vote")[0])


def test_vote_puts_consensus_first_then_mean_score():
    s = _scores([[1, 2, 3], [2, 4, 5], [2, 1, 6]])
    items, _ = aggregate(s, 3, "vote")
    assert items[0, 0] == 2 and items[0, 1] == 1  # in 3 lists, then in 2
    assert items[0, 2] in (3, 4, 6, 5)


def test_mean_is_the_top_of_the_mean_scores():
    s = torch.randn(3, 4, 20)
    items, vals = aggregate(s, 5, "mean")
    assert torch.equal(items, s.mean(1).topk(5).indices) and torch.allclose(vals, s.mean(1).topk(5).values)


@pytest.mark.parametrize("how", ["mean", "interleave", "vote"])
def test_excluded_items_never_return_and_lists_are_distinct(how):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 4, 30, generator=g)
    s[:, :, :10] = NEG  # padding and 9 seen items
    items, _ = aggregate(s, 10, how)
    assert int(items.min()) >= 10
    assert all(len(set(row)) == 10 for row in items.tolist())


def test_confidence_is_the_mean_pairwise_overlap_of_the_samples_lists():
    assert confidence(_scores([[1, 2, 3], [1, 2, 3]]), 3).item() == pytest.approx(1.0)
    assert confidence(_scores([[1, 2, 3], [4, 5, 6]]), 3).item() == pytest.approx(0.0)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 4, 25, generator=g)
    k = 6
    tops = s.topk(k, dim=-1).indices
    for b in range(5):
        pairs = [len(set(tops[b, i].tolist()) & set(tops[b, j].tolist())) / k
                 for i, j in itertools.permutations(range(4), 2)]
        assert confidence(s, k)[b].item() == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="at least 2 samples"):
        confidence(s[:, :1], k)


def test_bad_aggregate_is_refused():
    with pytest.raises(ValueError, match="aggregate must be one of"):
        aggregate(torch.zeros(1, 2, 5), 2, "median")


def _model_and_data(tiny_dataset):
    torch.manual_seed(0)
    model = randomize_generative(SASRec(tiny_config("vae", "last", n_items=tiny_dataset.n_items)), scale=1.0)
    split = leave_one_out(tiny_dataset)
    return model.eval(), eval_sets(split), split


def test_evaluation_reads_aggregated_lists(tiny_dataset):
    model, sets, split = _model_and_data(tiny_dataset)
    from genattn.data import item_popularity

    kw = dict(popularity=item_popularity(split.train, tiny_dataset.n_items), n_users=tiny_dataset.n_users,
              genres=tiny_dataset.item_genres)
    samp = Sampling(mode="sample", n_samples=4)
    out = {how: evaluate(model, sets["test"], sampling=samp, seed=0, aggregate=how, **kw)
           for how in ("mean", "interleave", "vote")}
    for r in out.values():
        assert 0 <= r["ndcg@10"] <= r["hr@10"] <= r["hr@20"] <= 1 and 0 < r["cc@10"] <= 1
    assert out["interleave"] != out["mean"]  # the lists differ
    with pytest.raises(ValueError, match="n_samples >= 2"):
        evaluate(model, sets["test"], sampling=Sampling(mode="sample"), aggregate="vote", **kw)


def test_user_signals_rank_like_evaluate_and_give_confidence(tiny_dataset):
    model, sets, split = _model_and_data(tiny_dataset)
    from genattn.data import item_popularity

    samp = Sampling(mode="sample", n_samples=4)
    sig = user_signals(model, sets["test"], sampling=samp, seed=3, batch_size=7)
    r = evaluate(model, sets["test"], sampling=samp, seed=3, batch_size=7,
                 popularity=item_popularity(split.train, tiny_dataset.n_items), n_users=tiny_dataset.n_users)
    assert np.mean(sig["rank"] < 10) == pytest.approx(r["hr@10"])
    n = len(sets["test"].targets)
    assert all(len(v) == n for v in sig.values())
    assert np.all((sig["confidence"] >= 0) & (sig["confidence"] <= 1)) and np.all(sig["max_prob"] <= 1)
    soft = user_signals(model, sets["test"], sampling=None)
    assert "confidence" not in soft and len(soft["entropy"]) == n


@pytest.mark.parametrize("how", ["interleave", "vote"])
def test_aggregation_and_confidence_trace_into_onnx_without_loops_or_random_ops(tmp_path, how):
    """What the docstring promises: plain tensor ops that export and run in ONNX Runtime as in torch
    (the serving graph can carry them)."""
    import onnx
    import onnxruntime as ort

    class Head(torch.nn.Module):
        def forward(self, scores):
            items, vals = aggregate(scores, 5, how)
            return items, vals, confidence(scores, 5)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 40, generator=g)
    x[:, :, :3] = NEG
    path = tmp_path / "agg.onnx"
    from genattn_export.graph import known_export_warnings_ignored

    with known_export_warnings_ignored():
        torch.onnx.export(Head().eval(), (x,), str(path), input_names=["scores"],
                          output_names=["items", "vals", "conf"], dynamo=True, opset_version=18)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Loop", "If", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
                      "RandomUniformLike", "Multinomial", "Bernoulli"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        y = torch.randn(3, 4, 40, generator=torch.Generator().manual_seed(seed))
        items, vals, conf = sess.run(None, {"scores": y.numpy()})
        t_items, t_vals, t_conf = Head()(y)
        assert np.array_equal(items, t_items.numpy())
        np.testing.assert_allclose(vals, t_vals.numpy(), rtol=1e-5)
        np.testing.assert_allclose(conf, t_conf.numpy(), rtol=1e-5)
