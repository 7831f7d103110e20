"""Time gaps between events (model.time_buckets): the ages the data pipeline hands the model,
the buckets the model makes of them, a neutral start, paired seeds, the packed pair MLPs, and
the refusals (no ages, no timestamps). Exporting and serving them: test_time_export.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genattn.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from genattn.data import (build_dataset, leave_one_out, pad_ages, pad_left, synthetic_interactions, training_ages,
                          training_windows)
from genattn.data.readers import Interactions
from genattn.evaluation import eval_sets
from genattn.models import SASRec
from conftest import (KIND_IDS, KIND_LAYOUTS, assert_packing_changes_nothing, random_batch,
                      randomize_generative, tiny_config)

BUCKETS = 16


def ages_for(seq: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Ages (seconds before the newest event) of a left-padded batch: 0 at the newest and at
    padding, growing toward the oldest, with ties (same-second events) and long gaps."""
    g = np.random.default_rng(seed)
    gaps = g.choice([0.0, 1.0, 30.0, 4000.0, 9e5], size=seq.shape)
    ages = np.flip(np.cumsum(np.flip(gaps, 1), 1), 1) - gaps[:, -1:]
    ages = np.where(seq.numpy() != 0, ages, 0.0)
    return torch.from_numpy(np.ascontiguousarray(ages, dtype=np.float32))


def test_dataset_keeps_timestamps_parallel_to_items_in_time_order():
    inter = Interactions(users=np.array([2, 1, 2, 1, 2, 1]), items=np.array([10, 11, 12, 13, 14, 15]),
                         timestamps=np.array([50.0, 7.0, 5.0, 9.0, 60.0, 8.0]), source="t")
    ds = build_dataset(inter)
    assert [s.tolist() for s in ds.sequences] == [[2, 6, 4], [3, 1, 5]]  # internal ids of 11 15 13 / 12 10 14
    assert [t.tolist() for t in ds.times] == [[7.0, 8.0, 9.0], [5.0, 50.0, 60.0]]
    split = leave_one_out(ds)
    assert [t.tolist() for t in split.train_times] == [[7.0], [5.0]]
    assert [t.tolist() for t in split.test_times] == [[7.0, 8.0], [5.0, 50.0]]
    assert split.valid_times is split.train_times
    sets = eval_sets(split)
    assert sets["test"].times is split.test_times


def test_ages_are_laid_out_like_the_items_they_belong_to():
    ds = build_dataset(synthetic_interactions(n_users=30, n_items=30, seq_len=(3, 23), seed=1))
    split = leave_one_out(ds)
    L = 8
    x, _ = training_windows(split.train, L)
    ages = training_ages(split.train_times, L)
    assert ages.shape == x.shape and ages.dtype == np.float32
    assert np.all(ages[x == 0] == 0) and np.all(ages[:, -1] == 0) and np.all(ages >= 0)
    # Within a window, older events are at least as old (non-increasing left to right).
    assert np.all(np.where(x[:, :-1] != 0, ages[:, :-1] >= ages[:, 1:], True))
    # Row for row the same windows: rebuild each window's ages from its own events' times.
    row = 0
    for s, t in zip(split.train, split.train_times):
        xs, ts = s[:-1], t[:-1]
        for end in range(len(xs), 0, -L):
            lo = max(0, end - L)
            n = end - lo
            assert x[row, L - n:].tolist() == xs[lo:end].tolist()
            np.testing.assert_allclose(ages[row, L - n:], ts[end - 1] - ts[lo:end])
            row += 1
    assert row == len(x)
    # Evaluation rows: the newest L events' ages where pad_left puts those events.
    padded, got = pad_left(split.test_inputs, L), pad_ages(split.test_times, L)
    for row, t in enumerate(split.test_times):
        n = min(len(t), L)
        assert np.all(padded[row, :L - n] == 0) and np.all(got[row, :L - n] == 0)
        np.testing.assert_allclose(got[row, L - n:], t[-1] - t[-n:])


def test_gap_buckets_are_log2_seconds_clamped_to_the_last_bucket():
    torch.manual_seed(0)
    model = SASRec(tiny_config("softmax", time_buckets=4, max_len=4))
    ages = torch.tensor([[100.0, 3.0, 0.0, 0.0]])
    qi = torch.arange(4)
    b = model.gap_buckets(ages, qi)[0]
    # query 2 (age 0): key 0 is 100 s older -> floor(log2(101)) = 6 -> the last bucket, 3;
    # key 1 is 3 s older -> 2; itself and the same-second query 3 -> 0; later keys -> 0.
    assert b[2].tolist() == [3, 2, 0, 0]
    assert b[1].tolist() == [3, 0, 0, 0]  # 97 s: floor(log2(98)) = 6, clamped
    assert b[0].tolist() == [0, 0, 0, 0]
    assert model.gap_buckets(ages, qi[-1:]).shape == (1, 1, 4)


def test_gap_buckets_are_exact_at_the_powers_of_two():
    """1 + gap = 2^k is bucket k exactly, 2^k - 1 bucket k - 1: log2 alone misses some of these by an
    ulp (ONNX Runtime's gives 14.99... for 2^15), and whole-second gaps land on them often."""
    n = 40
    model = SASRec(tiny_config("softmax", time_buckets=n, max_len=2))
    k = torch.arange(1, n, dtype=torch.float64)
    for span, want in ((2.0 ** k, k), (2.0 ** k - 1, k - 1)):
        ages = torch.stack([span - 1, torch.zeros_like(span)], 1).float()  # key 0 is `span - 1` s older
        got = model.gap_buckets(ages, torch.tensor([1]))[:, 0, 0]
        # the exact log2 of the float32 span the model forms (past 2^24 s, ~194 days, 1 + gap rounds)
        exact = np.floor(np.log2((ages[:, 0] + 1).double().numpy()))
        assert got.tolist() == exact.astype(int).tolist()
        assert got[:20].tolist() == want[:20].long().tolist()


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_time_gaps_start_neutral_and_keep_the_seed_pairing(kind, blocks):
    """Every non-time parameter is initialised as without time gaps (a run with them is paired
    with its run without), and the new terms start at zero effect: the same scores."""
    def build(buckets):
        torch.manual_seed(4)
        return SASRec(tiny_config(kind, blocks, time_buckets=buckets)).eval()

    plain, timed = build(0), build(BUCKETS)
    p_plain, p_timed = dict(plain.named_parameters()), dict(timed.named_parameters())
    extra = sorted(set(p_timed) - set(p_plain))
    assert set(p_plain) <= set(p_timed)
    assert all(n.endswith("time_bias") or n.endswith(".gap") for n in extra), extra
    assert any(n.endswith("time_bias") for n in extra)
    assert any(n.endswith(".gap") for n in extra) == (kind != "softmax")
    for n in p_plain:
        assert torch.equal(p_plain[n], p_timed[n]), n
    seq = random_batch(5, timed.cfg.max_len, timed.cfg.n_items, seed=2)
    ages = ages_for(seq)
    with torch.no_grad():
        torch.testing.assert_close(timed.scores(seq, ages=ages), plain.scores(seq))


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_trained_time_terms_change_the_scores_and_only_through_the_ages(kind, blocks):
    torch.manual_seed(1)
    model = randomize_generative(SASRec(tiny_config(kind, blocks, time_buckets=BUCKETS))).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.time_bias.normal_(0.0, 1.0)
    seq = random_batch(5, model.cfg.max_len, model.cfg.n_items, seed=2, min_len=3)
    ages = ages_for(seq)
    with torch.no_grad():
        a = model.scores(seq, ages=ages)
        b = model.scores(seq, ages=ages * 1000)
        # Ages only enter as gaps: shifting every event by the same time changes nothing.
        c = model.scores(seq, ages=torch.where(seq != 0, ages + 500.0, ages))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="time gaps"):
        model.scores(seq)
    with pytest.raises(ValueError, match="shape"):
        model.scores(seq, ages=ages[:, 1:])


@pytest.mark.parametrize("kind,blocks", [kb for kb in KIND_LAYOUTS if kb[0] != "softmax"],
                         ids=[i for i in KIND_IDS if i != "softmax"])
def test_packed_pairs_carry_the_gap_buckets(kind, blocks):
    """Training packs the pair MLPs' inputs (PairPack): with time gaps the loss and every
    gradient equal those of evaluating every pair."""
    torch.manual_seed(0)
    model = randomize_generative(SASRec(tiny_config(kind, blocks, time_buckets=BUCKETS,
                                                    posterior_gain=1.0, train_prior_noise=True))).train()
    grads = assert_packing_changes_nothing(model, ages=lambda seq: ages_for(seq, seed=1))
    assert any(n.endswith(".gap") for n in grads) and any(n.endswith("time_bias") for n in grads)


def test_time_buckets_are_validated():
    with pytest.raises(ConfigError, match="time_buckets"):
        ModelConfig(time_buckets=-1)
    with pytest.raises(ConfigError, match="time_buckets"):
        ModelConfig(time_buckets=65)


def test_training_with_time_gaps_evaluates_with_ages(tmp_path, tiny_dataset):
    from genattn.training import train

    run = RunConfig(model=tiny_config("vae", "last", time_buckets=BUCKETS, n_items=0),
                    train=TrainConfig(epochs=2, batch_size=32, seed=0, threads=1, eval_every=1))
    result = train(run, tmp_path / "ck", dataset=tiny_dataset, progress=False)
    hist = result.checkpoint.metrics["history"]
    assert len(hist) == 2 and all(0.0 <= h["valid_ndcg@10"] <= 1.0 for h in hist)
    assert result.checkpoint.run.model.time_buckets == BUCKETS
    trained = [b.attn.time_bias for b in result.checkpoint.model.blocks]
    assert any(float(t.detach().abs().sum()) > 0 for t in trained)  # the bias learned something


def test_training_with_time_gaps_needs_timestamps(tmp_path, tiny_dataset):
    from dataclasses import replace

    from genattn.training import train

    run = RunConfig(model=tiny_config("softmax", time_buckets=BUCKETS, n_items=0),
                    train=TrainConfig(epochs=1, batch_size=32, seed=0, threads=1))
    with pytest.raises(ConfigError, match="timestamps"):
        train(run, tmp_path / "ck", dataset=replace(tiny_dataset, times=None), progress=False)


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_serving_path_with_time_gaps_equals_the_full_forward_at_the_newest_position(kind, blocks):
    """The serving path runs only the newest query row of the last block; with time gaps that row
    must see the same gap buckets as in the full forward."""
    torch.manual_seed(2)
    model = randomize_generative(SASRec(tiny_config(kind, blocks, time_buckets=BUCKETS))).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.time_bias.normal_(0.0, 1.0)
    seq = random_batch(6, model.cfg.max_len, model.cfg.n_items, seed=5)
    ages = ages_for(seq, seed=3)
    with torch.no_grad():
        full, _ = model.run_blocks(seq, ages=ages)
        torch.testing.assert_close(model.scores(seq, ages=ages), model.logits(full[:, -1]), rtol=1e-5, atol=1e-5)


def test_training_keeps_timestamps_only_for_a_model_over_time_gaps(tiny_dataset):
    """A float64 per event is dropped up front when nothing reads it (the caller's dataset keeps its own)."""
    from genattn.training import _prepare_data

    tc = TrainConfig(epochs=1, batch_size=32, seed=0, threads=1)
    cpu = torch.device("cpu")
    plain = _prepare_data(RunConfig(model=tiny_config("softmax", n_items=0), train=tc), tc, cpu, tiny_dataset)
    timed = _prepare_data(RunConfig(model=tiny_config("softmax", time_buckets=BUCKETS, n_items=0), train=tc), tc,
                          cpu, tiny_dataset)
    assert plain.ds.times is None and plain.sets["test"].times is None and plain.ages is None
    assert timed.ds.times is not None and timed.sets["test"].times is not None and timed.ages is not None
    assert tiny_dataset.times is not None


@pytest.mark.parametrize("kind,blocks", [kb for kb in KIND_LAYOUTS if kb[0] != "softmax"],
                         ids=[i for i in KIND_IDS if i != "softmax"])
def test_sample_average_with_time_gaps_is_the_mean_of_single_samples(kind, blocks):
    """S samples repeat each row's masks and gap buckets rather than bucketing again: the served
    mean equals the mean of S single-sample passes, each with its slice of the noise."""
    from dataclasses import replace

    from genattn.models import Sampling, make_noise

    torch.manual_seed(4)
    model = randomize_generative(SASRec(tiny_config(kind, blocks, time_buckets=BUCKETS))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("time_bias") or name.endswith(".gap"):
                p.normal_(0.0, 1.0)
    one = Sampling(mode="sample") if kind == "vae" else Sampling(n_steps=3, eta=1.0, start="noise")
    four = replace(one, n_samples=4)
    n1 = model.noise_size(one)
    seq = random_batch(3, model.cfg.max_len, model.cfg.n_items, seed=21)
    ages = ages_for(seq, seed=2)
    noise = make_noise(model, four, len(seq), seed=3)
    with torch.no_grad():
        served = model.scores(seq, four, noise, ages)
        singles = torch.stack([model.scores(seq, one, noise[:, s * n1:(s + 1) * n1], ages) for s in range(4)])
    torch.testing.assert_close(served[:, 1:], singles.mean(0)[:, 1:], atol=1e-5, rtol=1e-5)
