"""A bundle of S >= 2 sampled attention maps: the interleave / vote lists and the confidence in
the exported graph (format version 4), read through Recommender, the HTTP service and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient
from runtime_fixtures import K, bundle, bundle_root, checkpoint, rewrite_manifest  # noqa: F401 (fixtures)

from genattn_runtime import Recommender
from genattn_runtime.bundle import SAMPLE_OUTPUTS, SAMPLES_FORMAT_VERSION, read_manifest
from genattn_runtime.errors import BundleError, InputError

pytestmark = pytest.mark.slow

S = 4


@pytest.fixture(scope="module")
def sampled(bundle_root):
    """The VAE checkpoint exported with its prior sampled S times (the sample outputs on)."""
    from genattn_export import ExportOptions, export_bundle

    out = bundle_root / "bundle-vae-samples"
    if not out.exists():
        export_bundle(checkpoint(bundle_root, "vae"), out,
                      ExportOptions(k=K, vae_mode="sample", samples=S, verify_users=32))
    return out


@pytest.fixture(scope="module")
def srec(sampled):
    return Recommender.load(sampled, backend="cpu", threads=1)


def test_the_manifest_declares_the_sample_outputs_and_export_verified_them(sampled):
    m = read_manifest(sampled).raw
    assert m["format_version"] == SAMPLES_FORMAT_VERSION
    assert m["sampler"]["aggregate"] == {"samples": S, "vote_depth": min(20, K), "confidence_k": min(10, K)}
    names = [o["name"] for o in m["graph"]["outputs"]]
    assert names == ["top_items", "top_scores", *[n for n, _ in SAMPLE_OUTPUTS]]
    for case in m["parity"]["fp32"]["cases"].values():
        assert case["samples"]["interleave"]["list_overlap"] == 1.0 and case["samples"]["vote"]["scores_match"]


def test_lists_equal_the_torch_aggregation_of_the_same_noise(bundle_root, srec):
    """What the runtime returns is the aggregation of the S sampled score vectors the model gives
    for the noise the runtime drew from the seed (models/aggregate.py as the reference)."""
    from genattn.checkpoint import load_checkpoint
    from genattn.models import Sampling
    from genattn.models.aggregate import aggregate, confidence

    model = load_checkpoint(checkpoint(bundle_root, "vae")).model.eval()
    hists = [list(srec.items.item_ids[i:i + 6]) for i in (0, 9, 20)]
    prep = srec.prepare(hists, k=5, seed=7)
    with torch.no_grad():
        h = model.sample_states(torch.from_numpy(prep.seq), Sampling(mode="sample", n_samples=S),
                                torch.from_numpy(prep.noise))
        per = model.logits(h)
        per = per.scatter(2, torch.from_numpy(prep.exclude)[:, None, :].expand(-1, S, -1), float("-inf"))
    for how in ("mean", "interleave", "vote"):
        got = srec.recommend(hists, k=5, seed=7, aggregate=how)
        want_items, _ = aggregate(per, K, how) if how != "vote" else _vote(per)
        raw = np.array([None, *srec.items.item_ids], dtype=object)
        assert [r.items for r in got] == [raw[row[:5]].tolist() for row in want_items.numpy()], how
    conf = confidence(per, min(10, K)).numpy()
    np.testing.assert_allclose([r.confidence for r in srec.recommend(hists, k=5, seed=7)], conf, atol=1e-6)


def _vote(per):
    from genattn.models.aggregate import vote

    return vote(per, K, depth=min(20, K))


def test_confidence_is_in_unit_range_and_the_lists_differ_by_aggregate(srec):
    hists = [list(srec.items.item_ids[i:i + 8]) for i in range(0, 40, 4)]
    by = {how: srec.recommend(hists, k=10, seed=1, aggregate=how) for how in ("mean", "interleave", "vote")}
    assert all(0.0 <= r.confidence <= 1.0 for r in by["mean"])
    assert [r.confidence for r in by["mean"]] == [r.confidence for r in by["vote"]]  # one run, one confidence
    assert [r.items for r in by["interleave"]] != [r.items for r in by["mean"]]
    assert all(len(set(r.items)) == 10 and not set(r.items) & set(h) for r, h in zip(by["interleave"], hists))
    assert srec.recommend(hists[0], k=3, seed=1) == by["mean"][0].__class__(**{
        **by["mean"][0].__dict__, "items": by["mean"][0].items[:3], "scores": by["mean"][0].scores[:3]})
    assert "confidence" in by["vote"][0].to_dict()


def test_a_cold_user_gets_popularity_without_a_confidence(srec):
    r = srec.recommend([], k=5, aggregate="interleave")
    assert r.fallback == "popularity" and r.confidence is None and "confidence" not in r.to_dict()


@pytest.mark.parametrize("bad", ["median", 3, ""])
def test_an_unknown_aggregate_is_a_typed_error(srec, bad):
    with pytest.raises(InputError, match="aggregate must be one of"):
        srec.recommend([srec.items.item_ids[0]], aggregate=bad)


def test_bundles_without_samples_refuse_aggregates_and_give_no_confidence(bundle_root):
    for key, stochastic in (("softmax", False), ("diffusion", True)):  # deterministic; one noisy sample
        r = Recommender.load(bundle(bundle_root, key, stochastic=stochastic), backend="cpu", threads=1)
        hist = [r.items.item_ids[0], r.items.item_ids[1]]
        assert r.recommend(hist, aggregate="mean").confidence is None
        assert "confidence" not in r.recommend(hist).to_dict()
        with pytest.raises(InputError, match="no per-sample lists"):
            r.recommend(hist, aggregate="interleave")


def test_http_field_and_confidence(srec):
    from genattn_runtime.service import create_app

    hist = list(srec.items.item_ids[:5])
    with TestClient(create_app(srec, max_batch=8, max_wait_ms=1)) as c:
        res = c.post("/recommend", json={"history": hist, "k": 4, "seed": 3, "aggregate": "vote"})
        assert res.status_code == 200, res.text
        body = res.json()
        want = srec.recommend(hist, k=4, seed=3, aggregate="vote")
        assert body["items"] == want.items and body["confidence"] == pytest.approx(want.confidence)
        bad = c.post("/recommend", json={"history": hist, "aggregate": "best"})
        assert bad.status_code == 422 and "aggregate must be one of" in bad.json()["detail"]


def test_cli_flag_and_line_field(sampled, srec, tmp_path):
    from genattn.cli import main

    hist = list(srec.items.item_ids[:5])
    res = CliRunner().invoke(main, ["recommend", str(sampled), "--history", ",".join(map(str, hist)), "-k", "4",
                                    "--seed", "2", "--aggregate", "interleave", "--backend", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["items"] == srec.recommend(hist, k=4, seed=2, aggregate="interleave").items
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"history": hist, "aggregate": "vote", "seed": 2}) + "\n" + json.dumps(hist) + "\n")
    res = CliRunner().invoke(main, ["recommend", str(sampled), "--input", str(lines), "-k", "4",
                                    "--aggregate", "interleave", "--backend", "cpu"])
    assert res.exit_code == 0, res.output
    first, second = (json.loads(x) for x in res.stdout.splitlines())
    assert first["items"] == srec.recommend(hist, k=4, seed=2, aggregate="vote").items
    assert "confidence" in second


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(format_version=2), "needs format_version 4"),
    (lambda m: m["sampler"]["aggregate"].update(vote_depth=10_000), "vote_depth"),
    (lambda m: m["sampler"]["aggregate"].update(samples=1), "aggregate.samples"),
    (lambda m: m["sampler"].pop("aggregate"), "sampler.aggregate"),
    (lambda m: m["graph"]["outputs"].pop(), "graph.outputs"),
])
def test_the_manifest_schema_holds_the_sample_section_to_the_graph(sampled, tmp_path, edit, needle):
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(sampled, dst)
    rewrite_manifest(dst, edit)
    with pytest.raises(BundleError, match=needle):
        read_manifest(dst)


def test_no_sample_outputs_flag_exports_the_plain_graph(bundle_root, tmp_path):
    from genattn_export import ExportOptions, export_bundle

    m = export_bundle(checkpoint(bundle_root, "vae"), tmp_path / "plain",
                      ExportOptions(k=K, vae_mode="sample", samples=S, verify_users=0, sample_outputs=False))
    assert m["format_version"] == 2 and "aggregate" not in m["sampler"]
    assert [o["name"] for o in m["graph"]["outputs"]] == ["top_items", "top_scores"]


def test_triton_engine_takes_the_aggregate_parameter_and_answers_confidence(srec, bundle_root):
    """In process (the server's own test needs tritonserver): the Python-backend model's request
    logic and the model config it declares."""
    from genattn_runtime.triton_engine import OUT_CONFIDENCE, EngineConfig, RequestHandler, model_config

    hists = [list(srec.items.item_ids[:4]), []]
    arr = np.zeros((2, 4), dtype=np.int64)
    arr[0] = hists[0]
    req = (arr, None, np.array([[4], [0]], dtype=np.int32), json.dumps({"k": 3, "seed": 5, "aggregate": "vote"}))
    out = RequestHandler(srec, EngineConfig(bundle="unused")).handle([req])[0]
    want = srec.recommend_batch(hists, k=3, seed=5, aggregate="vote")
    assert out["items"][0].tolist() == want[0].items
    assert out[OUT_CONFIDENCE][0, 0] == pytest.approx(want[0].confidence) and np.isnan(out[OUT_CONFIDENCE][1, 0])
    bad = RequestHandler(srec, EngineConfig(bundle="unused")).handle([req[:3] + ('{"aggregate": "x"}',)])[0]
    assert isinstance(bad, InputError)
    declared = [o.name for o in model_config(EngineConfig(bundle="b"), string_ids=False, confidence=True).output]
    assert OUT_CONFIDENCE in declared
    plain = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1)
    assert OUT_CONFIDENCE not in RequestHandler(plain, EngineConfig(bundle="unused")).handle(
        [(arr[:1], None, np.array([[4]], dtype=np.int32), "{}")])[0]


def test_a_fresh_model_exports_with_sample_outputs(tmp_path):
    """An untrained model scores every item alike for an empty history (zero biases): torch and
    ONNX Runtime then break the tie differently, and the sample-list check must not call that a
    parity failure (it counts such rows instead)."""
    from genattn.checkpoint import save_checkpoint
    from genattn.config import ModelConfig, RunConfig, TrainConfig
    from genattn.models import SASRec
    from genattn_export import ExportOptions, export_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(n_items=60, max_len=8, d_model=16, n_heads=2, n_blocks=1, attention="vae", pair_hidden=4)
    save_checkpoint(tmp_path / "ck", SASRec(cfg).eval(), RunConfig(model=cfg, train=TrainConfig()),
                    item_ids=list(range(1, 61)), popularity=np.zeros(61, dtype=np.int64), n_users=1)
    export_bundle(tmp_path / "ck", tmp_path / "b", ExportOptions(k=10, vae_mode="sample", samples=S, verify_users=0))
    cases = read_manifest(tmp_path / "b").raw["parity"]["fp32"]["cases"]
    empty = cases["random_b7"]["samples"]  # row 0 of this case is an empty history
    assert empty["rows_without_order"] >= 1
    assert empty["interleave"]["list_overlap"] >= 0.9 and empty["vote"]["list_overlap"] >= 0.9
