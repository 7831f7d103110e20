"""Tests for the SASRec backbone and its attention kinds (genattn/models).

Every layout runs: softmax, and vae / diffusion with generative_blocks "all" and
"last". Generative output layers are randomized (conftest.randomize_generative)
so that priors, denoisers and noise actually influence the result.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import replace

import pytest
import torch

from conftest import KIND_IDS, KIND_LAYOUTS, assert_packing_changes_nothing, random_batch, tiny_config
from genattn.config import ConfigError, ModelConfig
from genattn.models import SASRec, Sampling, default_sampling, make_noise

GEN_LAYOUTS = [kb for kb in KIND_LAYOUTS if kb[0] != "softmax"]
GEN_IDS = [i for i in KIND_IDS if i != "softmax"]

# Deterministic samplings of each kind (None = the kind's default).
DETERMINISTIC = {
    "softmax": [None],
    "vae": [None, Sampling(mode="mean")],
    "diffusion": [None, Sampling(n_steps=1), Sampling(n_steps=4), Sampling(n_steps=20)],
}
# Stochastic samplings with the number of noise maps per generative layer, by hand.
STOCHASTIC = {
    "vae": [(Sampling(mode="sample", n_samples=1), 1)],
    "diffusion": [(Sampling(n_steps=4, start="noise"), 1),
                  (Sampling(n_steps=4, eta=1.0), 3),
                  (Sampling(n_steps=3, eta=0.5, start="noise"), 3)],
}
STOCHASTIC_CASES = [(k, b, s, d) for k, b in GEN_LAYOUTS for s, d in STOCHASTIC[k]]
STOCHASTIC_IDS = [f"{k}-{b}-" + (f"sample{s.n_samples}" if k == "vae" else f"steps{s.n_steps}-eta{s.eta}-{s.start}")
                  for k, b, s, _ in STOCHASTIC_CASES]

ATOL = 1e-5


def hidden(model: SASRec, seq: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.run_blocks(seq, **kw)[0]


# --------------------------------------------------------------------------- #
# Causal masking
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_future_items_do_not_change_past_positions(make_model, kind, blocks):
    model = make_model(kind, blocks)
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(4, L, N, seed=1, min_len=L)  # full rows: every position is real
    seq[3, :2] = 0  # and one left-padded row
    base = hidden(model, seq)
    for i in range(L - 1):
        pert = seq.clone()
        pert[:, i + 1:] = seq[:, i + 1:] % N + 1  # every future position gets a different item
        h = hidden(model, pert)
        torch.testing.assert_close(h[:, :i + 1], base[:, :i + 1], atol=ATOL, rtol=0)
        # Not vacuous: the perturbed positions themselves do change.
        assert (h[:, i + 1:] - base[:, i + 1:]).abs().amax() > 1e-3


@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_causality_holds_for_stochastic_sampling_with_fixed_noise(make_model, kind, blocks):
    """Same noise tensor, future item changed: past positions unchanged."""
    model = make_model(kind, blocks)
    L, N = model.cfg.max_len, model.cfg.n_items
    samp = STOCHASTIC[kind][-1][0]
    seq = random_batch(2, L, N, seed=2, min_len=L)
    noise = torch.randn(2, expanded_noise_size(model, samp), generator=torch.Generator().manual_seed(0))
    base = hidden(model, seq, sampling=samp, noise=noise)
    pert = seq.clone()
    pert[:, -1] = seq[:, -1] % N + 1
    h = hidden(model, pert, sampling=samp, noise=noise)
    torch.testing.assert_close(h[:, :-1], base[:, :-1], atol=ATOL, rtol=0)
    assert (h[:, -1] - base[:, -1]).abs().amax() > 1e-3


# --------------------------------------------------------------------------- #
# Padding
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_leading_padding_length_is_irrelevant(make_model, kind, blocks):
    """Positions count from the right end, so [a b c], [0 a b c] and the full
    left-padded row give identical states at the real positions and identical scores."""
    model = make_model(kind, blocks)
    L = model.cfg.max_len
    real = torch.tensor([[7, 3, 12, 25, 9]])
    n = real.shape[1]
    ref = hidden(model, real)  # no padding at all, L = 5
    ref_scores = model.scores(real)
    for pad in range(1, L - n + 1):
        seq = torch.cat([torch.zeros(1, pad, dtype=torch.long), real], dim=1)
        torch.testing.assert_close(hidden(model, seq)[:, pad:], ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.scores(seq)[:, 1:], ref_scores[:, 1:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_padding_embedding_content_is_ignored(make_model, kind, blocks):
    model = make_model(kind, blocks)
    seq = torch.tensor([[0, 0, 0, 4, 17, 2, 30, 11]])
    assert seq.shape[1] == model.cfg.max_len
    n_pad = 3
    base = hidden(model, seq)
    with torch.no_grad():
        model.item_emb.weight[0] = torch.randn(model.cfg.d_model) * 5
        model.pos_emb.weight[:n_pad] = torch.randn(n_pad, model.cfg.d_model) * 5
    torch.testing.assert_close(hidden(model, seq)[:, n_pad:], base[:, n_pad:], atol=ATOL, rtol=0)
    # Not vacuous: the position embedding of a real position does matter.
    with torch.no_grad():
        model.pos_emb.weight[n_pad] += torch.randn(model.cfg.d_model) * 5
    assert (hidden(model, seq)[:, n_pad:] - base[:, n_pad:]).abs().amax() > 1e-3


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_rows_are_independent_of_batch_neighbours(make_model, kind, blocks):
    model = make_model(kind, blocks)
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(5, L, N, seed=3)
    seq[2] = 0  # a fully padded neighbour
    batched = model.scores(seq)
    for b in range(len(seq)):
        torch.testing.assert_close(model.scores(seq[b:b + 1])[:, 1:], batched[b:b + 1, 1:], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- #
# Finite outputs with fully padded rows
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_fully_padded_rows_stay_finite(make_model, kind, blocks):
    model = make_model(kind, blocks, dropout=0.2)
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(4, L, N, seed=4)
    seq[1] = 0
    for s in [seq, torch.zeros(3, L, dtype=torch.long)]:
        assert torch.isfinite(hidden(model, s)).all()
        sc = model.scores(s)
        assert torch.isinf(sc[:, 0]).all() and (sc[:, 0] < 0).all()  # padding never recommended
        assert torch.isfinite(sc[:, 1:]).all()
    # Training forward/backward with a fully padded row in the batch.
    model.train()
    full = random_batch(4, L + 1, N, seed=5)
    x, y = full[:, :-1].clone(), full[:, 1:].clone()
    y[x == 0] = 0
    x[1], y[1] = 0, 0
    out = model(x, y, rng=torch.Generator().manual_seed(0), beta=0.5)
    for k, v in out.items():
        assert torch.isfinite(v).all(), k
    out["loss"].backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


# --------------------------------------------------------------------------- #
# Serving path = last position of the full forward
# --------------------------------------------------------------------------- #
DET_CASES = [(k, b, s) for k, b in KIND_LAYOUTS for s in DETERMINISTIC[k]]
DET_IDS = [f"{k}-{b}-{'default' if s is None else f'{s.mode}-steps{s.n_steps}'}" for k, b, s in DET_CASES]


@pytest.mark.parametrize("kind,blocks,samp", DET_CASES, ids=DET_IDS)
def test_serving_scores_equal_full_forward_last_position(make_model, kind, blocks, samp):
    model = make_model(kind, blocks)
    seq = random_batch(6, model.cfg.max_len, model.cfg.n_items, seed=6)
    if samp is not None:
        assert model.noise_size(samp) == 0 and make_noise(model, samp, len(seq)) is None
    served = model.scores(seq, samp)
    full = model.logits(hidden(model, seq, sampling=samp)[:, -1])
    torch.testing.assert_close(served[:, 1:], full[:, 1:], atol=ATOL, rtol=0)
    assert served.shape == (6, model.cfg.n_items + 1)


def expanded_noise_size(model: SASRec, samp: Sampling) -> int:
    """Noise values per row that the *full* forward (all query rows) consumes."""
    c = model.cfg
    return sum(samp.draws(b.attn.weights.kind) * c.n_heads * c.max_len * c.max_len for b in model.blocks)


def expand_noise(model: SASRec, samp: Sampling, served: torch.Tensor, seed: int = 99) -> torch.Tensor:
    """Lay out the serving noise for the full forward: blocks in order, draws in order,
    each map (H, Lq, L); in the last block the serving map (H, 1, L) becomes the last
    query row of a (H, L, L) map whose other rows are unrelated filler noise."""
    c = model.cfg
    H, L = c.n_heads, c.max_len
    B = served.shape[0]
    g = torch.Generator().manual_seed(seed)
    parts, off = [], 0
    for n, block in enumerate(model.blocks):
        draws = samp.draws(block.attn.weights.kind)
        last = n == len(model.blocks) - 1
        for _ in range(draws):
            if last:
                chunk = served[:, off:off + H * L].reshape(B, H, 1, L)
                off += H * L
                full = torch.randn(B, H, L, L, generator=g)
                full[:, :, -1:, :] = chunk
                parts.append(full.reshape(B, -1))
            else:
                parts.append(served[:, off:off + H * L * L])
                off += H * L * L
    assert off == served.shape[1]
    return torch.cat(parts, dim=1) if parts else served[:, :0]


@pytest.mark.parametrize("kind,blocks,samp,draws", STOCHASTIC_CASES, ids=STOCHASTIC_IDS)
def test_stochastic_serving_matches_full_forward_with_same_noise(make_model, kind, blocks, samp, draws):
    model = make_model(kind, blocks)
    c = model.cfg
    H, L = c.n_heads, c.max_len
    n_gen = c.n_blocks if blocks == "all" else 1
    # Hand count: non-last generative blocks see L query rows, the last one only the newest.
    expected = draws * H * L * (L * (n_gen - 1) + 1)
    assert samp.draws(kind) == draws
    assert model.noise_size(samp) == expected
    seq = random_batch(3, L, c.n_items, seed=7)
    noise = make_noise(model, samp, len(seq), seed=11)
    assert noise.shape == (3, expected)
    served = model.scores(seq, samp, noise)
    full_noise = expand_noise(model, samp, noise)
    assert full_noise.shape == (3, expanded_noise_size(model, samp))
    full = model.logits(hidden(model, seq, sampling=samp, noise=full_noise)[:, -1])
    torch.testing.assert_close(served[:, 1:], full[:, 1:], atol=ATOL, rtol=0)
    # Wrong amount of noise is an error, not silently tolerated.
    with pytest.raises(ValueError):
        model.scores(seq, samp, noise[:, :-1])
    with pytest.raises(ValueError):
        model.scores(seq, samp, torch.cat([noise, noise[:, :1]], dim=1))
    with pytest.raises(ValueError):
        model.scores(seq, samp, None)


@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_sample_average_is_the_mean_of_single_sample_scores(make_model, kind, blocks):
    """n_samples = S serves the mean of S sampled score vectors, each sample reading its
    own consecutive slice of the user's noise row."""
    model = make_model(kind, blocks)
    one = Sampling(mode="sample") if kind == "vae" else Sampling(n_steps=3, eta=1.0, start="noise")
    four = replace(one, n_samples=4)
    n1 = model.noise_size(one)
    assert model.noise_size(four) == 4 * n1
    seq = random_batch(3, model.cfg.max_len, model.cfg.n_items, seed=21)
    noise = make_noise(model, four, len(seq), seed=3)
    served = model.scores(seq, four, noise)
    singles = torch.stack([model.scores(seq, one, noise[:, s * n1:(s + 1) * n1]) for s in range(4)])
    assert (singles[0, :, 1:] - singles[1, :, 1:]).abs().amax() > 1e-4  # the samples differ
    torch.testing.assert_close(served[:, 1:], singles.mean(0)[:, 1:], atol=ATOL, rtol=1e-5)
    # A deterministic sampling has one sample whatever n_samples says: no noise, same scores.
    det = replace(default_sampling(model.cfg), n_samples=4)
    assert model.noise_size(det) == 0
    torch.testing.assert_close(model.scores(seq, det), model.scores(seq, default_sampling(model.cfg)))


def test_noise_size_is_zero_for_softmax_and_deterministic_samplings(make_model):
    soft = make_model("softmax")
    for s, _ in STOCHASTIC["vae"] + STOCHASTIC["diffusion"]:
        assert soft.noise_size(s) == 0
    vae, dif = make_model("vae"), make_model("diffusion")
    assert vae.noise_size(Sampling(mode="mean")) == 0
    assert dif.noise_size(Sampling(n_steps=8, eta=0.0, start="zeros")) == 0
    # eta > 0 with one step draws nothing either (the last step lands on x0_hat).
    assert dif.noise_size(Sampling(n_steps=1, eta=1.0)) == 0


# --------------------------------------------------------------------------- #
# No target leakage
# --------------------------------------------------------------------------- #
def test_serving_api_takes_no_targets():
    for fn in (SASRec.scores, SASRec.user_state):
        params = inspect.signature(fn).parameters
        assert "targets" not in params and "target" not in params


@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_prior_path_in_training_ignores_targets(make_model, kind, blocks):
    """Capture both passes of the training forward at ln_f: the posterior pass must
    change with the targets, the prior (served) pass must not."""
    model = make_model(kind, blocks)
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(4, L, N, seed=8)
    t1, t2 = random_batch(4, L, N, seed=9), random_batch(4, L, N, seed=10)
    t1[seq == 0], t2[seq == 0] = 0, 0
    captured: list[torch.Tensor] = []
    hook = model.ln_f.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(seq, t1, rng=torch.Generator().manual_seed(0))
            model(seq, t2, rng=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert len(captured) == 4  # posterior, prior; posterior, prior
    post1, prior1, post2, prior2 = captured
    assert (post1 - post2).abs().amax() > 1e-3, "posterior path should see the targets"
    assert torch.equal(prior1, prior2)
    # ... and it is exactly the inference prior path with the default sampling.
    torch.testing.assert_close(prior1, hidden(model, seq), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_serving_path_never_touches_the_posterior(make_model, kind, blocks):
    model = make_model(kind, blocks).train()
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(3, L, N, seed=12)
    posterior = {n: p for n, p in model.named_parameters() if ".posterior." in n}
    assert posterior
    # Gradients: the training loss reaches the posterior, the serving scores do not.
    tgt = random_batch(3, L, N, seed=13)
    tgt[seq == 0] = 0
    model(seq, tgt, rng=torch.Generator().manual_seed(0))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in posterior.values())
    model.zero_grad(set_to_none=True)
    model.eval()
    samp, _ = STOCHASTIC[kind][-1]
    for s, noise in [(None, None), (samp, make_noise(model, samp, 3, seed=0))]:
        model.scores(seq, s, noise)[:, 1:].sum().backward()
        assert all(p.grad is None for p in posterior.values())
        model.zero_grad(set_to_none=True)


class _Serve(torch.nn.Module):
    def __init__(self, model: SASRec, samp: Sampling | None):
        super().__init__()
        self.model, self.samp = model, samp

    def forward(self, seq):
        return self.model.scores(seq, self.samp)


class _Posterior(torch.nn.Module):
    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, seq, targets):
        return self.model.run_blocks(seq, targets=targets, rng=torch.Generator().manual_seed(0))[0]


@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_traced_serving_graph_has_no_target_input_nor_posterior(make_model, kind, blocks):
    model = make_model(kind, blocks)
    seq = random_batch(2, model.cfg.max_len, model.cfg.n_items, seed=14)
    samp = Sampling(n_steps=2) if kind == "diffusion" else Sampling(mode="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        served = torch.jit.trace(_Serve(model, samp), seq)
        control = torch.jit.trace(_Posterior(model), (seq, seq), check_trace=False)
    graph = str(served.inlined_graph)
    assert len(list(served.graph.inputs())) == 2  # self, seq: nowhere to feed a target in
    assert "posterior" not in graph
    assert ("denoiser" if kind == "diffusion" else "prior") in graph  # the prior is in it
    assert "posterior" in str(control.inlined_graph)  # the check can see a posterior
    torch.testing.assert_close(served(seq)[:, 1:], model.scores(seq, samp)[:, 1:], atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- #
# Seeded randomness
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind,blocks,samp,draws", STOCHASTIC_CASES, ids=STOCHASTIC_IDS)
def test_stochastic_sampling_is_reproducible_under_a_seed(make_model, kind, blocks, samp, draws):
    model = make_model(kind, blocks)
    seq = random_batch(3, model.cfg.max_len, model.cfg.n_items, seed=15)
    n1, n2, n3 = (make_noise(model, samp, 3, seed=s) for s in (5, 5, 6))
    assert torch.equal(n1, n2) and not torch.equal(n1, n3)
    s1, s2, s3 = (model.scores(seq, samp, n) for n in (n1, n2, n3))
    assert torch.equal(s1, s2)
    assert (s1[:, 1:] - s3[:, 1:]).abs().amax() > 1e-4
    # An explicit generator gives the same stream as the seed.
    n4 = make_noise(model, samp, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(n1, n4)


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs", [
    dict(mode="median"), dict(start="ones"), dict(n_samples=0), dict(n_steps=0), dict(eta=-0.1),
])
def test_sampling_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)


def test_sampling_draw_counts():
    assert Sampling(mode="sample", n_samples=4).draws("vae") == 1  # per sample
    assert Sampling(mode="sample", n_samples=4).samples("vae") == 4
    assert Sampling(mode="mean", n_samples=4).draws("vae") == 0
    assert Sampling(mode="mean", n_samples=4).samples("vae") == 1  # nothing to average
    assert Sampling(n_steps=5).draws("diffusion") == 0
    assert Sampling(n_steps=5, start="noise").draws("diffusion") == 1
    assert Sampling(n_steps=5, eta=0.3).draws("diffusion") == 4
    assert Sampling(n_steps=5, eta=0.3, start="noise").draws("diffusion") == 5
    assert Sampling(mode="sample", n_steps=5, eta=1, start="noise").draws("softmax") == 0


def test_more_sampling_steps_than_training_steps_is_rejected(make_model):
    model = make_model("diffusion")
    seq = random_batch(1, model.cfg.max_len, model.cfg.n_items)
    model.scores(seq, Sampling(n_steps=model.cfg.diffusion_steps))
    with pytest.raises(ValueError, match="steps"):
        model.scores(seq, Sampling(n_steps=model.cfg.diffusion_steps + 1))


@pytest.mark.parametrize("kwargs,field", [
    (dict(attention="transformer"), "attention"),
    (dict(generative_blocks="first"), "generative_blocks"),
    (dict(d_model=30, n_heads=4), "d_model"),
    (dict(schedule="sqrt"), "schedule"),
    (dict(max_len=0), "max_len"),
    (dict(d_model=0), "d_model"),
    pytest.param(dict(n_heads=0), "n_heads"),
    (dict(n_blocks=0), "n_blocks"),
    (dict(pair_hidden=0), "pair_hidden"),
    (dict(diffusion_steps=0, train_sample_steps=0), "diffusion_steps"),
    (dict(diffusion_steps=10, train_sample_steps=11), "train_sample_steps"),
    (dict(train_sample_steps=0), "train_sample_steps"),
])
def test_model_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    pytest.param(dict(dropout=1.5), "dropout"),
    pytest.param(dict(dropout=-0.1), "dropout"),
    pytest.param(dict(logstd_min=2.0, logstd_max=-5.0), "logstd"),
    pytest.param(dict(beta=-1.0), "beta"),
    pytest.param(dict(gamma=-1.0), "gamma"),
])
def test_model_config_rejects_unchecked_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_model_requires_catalog_size():
    with pytest.raises(ValueError):
        SASRec(ModelConfig(n_items=0))


def test_sequences_longer_than_max_len_are_rejected(make_model):
    model = make_model("softmax")
    with pytest.raises(ValueError, match="max_len"):
        model.scores(torch.ones(1, model.cfg.max_len + 1, dtype=torch.long))


# --------------------------------------------------------------------------- #
# Training step
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_a_few_adamw_steps_decrease_the_loss(make_model, kind, blocks):
    model = make_model(kind, blocks).train()
    L, N = model.cfg.max_len, model.cfg.n_items
    full = random_batch(8, L + 1, N, seed=16, min_len=4)
    x, y = full[:, :-1].clone(), full[:, 1:].clone()
    y[x == 0] = 0

    def losses() -> dict[str, float]:
        with torch.no_grad():
            out = model(x, y, rng=torch.Generator().manual_seed(123), beta=0.1)
        return {k: float(v) for k, v in out.items()}

    before = losses()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    for _ in range(15):
        opt.zero_grad()
        model(x, y, rng=rng, beta=0.1)["loss"].backward()
        opt.step()
    after = losses()
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after["ce"] < before["ce"]  # the served (prior) path learned too


# --------------------------------------------------------------------------- #
# Objective options against collapse (docs/model.md)
# --------------------------------------------------------------------------- #
def _prior_params(model: SASRec) -> list[torch.nn.Parameter]:
    w = model.blocks[-1].attn.weights
    return list((w.prior if w.kind == "vae" else w.denoiser).parameters())


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
@pytest.mark.parametrize("prior_ce", ["through", "backbone"])
def test_prior_ce_backbone_leaves_the_prior_to_the_bound(make_model, kind, prior_ce):
    """With beta = 0 only the two CE terms remain: "through" trains the prior by the
    prior-path CE, "backbone" must give the prior no gradient at all, while the
    backbone still learns from the prior path."""
    model = make_model(kind, "last", prior_ce=prior_ce, train_prior_noise=True).train()
    L, N = model.cfg.max_len, model.cfg.n_items
    seq = random_batch(4, L, N, seed=30, min_len=L)
    tgt = random_batch(4, L, N, seed=31, min_len=L)
    model(seq, tgt, rng=torch.Generator().manual_seed(0), beta=0.0)["loss"].backward()
    prior_grad = sum(float(p.grad.abs().sum()) for p in _prior_params(model) if p.grad is not None)
    if prior_ce == "through":
        assert prior_grad > 0
    else:
        assert prior_grad == 0.0
    assert model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
def test_stochastic_prior_path_in_training_draws_from_the_generator(make_model, kind):
    """train_prior_noise: the prior path samples (different generator seeds, different
    prior-path states); without it the prior path is deterministic."""
    L, N = 8, 30
    seq = random_batch(3, L, N, seed=32)

    def prior_state(model, seed):
        captured = []
        hook = model.ln_f.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
        with torch.no_grad():
            model(seq, seq, rng=torch.Generator().manual_seed(seed))
        hook.remove()
        return captured[1]  # posterior pass first, then the prior pass

    noisy = make_model(kind, "last", train_prior_noise=True).train()
    assert (prior_state(noisy, 0) - prior_state(noisy, 1)).abs().amax() > 1e-4
    plain = make_model(kind, "last", train_prior_noise=False).train()
    torch.testing.assert_close(prior_state(plain, 0), prior_state(plain, 1))


def test_posterior_gain_makes_a_fresh_posterior_follow_the_target(make_model):
    """Unrandomised (fresh) models: without the skip path the posterior mean is the
    same whatever the target; with posterior_gain it moves toward the keys that
    explain the target, by exactly gain * (a - max a)."""
    L, N = 8, 30
    seq = random_batch(2, L, N, seed=33, min_len=L)
    t1, t2 = random_batch(2, L, N, seed=34, min_len=L), random_batch(2, L, N, seed=35, min_len=L)

    def post_mean(model, tgt):
        out = []
        hook = model.blocks[-1].attn.weights.posterior.register_forward_hook(lambda m, i, o: out.append(o[0]))
        with torch.no_grad():
            model(seq, tgt, rng=torch.Generator().manual_seed(0))
        hook.remove()
        return out[0]

    plain = make_model("vae", "last", randomize=False)
    assert torch.equal(post_mean(plain, t1), post_mean(plain, t2))
    skip = make_model("vae", "last", randomize=False, posterior_gain=2.0)
    assert (post_mean(skip, t1) - post_mean(skip, t2)).abs().amax() > 1e-3
    assert "blocks.1.attn.weights.posterior.gain" in dict(skip.named_parameters())
    assert "blocks.1.attn.weights.posterior.gain" not in dict(plain.named_parameters())


def test_prior_ce_is_validated():
    with pytest.raises(ConfigError, match="prior_ce"):
        ModelConfig(prior_ce="sometimes")


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
def test_posterior_ce_generative_keeps_the_backbone_out_of_the_posterior_path(make_model, kind):
    """posterior_ce = "generative": with gamma = 0 (no prior-path CE) the backbone gets no
    gradient at all, while the posterior still learns from its CE; with "all" it does."""
    L, N = 8, 30
    seq = random_batch(4, L, N, seed=40, min_len=L)
    tgt = random_batch(4, L, N, seed=41, min_len=L)
    grads = {}
    for mode in ("all", "generative"):
        model = make_model(kind, "last", posterior_ce=mode, gamma=0.0, posterior_gain=1.0).train()
        out = model(seq, tgt, rng=torch.Generator().manual_seed(0), beta=0.1)
        out["loss"].backward()
        named = dict(model.named_parameters())
        grads[mode] = (named["item_emb.weight"].grad, named["blocks.1.attn.weights.posterior.gain"].grad)
        if mode == "all":
            ref = out["loss"].detach()
        else:  # same value, different gradient routing
            torch.testing.assert_close(out["loss"].detach(), ref)
    assert grads["all"][0].abs().sum() > 0
    assert grads["generative"][0] is None or grads["generative"][0].abs().sum() == 0
    assert grads["generative"][1].abs().sum() > 0


@pytest.mark.parametrize("blocks", ["all", "last"])
def test_seeds_are_paired_every_kind_shares_the_backbone_initialisation(blocks):
    def build(kind, seed):
        torch.manual_seed(seed)
        return SASRec(tiny_config(kind, blocks) if kind != "softmax" else tiny_config("softmax", recency_bias=False))

    for seed in (0, 3):
        soft = dict(build("softmax", seed).named_parameters())
        for kind in ("vae", "diffusion"):
            gen = dict(build(kind, seed).named_parameters())
            shared = [n for n in gen if n in soft]
            assert len(shared) == len(soft)  # every softmax parameter exists in the generative model
            for n in shared:
                assert torch.equal(gen[n], soft[n]), n
    # The generative parts still depend on the seed, and differ between seeds.
    a, b = (dict(build("vae", s).named_parameters()) for s in (0, 1))
    own = [n for n in a if ".attn.weights." in n and "w_in" in n]
    assert own and all(not torch.equal(a[n], b[n]) for n in own)
    assert torch.equal(dict(build("vae", 0).named_parameters())[own[0]], a[own[0]])  # reproducible


@pytest.mark.parametrize("posterior_ce", ["all", "generative"])
@pytest.mark.parametrize("kind,blocks", GEN_LAYOUTS, ids=GEN_IDS)
def test_packed_pair_mlps_give_the_loss_and_gradients_of_evaluating_every_pair(make_model, kind, blocks,
                                                                                posterior_ce):
    """Training evaluates the pair MLPs only on allowed keys of real query rows (PairPack): the
    skipped entries are masked or left out of the bound, so nothing may change but the work."""
    model = make_model(kind, blocks, posterior_ce=posterior_ce, train_sample_steps=2).train()
    assert_packing_changes_nothing(model)
