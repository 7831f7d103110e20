"""Models over time gaps, exported and served: the graph's item_ages input (format version 5),
torch parity at the gap buckets' exact edges, `recommend(..., times=)` and its refusals, the
HTTP field, the Triton tensor, the CLI flag, and what the bundle check demands of such manifests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genattn_runtime import Recommender
from genattn_runtime.bundle import INPUT_AGES, TIME_FORMAT_VERSION
from genattn_runtime.errors import BundleError, InputError
from runtime_fixtures import bundle, bundle_root, rewrite_manifest  # noqa: F401 (fixture)

BUCKETS, MAX_LEN, N_ITEMS, K = 24, 10, 50, 20


def _checkpoint(root: Path, kind: str) -> Path:
    """A trained tiny model over time gaps whose time terms are then made strong (std 1), so a gap
    put in the wrong bucket anywhere would move the scores far past the parity tolerance."""
    from genattn.checkpoint import load_checkpoint, save_checkpoint
    from genattn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from genattn.training import train

    run = RunConfig(model=ModelConfig(max_len=MAX_LEN, d_model=16, attention=kind, pair_hidden=8,
                                      time_buckets=BUCKETS),
                    train=TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1),
                    data=DataConfig(source="synthetic", synthetic_users=80, synthetic_items=N_ITEMS))
    train(run, root / f"trained-{kind}", progress=False)
    ck = load_checkpoint(root / f"trained-{kind}")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ck.model.named_parameters():
            if name.endswith("time_bias") or name.endswith(".gap"):
                p.copy_(torch.randn(p.shape, generator=g))
    return save_checkpoint(root / f"ck-{kind}", ck.model, ck.run, item_ids=ck.item_ids,
                           popularity=ck.popularity, n_users=ck.n_users, metrics=ck.metrics)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{kind: (checkpoint, bundle)}: softmax (the time bias) and a stochastic VAE of 2 samples (the
    pair MLPs' gap embedding too, and version 5 with the sample outputs)."""
    from genattn_export import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("time-bundles")
    out = {}
    for kind, opts in (("softmax", ExportOptions(k=K, verify_users=16)),
                       ("vae", ExportOptions(k=K, verify_users=16, vae_mode="sample", samples=2))):
        ck = _checkpoint(root, kind)
        export_bundle(ck, root / f"bundle-{kind}", opts)
        out[kind] = (ck, root / f"bundle-{kind}")
    return out


@pytest.fixture(scope="module")
def rec(exported):
    with Recommender.load(exported["softmax"][1], backend="cpu", threads=1) as r:
        yield r


def _edge_times(n: int, start: float = 1.7e9) -> list[float]:
    """n event times whose neighbours are 2^k - 1 s apart (1 + gap = 2^k: a bucket's edge), 2^15 among
    them: ONNX Runtime's log2 puts 2^15 just under 15."""
    gaps = [2.0 ** [15, 1, 15, 4, 15, 20, 2, 15][j % 8] - 1 for j in range(n - 1)]
    return [start + float(x) for x in np.concatenate([[0.0], np.cumsum(gaps)])]


def _torch_scores(ck_path: Path, ids: list, times: list, items: list) -> np.ndarray:
    """The checkpoint's own full-catalog scores for one history (internal indices = catalog order)."""
    from genattn.checkpoint import load_checkpoint
    from genattn.data import pad_ages, pad_left

    ck = load_checkpoint(ck_path)
    index = {x: i + 1 for i, x in enumerate(ck.item_ids)}
    seq = torch.from_numpy(pad_left([np.array([index[x] for x in ids])], MAX_LEN))
    ages = torch.from_numpy(pad_ages([np.array(times)], MAX_LEN))
    with torch.no_grad():
        return ck.model.eval().scores(seq, ages=ages)[0].numpy()


def test_bundle_declares_the_ages_input_and_version_5(exported):
    for kind, (_, b) in exported.items():
        m = json.loads((b / "manifest.json").read_text())
        assert m["format_version"] == TIME_FORMAT_VERSION
        assert m["graph"]["inputs"][-1] == {"name": INPUT_AGES, "dtype": "float32", "shape": ["batch", MAX_LEN]}
        assert m["model"]["time_buckets"] == BUCKETS
        assert m["parity"]["fp32"]["max_abs_diff"] < 1e-4
    assert "aggregate" in json.loads((exported["vae"][1] / "manifest.json").read_text())["sampler"]


def test_runtime_equals_torch_at_the_bucket_edges(exported, rec):
    ck, _ = exported["softmax"]
    ids = rec.items.item_ids[:MAX_LEN + 3]  # longer than the window: only the newest events count
    times = _edge_times(len(ids))
    got = rec.recommend(ids, k=K, exclude_seen=False, times=times)
    want = _torch_scores(ck, ids[-MAX_LEN:], times[-MAX_LEN:], rec.items.item_ids)
    raw = {x: i + 1 for i, x in enumerate(rec.items.item_ids)}
    np.testing.assert_allclose(got.scores, want[[raw[x] for x in got.items]], rtol=1e-4, atol=1e-4)
    assert got.items == [rec.items.item_ids[i - 1] for i in np.argsort(-want[1:], kind="stable")[:K] + 1]
    # The gaps matter (strong time terms), their origin does not.
    other = rec.recommend(ids, k=K, exclude_seen=False, times=[t * 1.5 for t in times])
    shifted = rec.recommend(ids, k=K, exclude_seen=False, times=[t + 12345.0 for t in times])
    assert other.scores != got.scores
    np.testing.assert_allclose(shifted.scores, got.scores, rtol=1e-5)


def test_unknown_ids_drop_their_times_and_batches_equal_singles(rec):
    ids = rec.items.item_ids[:6]
    times = _edge_times(6)
    alone = rec.recommend(ids, k=5, times=times)
    with_unknown = rec.recommend(ids[:3] + ["no-such-item"] + ids[3:], k=5,
                                 times=times[:3] + [times[2] + 7.0] + times[3:])
    assert with_unknown.items == alone.items and with_unknown.unknown_items == ["no-such-item"]
    np.testing.assert_allclose(with_unknown.scores, alone.scores, rtol=1e-6)
    # ids in other forms (str of an int id, numpy ints) beside unknown ones of several types: each
    # known id keeps its own time (the general encoding path)
    forms = [str(ids[0]), np.int64(ids[1]), 10**9, ids[2], np.str_("x"), *ids[3:]]  # np.str_: a str subclass
    mixed = rec.recommend(forms, k=5, times=times[:2] + [times[1] + 1.0] + [times[2]] + [times[2] + 2.0] + times[3:])
    assert mixed.items == alone.items and mixed.unknown_items == [10**9, "x"]
    np.testing.assert_allclose(mixed.scores, alone.scores, rtol=1e-6)
    batch = rec.recommend([ids, ids[:2], []], k=5, times=[times, times[:2], []])
    assert batch[0].items == alone.items and batch[2].fallback == "popularity"
    assert batch[1].items == rec.recommend(ids[:2], k=5, times=times[:2]).items
    assert rec.recommend([], k=5).fallback == "popularity"  # no events, no times needed
    assert rec.metadata()["time_buckets"] == BUCKETS


@pytest.mark.parametrize("call,says", [
    (lambda r, ids: r.recommend(ids, k=5), "pass `times`"),
    (lambda r, ids: r.recommend(ids, k=5, times=[1, 2]), "2 times for 4 history items"),
    (lambda r, ids: r.recommend(ids, k=5, times=[1, 5, 3, 9]), "must not decrease"),
    (lambda r, ids: r.recommend(ids, k=5, times=[1, 2, float("nan"), 4]), "time 2 is not a finite"),
    (lambda r, ids: r.recommend(ids, k=5, times=["1", "2", "3", "4"]), "list of numbers"),
    (lambda r, ids: r.recommend(ids, k=5, times="1,2,3,4"), "list of numbers"),
    (lambda r, ids: r.recommend([ids, ids], k=5, times=[[1, 2, 3, 4]]), "one list of times per history"),
    (lambda r, ids: r.recommend([ids, ids], k=5, times=[[1, 2, 3, 4], 7]), r"times\[1\]"),
    (lambda r, ids: r.recommend_indices(np.zeros((1, MAX_LEN), np.int64)), "ages"),
    (lambda r, ids: r.recommend_indices(np.zeros((1, MAX_LEN), np.int64), ages=-np.ones((1, MAX_LEN))), ">= 0"),
    # finite in float64 but not in the graph's float32: would reach the graph as inf - inf = NaN
    (lambda r, ids: r.recommend(ids, k=5, times=[0, 1, 2, 1e300]), "float32"),
    (lambda r, ids: r.recommend_indices(np.zeros((1, MAX_LEN), np.int64), ages=np.full((1, MAX_LEN), 1e300)),
     "float32"),
], ids=["missing", "count", "order", "nan", "strings", "string", "rows", "row-type", "indices", "negative",
        "span", "huge-ages"])
def test_bad_times_are_typed_errors(rec, call, says):
    with pytest.raises(InputError, match=says):
        call(rec, rec.items.item_ids[:4])


def test_recommend_indices_takes_the_ages(rec):
    ids = rec.items.item_ids[:5]
    times = _edge_times(5)
    seq = np.zeros((1, MAX_LEN), np.int64)
    seq[0, -5:] = np.arange(1, 6)
    ages = np.zeros((1, MAX_LEN), np.float32)
    ages[0, -5:] = times[-1] - np.array(times)
    items, scores = rec.recommend_indices(seq, k=5, exclude=seq, ages=ages)
    got = rec.recommend(ids, k=5, times=times)
    assert [rec.items.item_ids[i - 1] for i in items[0]] == got.items
    np.testing.assert_allclose(scores[0], got.scores, rtol=1e-6)


def test_bundles_without_time_gaps_check_and_ignore_times(bundle_root):
    with Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1) as plain:
        ids = plain.items.item_ids[:4]
        assert plain.recommend(ids, k=5, times=[1, 2, 3, 4]).items == plain.recommend(ids, k=5).items
        with pytest.raises(InputError, match="must not decrease"):
            plain.recommend(ids, k=5, times=[4, 3, 2, 1])
        with pytest.raises(InputError, match="takes no ages"):
            plain.recommend_indices(np.zeros((1, plain.max_len), np.int64), ages=np.zeros((1, plain.max_len)))
        assert plain.metadata()["time_buckets"] == 0


def test_http_field_times(rec):
    from fastapi.testclient import TestClient

    from genattn_runtime.service import create_app

    ids = rec.items.item_ids[:5]
    times = _edge_times(5)
    with TestClient(create_app(rec)) as client:
        one = client.post("/recommend", json={"history": ids, "times": times, "k": 5})
        many = client.post("/recommend", json={"histories": [ids, []], "times": [times, []], "k": 5})
        missing = client.post("/recommend", json={"history": ids, "k": 5})
        assert client.get("/metadata").json()["time_buckets"] == BUCKETS
    assert one.status_code == 200 and one.json()["items"] == rec.recommend(ids, k=5, times=times).items
    assert many.status_code == 200 and many.json()["results"][0]["items"] == one.json()["items"]
    assert missing.status_code == 422 and "times" in missing.json()["detail"]


def test_triton_handler_reads_history_times(rec):
    from genattn_runtime.triton_engine import EngineConfig, RequestHandler, model_config

    names = {t.name for t in model_config(EngineConfig(bundle="b"), string_ids=False).input}
    assert "history_times" in names
    h = RequestHandler(rec, EngineConfig(bundle="b"))
    ids = rec.items.item_ids[:5]
    times = _edge_times(5)
    arr = np.array([ids + [0]], dtype=np.int64)
    lengths = np.array([[5]], dtype=np.int32)
    stamps = np.array([times + [0.0]])
    ok, bad_shape, missing = h.handle([(arr, None, lengths, "{}", stamps), (arr, None, lengths, "{}", stamps[:, :3]),
                                       (arr, None, lengths, "{}")])
    assert ok["items"][0, :ok["count"][0, 0]].tolist() == rec.recommend(ids, k=10, times=times).items
    assert isinstance(bad_shape, InputError) and "history_times" in str(bad_shape)
    assert isinstance(missing, InputError) and "times" in str(missing)


def test_cli_times_flag(exported, rec):
    from click.testing import CliRunner

    from genattn_runtime.cli import recommend_cmd

    ids = rec.items.item_ids[:4]
    times = _edge_times(4)
    run = CliRunner().invoke(recommend_cmd, [str(exported["softmax"][1]), "--history", ",".join(map(str, ids)),
                                             "--times", json.dumps(times), "-k", "5", "--backend", "cpu"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["items"] == rec.recommend(ids, k=5, times=times).items
    run = CliRunner().invoke(recommend_cmd, [str(exported["softmax"][1]), "--history", ",".join(map(str, ids)),
                                             "--backend", "cpu"])
    assert run.exit_code != 0 and "times" in run.output


def test_stochastic_time_bundle_with_sample_outputs(exported):
    with Recommender.load(exported["vae"][1], backend="cpu", threads=1) as r:
        ids = r.items.item_ids[:6]
        times = _edge_times(6)
        a = r.recommend(ids, k=5, times=times, seed=3, aggregate="vote")
        assert a.confidence is not None and len(a.items) == 5
        assert r.recommend(ids, k=5, times=times, seed=3, aggregate="vote").items == a.items


def test_fp16_export_keeps_the_age_arithmetic_fp32(exported, tmp_path):
    """--fp16 of a time-gap model: the ages (~1e9 s) and the buckets' 2^k bounds overflow fp16, so
    their arithmetic stays fp32 up to the integer bucket index (nothing saturated; without it the
    saturated ages index the bias table out of range and the export fails), and the half graph
    buckets the edge gaps exactly as the fp32 graph (which equals torch: above) does."""
    import warnings

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from genattn_export import ExportOptions, export_bundle
    from genattn_export.precision import fp32_island

    ck, _ = exported["softmax"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="fp16: constants beyond the fp16 range")
        m = export_bundle(ck, tmp_path / "half", ExportOptions(k=K, fp16=True, verify_users=16))
    assert m["parity"]["fp16"]["min_topk_overlap"] > 0.8
    g32 = onnx.load(tmp_path / "half" / "model.onnx")
    g16 = onnx.load(tmp_path / "half" / "model.fp16.onnx")
    assert TensorProto.FLOAT16 in {t.data_type for t in g16.graph.initializer}  # the weights went half
    island = fp32_island(g32, [INPUT_AGES])
    typed = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(g32).graph.value_info}
    read_outside = {x for n in g32.graph.node if n.name not in island for x in n.input}
    leaving = sorted({o for n in g32.graph.node if n.name in island for o in n.output if o in read_outside})
    assert leaving and {typed[o] for o in leaving} <= {TensorProto.INT64, TensorProto.BOOL}, "only indices leave"
    with Recommender.load(tmp_path / "half", backend="cpu", threads=1) as rec:
        ids = rec.items.item_ids[:MAX_LEN]
        feeds = rec._feeds([rec.prepare(ids, k=K, times=_edge_times(len(ids)))])
    got = []
    for g in (g32, g16):
        g.graph.output.extend(helper.make_tensor_value_info(o, typed[o], None) for o in leaving)
        sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
        got.append(sess.run(leaving, feeds))
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)
    # served through the runtime's fp16 slot
    with Recommender.load(tmp_path / "half", backend="cpu", threads=1, precision="fp16") as half:
        full = half.recommend(ids, k=K, exclude_seen=False, times=_edge_times(len(ids)))
        assert len(full.items) == K and all(np.isfinite(full.scores))


@pytest.mark.parametrize("edit,says", [
    (lambda m: m["model"].update(time_buckets=0), "must be >= 1 in format_version 5"),
    (lambda m: m.update(format_version=2), "needs format_version 5"),
    (lambda m: m["graph"].update(inputs=m["graph"]["inputs"][:-1]), "item_ages"),
], ids=["no-buckets", "old-version", "no-input"])
def test_bundle_check_of_time_manifests(exported, tmp_path, edit, says):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(exported["softmax"][1], b)
    rewrite_manifest(b, edit)
    with pytest.raises(BundleError, match=says):
        Recommender.load(b, backend="cpu")


def test_inspect_names_the_time_gaps(exported):
    from click.testing import CliRunner

    from genattn.cli import main

    run = CliRunner().invoke(main, ["inspect", str(exported["softmax"][1])])
    assert run.exit_code == 0, run.output
    assert f"time gaps in {BUCKETS} buckets" in run.output and "item_ages float32" in run.output


def test_prepared_calls_with_times_batch_into_one_run(rec):
    """The micro-batcher's path: several prepared calls, each with its own times, in one run."""
    ids = rec.items.item_ids
    calls = [(ids[:5], _edge_times(5)), (ids[7:9], _edge_times(2, start=3e8)), (ids[3:6], _edge_times(3))]
    preps = [rec.prepare(h, k=5, times=t) for h, t in calls]
    joint = rec.run_prepared(preps)
    for (h, t), got in zip(calls, joint):
        alone = rec.recommend(h, k=5, times=t)
        assert got.items == alone.items
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-5)


def test_ann_bundle_over_time_gaps(exported, rec, tmp_path):
    """An ANN bundle's state graph takes the ages too; an exact (flat) index answers as the exact bundle."""
    from genattn_export import ExportOptions, export_bundle
    from genattn_export.ann import AnnOptions

    m = export_bundle(exported["softmax"][0], tmp_path / "ann",
                      ExportOptions(k=K, verify_users=16, ann=AnnOptions(kind="flat-fp16", recall_users=50)))
    assert m["format_version"] == TIME_FORMAT_VERSION and "ann" in m
    assert [t["name"] for t in m["graph"]["inputs"]] == ["item_seq", INPUT_AGES]
    with Recommender.load(tmp_path / "ann", backend="cpu", threads=1) as ann:
        ids = rec.items.item_ids[:6]
        times = _edge_times(6)
        got, want = ann.recommend(ids, k=5, times=times), rec.recommend(ids, k=5, times=times)
        assert got.items == want.items
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-2, atol=1e-3)  # the fp16 table's rounding
        with pytest.raises(InputError, match="times"):
            ann.recommend(ids, k=5)
