"""Export: ONNX graph contract, parity with torch, determinism, bundle integrity."""
from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from genattn.checkpoint import load_checkpoint
from genattn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from genattn.training import train
from genattn_export import ExportError, ExportOptions, export_bundle
from genattn_runtime.bundle import INPUT_EXCLUDE, INPUT_NOISE, INPUT_SEQ, read_manifest, verify_files
from genattn_runtime.errors import BundleError

FORBIDDEN = {"Loop", "If", "Scan", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
             "Multinomial", "Bernoulli"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny trained checkpoint per attention kind (1 epoch on synthetic data)."""
    root = tmp_path_factory.mktemp("ck")
    out = {}
    for kind in ("softmax", "vae", "diffusion"):
        run = RunConfig(model=ModelConfig(max_len=10, d_model=16, n_heads=2, attention=kind, pair_hidden=8,
                                          diffusion_steps=20, generative_blocks="all", posterior_gain=0.0,
                                          prior_ce="through", train_prior_noise=False, beta_warmup_steps=1000),
                        train=TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1),
                        data=DataConfig(source="synthetic", synthetic_users=80, synthetic_items=40))
        train(run, root / kind, progress=False)
        out[kind] = root / kind
    return out


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(manifest, batch, seed=0):
    rng = np.random.default_rng(seed)
    L, N = manifest.max_len, manifest.n_items
    seq = rng.integers(1, N + 1, size=(batch, L))
    lengths = rng.integers(1, L + 1, size=batch)
    seq[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0
    feeds = {INPUT_SEQ: seq.astype(np.int64)}
    if manifest.exclude_in_graph:
        feeds[INPUT_EXCLUDE] = feeds[INPUT_SEQ].copy()
    if manifest.noise_size:
        feeds[INPUT_NOISE] = rng.standard_normal((batch, manifest.noise_size), dtype=np.float32)
    return feeds


CASES = {"softmax": ("softmax", {}), "vae-mean": ("vae", {}),
         "vae-sample4": ("vae", {"vae_mode": "sample", "samples": 4}),
         "diffusion-n1": ("diffusion", {"steps": 1}), "diffusion-n4": ("diffusion", {"steps": 4}),
         "diffusion-n4-noise": ("diffusion", {"steps": 4, "start": "noise", "eta": 1.0}),
         "diffusion-n2-noise-s4": ("diffusion", {"steps": 2, "start": "noise", "eta": 1.0, "samples": 4})}


@pytest.fixture(scope="module")
def bundles(checkpoints, tmp_path_factory):
    """Each case exported once (dynamo export costs seconds); tests copy before modifying."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, (kind, opts) in CASES.items():
        manifest = export_bundle(checkpoints[kind], root / name, ExportOptions(k=15, verify_users=16, **opts))
        out[name] = (root / name, manifest)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_export_graph_contract_and_parity(bundles, case):
    kind, opts = CASES[case]
    bundle, m = bundles[case]
    manifest = read_manifest(bundle)
    verify_files(manifest)
    model = onnx.load(str(bundle / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN, ops & FORBIDDEN
    # The sampler is unrolled: the denoiser's time embedding rows appear once per step as constants,
    # and no graph input or op carries a timestep.
    assert [i.name for i in model.graph.input][0] == INPUT_SEQ
    stochastic = opts.get("start") == "noise" or opts.get("vae_mode") == "sample"
    assert (INPUT_NOISE in manifest.input_names) == stochastic
    assert m["sampler"]["deterministic"] == (not stochastic)
    # S >= 2 stochastic samples: the samples' own lists and their agreement are outputs too.
    assert (manifest.aggregate is not None) == (stochastic and opts.get("samples", 1) >= 2)
    # Parity recorded and passing; top-K sorted.
    assert all(c["passed"] and c["topk_equal_up_to_ties"] for c in m["parity"]["fp32"]["cases"].values())
    sess = _session(bundle / "model.onnx")
    for batch in (1, 33):  # dynamic batch, neither equal to the traced batch (2)
        items, scores = sess.run(["top_items", "top_scores"], _feeds(manifest, batch))
        assert items.shape == (batch, 15) and scores.shape == (batch, 15)
        assert np.all(np.diff(scores, axis=1) <= 0), "top-K must be sorted best first"


@pytest.mark.parametrize("case", ["vae-sample4", "diffusion-n4-noise", "diffusion-n2-noise-s4"])
def test_onnx_matches_torch_for_real_noise(checkpoints, bundles, case):
    """Stochastic bundles: the same explicit noise gives the same top-K in torch and ORT."""
    kind, opts = CASES[case]
    bundle, _ = bundles[case]
    manifest = read_manifest(bundle)
    ck = load_checkpoint(checkpoints[kind])
    feeds = _feeds(manifest, 5, seed=3)
    items, scores = _session(bundle / "model.onnx").run(["top_items", "top_scores"], feeds)
    with torch.no_grad():
        full = ck.model.scores(torch.from_numpy(feeds[INPUT_SEQ]), ExportOptions(**opts).sampling(kind),
                               torch.from_numpy(feeds[INPUT_NOISE]))
        full = full.scatter(1, torch.from_numpy(feeds[INPUT_EXCLUDE]), float("-inf"))
        ref_scores, _ = full.topk(15, dim=1)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4, rtol=1e-4)
    # Different noise changes the answer (the noise input is really used).
    feeds2 = dict(feeds, **{INPUT_NOISE: feeds[INPUT_NOISE] + 1.0})
    _, scores2 = _session(bundle / "model.onnx").run(["top_items", "top_scores"], feeds2)
    assert not np.allclose(scores, scores2)


def test_deterministic_mode_bit_identical_across_sessions(bundles):
    bundle, _ = bundles["diffusion-n4"]
    manifest = read_manifest(bundle)
    assert manifest.raw["parity"]["deterministic_bit_identical"] is True
    feeds = _feeds(manifest, 9, seed=5)
    a = _session(bundle / "model.onnx").run(None, feeds)
    b = _session(bundle / "model.onnx").run(None, feeds)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_exclude_items_masks_history(bundles):
    bundle, _ = bundles["softmax"]
    manifest = read_manifest(bundle)
    feeds = _feeds(manifest, 6, seed=1)
    items, _ = _session(bundle / "model.onnx").run(None, feeds)
    for row, hist in zip(items, feeds[INPUT_EXCLUDE]):
        assert not set(row) & set(hist[hist > 0]), "an excluded history item was recommended"
        assert 0 not in row, "padding recommended"


def test_manifest_round_trip_and_schema(bundles, tmp_path):
    bundle, m = bundles["diffusion-n4"]
    again = read_manifest(bundle).raw
    assert again == json.loads(json.dumps(m))
    for key in ("format", "format_version", "attention", "model", "sampler", "max_len", "n_items", "k",
                "graph", "tools", "parity", "training_metrics", "files"):
        assert key in again
    assert again["sampler"]["n_steps"] == 4 and again["sampler"]["scheduler"]["num_train_steps"] == 20
    assert set(again["files"]) == {"model.onnx", "items.json"}
    items = json.loads((bundle / "items.json").read_text())
    assert len(items["item_ids"]) == again["n_items"] and len(items["popularity"]) == again["n_items"] + 1


@pytest.mark.parametrize("tamper", ["byte", "truncate", "delete", "version"])
def test_tampered_bundle_is_refused(bundles, tmp_path, tamper):
    b = tmp_path / "b"
    shutil.copytree(bundles["softmax"][0], b)
    verify_files(read_manifest(b))  # intact copy verifies
    if tamper == "byte":
        data = bytearray((b / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (b / "model.onnx").write_bytes(bytes(data))
    elif tamper == "truncate":
        (b / "items.json").write_text((b / "items.json").read_text()[:-10])
    elif tamper == "delete":
        (b / "items.json").unlink()
    else:
        raw = json.loads((b / "manifest.json").read_text())
        raw["format_version"] = 999
        (b / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError) as e:
        verify_files(read_manifest(b))
    assert {"byte": "sha256", "truncate": "bytes", "delete": "missing", "version": "version"}[tamper] in str(e.value)


def test_failed_export_leaves_no_partial_bundle(checkpoints, bundles, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundles["diffusion-n4"][0], out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ExportError):
        export_bundle(checkpoints["diffusion"], out, ExportOptions(steps=999, k=10, verify_users=0))
    assert (out / "manifest.json").read_bytes() == before, "a failed export must not touch the old bundle"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant / ConstantOfShape tensors by name."""
    out = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out[f"{n.name}.{a.name}"] = onnx.numpy_helper.to_array(a.t)
    return out


def test_fp16_bundle_reports_drift(checkpoints, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = export_bundle(checkpoints["softmax"], tmp_path / "b", ExportOptions(k=10, verify_users=0, fp16=True))
    # the converter's "-inf will be truncated" is a false alarm (below) and is not passed on
    assert not [w for w in caught if "will be truncated" in str(w.message)], [str(w.message) for w in caught]
    full = onnx.load(str(tmp_path / "b" / "model.onnx"))
    half = onnx.load(str(tmp_path / "b" / "model.fp16.onnx"))
    # Weights are fp16, the sensitive ops stay fp32 (their inputs are cast up).
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert {n.op_type for n in half.graph.node} >= {"Softmax", "LayerNormalization"}
    p16 = m["parity"]["fp16"]
    assert 0 < p16["max_abs_diff"] < 0.1 and p16["min_topk_overlap"] > 0.8
    assert "model.fp16.onnx" in m["files"]
    # The attention-mask fill and the exclusion fill are -inf in fp32 and still -inf in fp16.
    c32, c16 = _constants(full), _constants(half)
    neg_inf = [name for name, a in c32.items() if a.dtype == np.float32 and a.size and np.all(a == -np.inf)]
    assert len(neg_inf) >= 2, neg_inf
    for name in neg_inf:
        assert c16[name].dtype == np.float16 and np.all(c16[name] == -np.inf), name
    # Ranking of padded histories: no padding, no history item, finite scores (also for an empty
    # history), and the same top-K as fp32 up to fp16 drift.
    manifest = read_manifest(tmp_path / "b")
    feeds = _feeds(manifest, 8, seed=7)
    feeds[INPUT_SEQ][0] = 0
    feeds[INPUT_EXCLUDE][0] = 0
    items16, scores16 = _session(tmp_path / "b" / "model.fp16.onnx").run(None, feeds)
    items32, _ = _session(tmp_path / "b" / "model.onnx").run(None, feeds)
    assert np.isfinite(scores16).all()
    for row, hist in zip(items16, feeds[INPUT_EXCLUDE]):
        assert 0 not in row and not set(row) & set(hist[hist > 0])
    assert np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(items16, items32)]) > 0.8


def test_fp16_keeps_inf_and_representable_constants(tmp_path):
    """to_fp16 keeps ±inf and every value fp16 can hold; it saturates only |x| > 65504, and says so."""
    from onnx import TensorProto, helper, numpy_helper

    from genattn_export.precision import FP16_MAX, fp16_saturation, to_fp16

    values = np.array([-np.inf, -2e4, 3e4, 1e5, 0.5, np.inf], dtype=np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y],
                          initializer=[numpy_helper.from_array(values, "c")]),
        opset_imports=[helper.make_opsetid("", 18)])
    assert fp16_saturation(model) == {"c": {"count": 1, "max_abs": 1e5}}
    src, dst = tmp_path / "m.onnx", tmp_path / "m16.onnx"
    onnx.save(model, str(src))
    with pytest.warns(UserWarning, match=r"saturated .*'c'") as caught:
        report = to_fp16(src, dst)
    assert report["saturated"] == {"c": {"count": 1, "max_abs": 1e5}}
    assert not [w for w in caught if "inf will be truncated" in str(w.message)]
    half = _constants(onnx.load(str(dst)))["c"]
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, np.array([-np.inf, -2e4, 3e4, FP16_MAX, 0.5, np.inf], dtype=np.float16))


def test_fp32_island_and_round_trips(tmp_path):
    """An input's float arithmetic stays fp32 (fp32_island) and the converter's fp32 -> fp16 -> fp32
    Casts between two fp32 ops are bypassed (1e6 s would overflow fp16 in between); a bool -> fp16
    -> fp32 pair is a real conversion and stays, and the half of the graph outside the island goes
    fp16."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from genattn_export.precision import drop_cast_round_trips, fp32_island, to_fp16

    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 2])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    nodes = [helper.make_node("Sub", ["t", "big"], ["gap"], name="sub"),      # fp32: ~1e6
             helper.make_node("Abs", ["gap"], ["span"], name="abs"),           # fp32
             helper.make_node("Log", ["span"], ["log"], name="log"),           # fp32
             helper.make_node("Floor", ["log"], ["fl"], name="floor"),         # fp32
             helper.make_node("Cast", ["fl"], ["idx"], name="to_int", to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "idx"], ["bias"], name="lookup"),  # fp16: reads an index
             helper.make_node("Mul", ["h", "w"], ["hw"], name="mul"),          # fp16
             helper.make_node("Add", ["hw", "bias"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.array([1e6, 2e6], dtype=np.float32), "big"),
             numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(20, 1) * 0.1, "table"),
             numpy_helper.from_array(np.array([0.5, 2.0], dtype=np.float32), "w")]
    model = helper.make_model(helper.make_graph(nodes, "g", [t, h], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    assert fp32_island(model, ["t"]) == {"sub", "abs", "log", "floor", "to_int"}
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    to_fp16(src, src.with_name("m16.onnx"), keep_fp32_inputs=("t",))
    half = onnx.load(str(src.with_name("m16.onnx")))
    producer = {o: n.name for n in half.graph.node for o in n.output}
    reads = {n.name: [producer.get(x) for x in n.input] for n in half.graph.node}
    assert reads["abs"] == ["sub"] and reads["log"] == ["abs"] and reads["floor"] == ["log"]  # no Cast between
    assert {t.name: t.data_type for t in half.graph.initializer}["table"] == TensorProto.FLOAT16
    feeds = {"t": np.array([[0.0, 5.0]], dtype=np.float32), "h": np.ones((1, 2), dtype=np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-3)  # floor(log(1e6)) = 13: a bias of 1.3, not inf's
    # the bare pass: fp32 -> fp16 -> fp32 goes, bool -> fp16 -> fp32 stays
    b = helper.make_tensor_value_info("b", TensorProto.BOOL, ["n"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("u", "v")]
    g = helper.make_model(helper.make_graph([
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Neg", ["x32"], ["u"]),
        helper.make_node("Cast", ["b"], ["b16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["b16"], ["b32"], to=TensorProto.FLOAT),
        helper.make_node("Neg", ["b32"], ["v"])], "r", [x, b], out), opset_imports=[helper.make_opsetid("", 18)])
    assert drop_cast_round_trips(g) == 1
    assert [n.input[0] for n in g.graph.node if n.op_type == "Neg"] == ["x", "b32"]
    assert [n.output[0] for n in g.graph.node if n.op_type == "Cast"] == ["b16", "b32"]
    u, v = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([1e6], dtype=np.float32), "b": np.array([True])})
    assert u[0] == -1e6 and v[0] == -1.0


# --------------------------------------------------------------------------- TorchScript exporter, eval mode

TS_CASES = {"softmax": {}, "vae": {}, "diffusion": {"steps": 2}}


@pytest.mark.parametrize("kind", list(TS_CASES))
def test_torchscript_export_end_to_end(checkpoints, tmp_path, kind):
    """--torchscript: parity passes for every kind (dropout off in export and reference), and the
    runtime serves the bundle with torch's ranking."""
    from genattn_runtime import Recommender

    opts = ExportOptions(k=10, verify_users=16, dynamo=False, **TS_CASES[kind])
    m = export_bundle(checkpoints[kind], tmp_path / "b", opts)
    assert m["graph"]["exporter"] == "torchscript"
    assert all(c["passed"] and c["topk_equal_up_to_ties"] for c in m["parity"]["fp32"]["cases"].values())
    assert m["parity"]["fp32"]["max_abs_diff"] < 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node}
    assert "Dropout" not in ops and not ops & FORBIDDEN
    ck = load_checkpoint(checkpoints[kind])
    with Recommender.load(tmp_path / "b", backend="cpu", threads=1) as rec:
        manifest = read_manifest(tmp_path / "b")
        feeds = _feeds(manifest, 4, seed=2)
        items, scores = rec.recommend_indices(feeds[INPUT_SEQ], exclude=feeds[INPUT_EXCLUDE])
        assert rec.recommend([ck.item_ids[0], ck.item_ids[3]], k=5).items
    with torch.no_grad():
        full = ck.model.eval().scores(torch.from_numpy(feeds[INPUT_SEQ]), opts.sampling(ck.run.model.attention))
        ref = full.scatter(1, torch.from_numpy(feeds[INPUT_EXCLUDE]), float("-inf")).topk(10, dim=1).values
    np.testing.assert_allclose(scores, ref.numpy(), atol=1e-4, rtol=1e-4)


def _tiny_graph(kind="softmax"):
    from genattn.config import ModelConfig
    from genattn.models import SASRec
    from genattn_export.graph import GraphSpec, ServingGraph

    torch.manual_seed(0)
    model = SASRec(ModelConfig(n_items=30, max_len=6, d_model=16, n_heads=2, attention=kind, dropout=0.5,
                               generative_blocks="all", pair_hidden=16))  # every block generative
    spec = GraphSpec.build(model, k=5, noise_size=0, exclude=True, full_scores=False)
    return ServingGraph(model, None, 5, exclude=True, noise=False, full_scores=False), spec


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_in_eval_mode_restores_callers_module_state(tmp_path, dynamo):
    """A graph handed over in training mode is exported and verified in eval mode (ONNX equals
    torch without dropout), then every module's own flag is back as the caller set it."""
    from genattn_export.graph import to_onnx
    from genattn_export.verify import cases, check_parity

    graph, spec = _tiny_graph()
    graph.train()
    graph.model.blocks[0].eval()  # a mixed state must come back as it was, not as "all train"
    before = [(name, m.training) for name, m in graph.named_modules()]
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_onnx(graph, spec, path, dynamo=dynamo)
    assert [(name, m.training) for name, m in graph.named_modules()] == before
    assert not [w for w in caught if "training mode" in str(w.message)], "exported in training mode"
    # check_parity raises ParityError if the torch reference ran with dropout on
    report = check_parity(graph, spec, str(path), cases(spec, 30, None, 0))
    assert report["max_abs_diff"] < 1e-4
    assert [(name, m.training) for name, m in graph.named_modules()] == before


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_real_export_warning_reaches_the_caller(tmp_path, monkeypatch, dynamo):
    """Only the listed known-harmless warnings are ignored, and only inside the export."""
    from genattn.models import SASRec
    from genattn_export.graph import to_onnx

    original = SASRec.scores
    exporter_log = logging.getLogger("torch.onnx._internal.exporter.test")

    def scores(self, *a, **kw):
        warnings.warn("embedding norms look wrong", RuntimeWarning)
        exporter_log.warning("exporter falls back to something")  # an exporter's logged warning
        exporter_log.info("pass 17 of 40 done")
        return original(self, *a, **kw)

    monkeypatch.setattr(SASRec, "scores", scores)
    graph, spec = _tiny_graph()
    filters = list(warnings.filters)
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    torch_onnx = logging.getLogger("torch.onnx")
    torch_onnx.addHandler(handler)
    try:
        with pytest.warns(RuntimeWarning, match="embedding norms look wrong") as caught:
            to_onnx(graph, spec, tmp_path / "model.onnx", dynamo=dynamo)
    finally:
        torch_onnx.removeHandler(handler)
    assert warnings.filters == filters, "export changed the caller's warning filters"
    assert not [w for w in caught if "axis name: batch" in str(w.message)], "known-harmless warning leaked"
    logged = [r.getMessage() for r in records]
    assert "exporter falls back to something" in logged
    assert "pass 17 of 40 done" not in logged, "the exporters' INFO lines are kept out"
    assert not [m for m in logged if "torchvision is not installed" in m], "known-harmless log line leaked"


def test_real_warning_reaches_the_caller_of_export_bundle(checkpoints, tmp_path, monkeypatch):
    from genattn.models import SASRec

    original = SASRec.scores

    def scores(self, *a, **kw):
        warnings.warn("embedding norms look wrong", UserWarning)
        return original(self, *a, **kw)

    monkeypatch.setattr(SASRec, "scores", scores)
    with pytest.warns(UserWarning, match="embedding norms look wrong"):
        export_bundle(checkpoints["softmax"], tmp_path / "b", ExportOptions(k=5, verify_users=0, dynamo=False))


# --------------------------------------------------------------------------- Triton repository from an export


def test_export_triton_names_id_map_fp16_and_overwrite_policy(checkpoints, tmp_path):
    from genattn_export.triton import TritonError, TritonModelExists
    from genattn_runtime.triton_config import read_config

    repo = tmp_path / "repo"
    quick = dict(k=5, verify_users=0, dynamo=False, triton=str(repo))
    m1 = export_bundle(checkpoints["softmax"], tmp_path / "rec-a", ExportOptions(fp16=True, **quick))
    m2 = export_bundle(checkpoints["vae"], tmp_path / "rec b", ExportOptions(**quick))
    # two bundles, two models: named after their folders, neither overwrites the other
    assert m1["triton"]["model_name"] == "rec-a" and m2["triton"]["model_name"] == "rec_b"
    assert sorted(p.name for p in repo.iterdir()) == ["rec-a", "rec-a_fp16", "rec_b"]
    assert read_manifest(tmp_path / "rec-a").raw["triton"]["model_name"] == "rec-a"
    for name, bundle in (("rec-a", "rec-a"), ("rec-a_fp16", "rec-a"), ("rec_b", "rec b")):
        assert read_config(repo / name / "config.pbtxt").name == name
        assert (repo / name / "items.json").read_bytes() == (tmp_path / bundle / "items.json").read_bytes()
    assert (repo / "rec-a_fp16" / "1" / "model.onnx").read_bytes() == (tmp_path / "rec-a" / "model.fp16.onnx").read_bytes()
    # the id map is what a client needs: item_ids[i - 1] is the raw id of internal index i
    items = json.loads((repo / "rec-a" / "items.json").read_text())["item_ids"]
    assert items == list(load_checkpoint(checkpoints["softmax"]).item_ids)

    # A third bundle whose folder has the same name is refused before any work: nothing written.
    other = tmp_path / "elsewhere" / "rec-a"
    with pytest.raises(TritonModelExists, match="rec-a"):
        export_bundle(checkpoints["diffusion"], other, ExportOptions(steps=1, **quick))
    assert not other.exists()
    # re-exporting the same bundle replaces its own model; --triton-force replaces another's
    export_bundle(checkpoints["softmax"], tmp_path / "rec-a", ExportOptions(**quick))
    export_bundle(checkpoints["diffusion"], other, ExportOptions(steps=1, triton_force=True, **quick))
    assert json.loads((repo / "rec-a" / "genattn_model.json").read_text())["bundle"] == str(other.resolve())
    # an explicit name is validated (before the work), and only with --triton
    with pytest.raises(TritonError, match="'/'"):
        export_bundle(checkpoints["softmax"], tmp_path / "c", ExportOptions(triton_name="a/b", **quick))
    with pytest.raises(ExportError, match="need --triton"):
        export_bundle(checkpoints["softmax"], tmp_path / "c", ExportOptions(k=5, triton_name="x"))
    assert not (tmp_path / "c").exists()


def test_cli_export_triton_name(checkpoints, tmp_path):
    from click.testing import CliRunner

    from genattn.cli import main

    repo = tmp_path / "repo"
    base = ["export", str(checkpoints["softmax"]), "-k", "5", "--verify-users", "0", "--torchscript",
            "--triton", str(repo)]
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "b"), "--triton-name", "bad name"])
    assert r.exit_code != 0 and "Error:" in r.output and "'bad name'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b").exists()
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "b"), "--triton-name", "ranker"])
    assert r.exit_code == 0, r.output
    assert (repo / "ranker" / "1" / "model.onnx").is_file() and (repo / "ranker" / "items.json").is_file()
    r = CliRunner().invoke(main, base + ["-o", str(tmp_path / "b2"), "--triton-name", "ranker"])
    assert r.exit_code != 0 and "--triton-force" in r.output
