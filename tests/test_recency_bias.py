"""The learned recency bias (model.recency_bias): a neutral start that keeps seeds paired, a bias
that moves attention by recency only, and a model with it exported and served like torch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genattn.models import SASRec
from conftest import KIND_IDS, KIND_LAYOUTS, random_batch, randomize_generative, tiny_config


@pytest.mark.parametrize("kind,blocks", KIND_LAYOUTS, ids=KIND_IDS)
def test_recency_bias_starts_neutral_and_keeps_the_seed_pairing(kind, blocks):
    def build(on):
        torch.manual_seed(4)
        return SASRec(tiny_config(kind, blocks, recency_bias=on)).eval()

    plain, biased = build(False), build(True)
    p_plain, p_biased = dict(plain.named_parameters()), dict(biased.named_parameters())
    extra = sorted(set(p_biased) - set(p_plain))
    assert extra == [f"blocks.{b}.attn.recency_bias" for b in range(len(biased.blocks))]
    for n in p_plain:
        assert torch.equal(p_plain[n], p_biased[n]), n
    assert p_biased[extra[0]].shape == (biased.cfg.max_len, biased.cfg.n_heads)
    seq = random_batch(5, biased.cfg.max_len, biased.cfg.n_items, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(biased.scores(seq), plain.scores(seq))


def test_a_strong_bias_points_softmax_at_one_recency_and_training_moves_it():
    torch.manual_seed(0)
    model = randomize_generative(SASRec(tiny_config("softmax", recency_bias=True))).eval()
    seen = []
    hook = model.blocks[-1].attn.weights.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.recency_bias[1].fill_(50.0)  # the item before the newest, every head
        seq = random_batch(6, model.cfg.max_len, model.cfg.n_items, seed=3, min_len=2)
        model.scores(seq)
    hook.remove()
    newest_row = seen[-1][:, :, -1]  # (B, H, L): the scoring query's weights
    L = model.cfg.max_len
    torch.testing.assert_close(newest_row[..., L - 2], torch.ones_like(newest_row[..., L - 2]))
    # The loss reaches the bias (it is trained like any weight).
    model.train()
    out = model(random_batch(8, L, model.cfg.n_items, seed=4, min_len=3),
                random_batch(8, L, model.cfg.n_items, seed=5, min_len=3))
    out["loss"].backward()
    assert all(b.attn.recency_bias.grad is not None and b.attn.recency_bias.grad.abs().sum() > 0
               for b in model.blocks)


def test_a_model_with_recency_bias_exports_and_serves_like_torch(tmp_path: Path):
    from genattn.checkpoint import load_checkpoint, save_checkpoint
    from genattn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from genattn.data import pad_left
    from genattn.training import train
    from genattn_export import ExportOptions, export_bundle
    from genattn_runtime import Recommender

    max_len, k = 10, 20
    run = RunConfig(model=ModelConfig(max_len=max_len, d_model=16, recency_bias=True),
                    train=TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1),
                    data=DataConfig(source="synthetic", synthetic_users=80, synthetic_items=50))
    train(run, tmp_path / "trained", progress=False)
    ck = load_checkpoint(tmp_path / "trained")
    assert ck.run.model.recency_bias
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # strong, so a bias misplaced in the graph moves scores past tolerance
        for b in ck.model.blocks:
            b.attn.recency_bias.copy_(torch.randn(b.attn.recency_bias.shape, generator=g) * 3)
    path = save_checkpoint(tmp_path / "ck", ck.model, ck.run, item_ids=ck.item_ids, popularity=ck.popularity,
                           n_users=ck.n_users, metrics=ck.metrics)
    export_bundle(path, tmp_path / "bundle", ExportOptions(k=k, verify_users=16))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["recency_bias"] is True and manifest["parity"]["fp32"]["max_abs_diff"] < 1e-4
    ck = load_checkpoint(path)
    with Recommender.load(tmp_path / "bundle", backend="cpu", threads=1) as rec:
        ids = rec.items.item_ids[:7]
        got = rec.recommend(ids, k=k, exclude_seen=False)
    index = {x: i + 1 for i, x in enumerate(ck.item_ids)}
    with torch.no_grad():
        want = ck.model.eval().scores(torch.from_numpy(pad_left([np.array([index[x] for x in ids])], max_len)))[0]
    np.testing.assert_allclose(got.scores, want.numpy()[[index[x] for x in got.items]], rtol=1e-4, atol=1e-4)
