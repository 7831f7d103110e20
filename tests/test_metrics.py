"""Tests for genattn.metrics (hand-computed cases) and genattn.evaluation
(compared with an independent, loop-based re-implementation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import randomize_generative, tiny_config
from genattn.data import item_popularity, leave_one_out, pad_left
from genattn.evaluation import eval_sets, evaluate, mask_seen
from genattn.metrics import (
    category_coverage,
    coverage,
    diversity_metrics,
    intra_list_diversity,
    mean_std,
    novelty,
    rank_metrics,
    ranks_from_scores,
)
from genattn.models import SASRec, Sampling


# --------------------------------------------------------------------------- #
# Ranking metrics
# --------------------------------------------------------------------------- #
def test_rank_metrics_hand_case():
    m = rank_metrics(np.array([0, 3, 15, 30]))
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 4) / 4)
    assert m["hr@20"] == pytest.approx(3 / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(17)) / 4)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 4 + 1 / 16) / 4)
    assert set(m) == {f"{n}@{k}" for n in ("hr", "ndcg", "mrr") for k in (10, 20)}


def test_rank_metrics_cutoff_boundary_and_custom_ks():
    m = rank_metrics(np.array([9, 10]), ks=(10,))
    assert m == pytest.approx({"hr@10": 0.5, "ndcg@10": 0.5 / math.log2(11), "mrr@10": 0.5 / 10})
    m = rank_metrics([0, 1, 2], ks=(1, 2))
    assert m["hr@1"] == pytest.approx(1 / 3) and m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)


def test_rank_metrics_rejects_no_users():
    with pytest.raises(ValueError):
        rank_metrics(np.array([], dtype=int))


def test_ranks_from_scores_counts_strictly_higher_items():
    ninf = -np.inf
    scores = np.array([
        [ninf, 0.1, 0.5, 0.3, 0.5],
        [ninf, 0.1, 0.5, 0.3, 0.5],
        [ninf, 0.1, 0.5, 0.3, 0.5],
        [ninf, 0.9, ninf, 0.3, 0.2],   # masked (seen) items never outrank anything
        [ninf, 1.0, 1.0, 1.0, 1.0],
    ])
    targets = np.array([3, 2, 4, 4, 3])
    # Ties are resolved in the target's favour (documented: count strictly higher):
    # target 2 ties with item 4 -> rank 0; a constant score row ranks every target first.
    assert ranks_from_scores(scores, targets).tolist() == [2, 0, 0, 2, 0]


# --------------------------------------------------------------------------- #
# Diversity metrics
# --------------------------------------------------------------------------- #
def test_coverage_ignores_padding_and_duplicates():
    topk = np.array([[1, 2, 3], [3, 4, 0]])
    assert coverage(topk, n_items=10) == pytest.approx(0.4)
    assert coverage(np.array([[5, 5]]), n_items=5) == pytest.approx(0.2)


GENRES = np.array([
    [0, 0, 0],  # padding
    [1, 0, 0],  # item 1: {A}
    [1, 1, 0],  # item 2: {A, B}
    [0, 0, 1],  # item 3: {C}
    [0, 0, 0],  # item 4: {}
], dtype=bool)


def test_ild_with_genres_is_mean_pairwise_jaccard_distance():
    # [1, 2, 3]: d(1,2) = 1 - 1/2, d(1,3) = 1, d(2,3) = 1            -> 2.5 / 3
    # [1, 4, 4]: d(1,4) = 1 (union 1, inter 0) twice, d(4,4) = 0 (empty union) -> 2 / 3
    topk = np.array([[1, 2, 3], [1, 4, 4]])
    assert intra_list_diversity(topk, genres=GENRES) == pytest.approx((2.5 / 3 + 2 / 3) / 2)
    assert intra_list_diversity(np.array([[1, 1, 1]]), genres=GENRES) == pytest.approx(0.0)
    # Genres win over embeddings when both are given.
    emb = np.random.default_rng(0).normal(size=(5, 4))
    assert intra_list_diversity(topk, genres=GENRES, embeddings=emb) == pytest.approx((2.5 / 3 + 2 / 3) / 2)


def test_ild_with_embeddings_is_mean_pairwise_cosine_distance():
    emb = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]], dtype=float)
    c = 1 - 1 / math.sqrt(2)
    # [1, 2, 3]: d(1,2) = 1, d(1,3) = d(2,3) = 1 - 1/sqrt(2);  [1, 4]: opposite -> 2
    assert intra_list_diversity(np.array([[1, 2, 3]]), embeddings=emb) == pytest.approx((1 + 2 * c) / 3, rel=1e-6)
    assert intra_list_diversity(np.array([[1, 4]]), embeddings=emb) == pytest.approx(2.0, rel=1e-6)
    # Cosine distance is scale free.
    assert intra_list_diversity(np.array([[1, 2, 3]]), embeddings=emb * 7.5) == pytest.approx((1 + 2 * c) / 3,
                                                                                                 rel=1e-6)


def test_ild_edge_cases():
    assert intra_list_diversity(np.array([[1], [2]]), genres=GENRES) == 0.0
    with pytest.raises(ValueError):
        intra_list_diversity(np.array([[1, 2]]))


def test_novelty_is_mean_self_information():
    pop = np.array([0, 10, 5, 1, 0])
    topk = np.array([[1, 2], [3, 4]])
    # p = 10/20, 5/20, 1/20, and an unseen item counts as seen once: 1/20.
    expected = (1 + 2 + math.log2(20) + math.log2(20)) / 4
    assert novelty(topk, pop, n_users=20) == pytest.approx(expected)


def test_novelty_with_repeat_consumption_stays_non_negative():
    train_seqs = [np.array([1, 1, 1, 2]), np.array([1, 3])]  # user 0 consumed item 1 three times
    pop = item_popularity(train_seqs, 3)  # what train() hands to evaluate()
    # Item 1 was had by both users (p = 1, 0 bits), item 2 by one (p = 1/2, 1 bit).
    only_1 = novelty(np.array([[1]]), pop, n_users=len(train_seqs))
    assert only_1 >= 0.0, f"negative self-information {only_1}"
    assert novelty(np.array([[1, 2]]), pop, n_users=len(train_seqs)) == pytest.approx((0 + 1) / 2)


def test_diversity_metrics_bundle():
    pop = np.array([0, 10, 5, 1, 0])
    topk = np.array([[1, 2, 3], [1, 4, 4]])
    d = diversity_metrics(topk, 4, pop, 20, genres=GENRES)
    assert d == pytest.approx({"coverage@10": coverage(topk, 4),
                               "ild@10": intra_list_diversity(topk, genres=GENRES),
                               "novelty@10": novelty(topk, pop, 20),
                               "cc@10": category_coverage(topk, GENRES)})
    assert "cc@10" not in diversity_metrics(topk, 4, pop, 20, embeddings=np.eye(5))  # no categories, no cc


def test_category_coverage_is_the_share_of_categories_in_each_list():
    genres = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)  # item 0 = padding
    # user 1: items 1, 2 -> categories {0, 1} = 2/3; user 2: items 3, 1 -> {0, 2} = 2/3; user 3: item 3 twice -> 1/3
    topk = np.array([[1, 2], [3, 1], [3, 3]])
    assert category_coverage(topk, genres) == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    assert category_coverage(np.array([[1, 2, 3]]), genres) == pytest.approx(1.0)


def test_mean_std_uses_sample_std():
    out = mean_std([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}])
    assert out["a"] == pytest.approx({"mean": 2.0, "std": math.sqrt(2.0)})
    assert out["b"] == pytest.approx({"mean": 2.0, "std": 0.0})
    assert mean_std([{"a": 5.0}]) == {"a": {"mean": 5.0, "std": 0.0}}


# --------------------------------------------------------------------------- #
# evaluation.mask_seen
# --------------------------------------------------------------------------- #
def test_mask_seen_masks_exactly_the_seen_items():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 7, generator=g)
    orig = scores.clone()
    seen = [np.array([1, 3, 3]), np.array([], dtype=np.int64), np.array([6]), np.array([2, 1, 5, 4])]
    mask_seen(scores, seen)
    for r, s in enumerate(seen):
        for c in range(7):
            if c in set(s.tolist()):
                assert scores[r, c] == float("-inf")
            else:
                assert scores[r, c] == orig[r, c]


def test_mask_seen_with_no_rows():
    scores = torch.zeros(0, 5)
    mask_seen(scores, [])
    assert scores.shape == (0, 5)


# --------------------------------------------------------------------------- #
# evaluation.evaluate vs an independent re-computation
# --------------------------------------------------------------------------- #
def reference_metrics(model, data, pop, n_users, genres, sampling=None, noise_fn=None):
    L = model.cfg.max_len
    ranks, tops = [], []
    for u in range(len(data.targets)):
        seq = torch.from_numpy(pad_left([data.inputs[u]], L))
        noise = noise_fn(u) if noise_fn else None
        with torch.no_grad():
            s = model.scores(seq, sampling, noise)[0].double().numpy()
        for i in set(data.seen[u].tolist()):
            s[i] = -np.inf
        t = int(data.targets[u])
        ranks.append(sum(1 for i in range(len(s)) if s[i] > s[t]))
        tops.append(np.argsort(-s, kind="stable")[:10])
    ranks = np.array(ranks)
    out = {}
    for k in (10, 20):
        out[f"hr@{k}"] = float(np.mean(ranks < k))
        out[f"ndcg@{k}"] = float(np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks]))
        out[f"mrr@{k}"] = float(np.mean([1 / (r + 1) if r < k else 0.0 for r in ranks]))
    out["coverage@10"] = len({int(i) for top in tops for i in top}) / model.cfg.n_items
    dists = []
    emb = model.item_emb.weight.detach().double().numpy()
    for top in tops:
        pair = []
        for x in range(10):
            for y in range(10):
                if x == y:
                    continue
                a, b = int(top[x]), int(top[y])
                if genres is not None:
                    ga, gb = set(np.flatnonzero(genres[a])), set(np.flatnonzero(genres[b]))
                    union = ga | gb
                    pair.append(1 - len(ga & gb) / len(union) if union else 0.0)
                else:
                    ea, eb = emb[a], emb[b]
                    pair.append(1 - ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb)))
        dists.append(np.mean(pair))
    out["ild@10"] = float(np.mean(dists))
    out["novelty@10"] = float(np.mean([-math.log2(max(pop[i], 1) / n_users) for top in tops for i in top]))
    if genres is not None:
        out["cc@10"] = float(np.mean([len(set().union(*(set(np.flatnonzero(genres[int(i)])) for i in top)))
                                      / genres.shape[1] for top in tops]))
    return out


@pytest.mark.parametrize("use_genres", [True, False], ids=["genres", "embeddings"])
def test_evaluate_matches_reference(tiny_dataset, use_genres):
    ds = tiny_dataset
    split = leave_one_out(ds)
    pop = item_popularity(split.train, ds.n_items)
    torch.manual_seed(0)
    model = SASRec(tiny_config("softmax", n_items=ds.n_items))
    model.train()
    genres = ds.item_genres if use_genres else None
    assert ds.item_genres is not None
    for name, data in eval_sets(split).items():
        got = evaluate(model, data, popularity=pop, n_users=ds.n_users, genres=genres, batch_size=16)
        assert model.training  # mode restored
        ref = reference_metrics(model.eval(), data, pop, ds.n_users, genres)
        model.train()
        assert set(got) == set(ref)
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-6), name
        for k in ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "mrr@20", "coverage@10"):
            assert 0.0 <= got[k] <= 1.0
        assert got["mrr@10"] <= got["ndcg@10"] <= got["hr@10"] <= got["hr@20"]
        assert 0.0 <= got["ild@10"] <= (1.0 if use_genres else 2.0)
        assert got["novelty@10"] >= 0.0


def test_eval_sets_use_the_leave_one_out_split(tiny_dataset):
    split = leave_one_out(tiny_dataset)
    sets = eval_sets(split)
    for u, s in enumerate(tiny_dataset.sequences):
        assert sets["valid"].targets[u] == s[-2] and sets["test"].targets[u] == s[-1]
        np.testing.assert_array_equal(sets["valid"].inputs[u], s[:-2])
        np.testing.assert_array_equal(sets["test"].inputs[u], s[:-1])
        np.testing.assert_array_equal(sets["test"].seen[u], s[:-1])


def test_evaluate_stochastic_sampling_is_seeded(tiny_dataset):
    ds = tiny_dataset
    split = leave_one_out(ds)
    pop = item_popularity(split.train, ds.n_items)
    torch.manual_seed(0)
    model = randomize_generative(SASRec(tiny_config("vae", n_items=ds.n_items)), scale=1.5).eval()
    data = eval_sets(split)["test"]
    samp = Sampling(mode="sample", n_samples=1)
    kw = dict(popularity=pop, n_users=ds.n_users, sampling=samp, batch_size=1000)
    a, b = evaluate(model, data, seed=1, **kw), evaluate(model, data, seed=1, **kw)
    assert a == b
    # Same numbers as drawing the seeded noise by hand, one user at a time.
    from genattn.models import make_noise
    noise = make_noise(model, samp, len(data.targets), seed=1)
    ref = reference_metrics(model, data, pop, ds.n_users, None, samp, lambda u: noise[u:u + 1])
    assert a == pytest.approx(ref, rel=1e-5, abs=1e-6)
    c = evaluate(model, data, seed=2, **kw)
    assert c != a
