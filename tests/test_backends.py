"""The backends package: one chooser (create_backend), one options object (BackendOptions, and
Recommender.load's keyword overrides of it), the run contract (a dict of every output the
manifest lists, in its declared dtypes: an FP16 graph's float16 outputs arrive float32 through
any backend) and no import cycle between the package's modules."""
from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import K, MAX_LEN, bundle, bundle_root, rewrite_manifest  # noqa: F401 (fixture)

from genattn_runtime import Recommender
from genattn_runtime.backends import (Backend, BackendOptions, OrtBackend, RoutedBackend, create_backend,
                                      run_outputs)
from genattn_runtime.backends.ort import _CudaGraphRunner
from genattn_runtime.bundle import Manifest, file_entry, read_manifest

pytestmark = pytest.mark.slow

MODULES = ["genattn_runtime.backends", "genattn_runtime.backends.base", "genattn_runtime.backends.ort",
           "genattn_runtime.backends.tensorrt", "genattn_runtime.backends.ann", "genattn_runtime.backends.factory",
           "genattn_runtime.ann", "genattn_runtime.recommender"]


# ---------------------------------------------------------------- imports

@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_without_its_libraries(module):
    """A fresh interpreter per module: an import cycle fails here whichever module comes first;
    onnxruntime, faiss and tensorrt are imported only when a backend is built."""
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('onnxruntime', 'faiss', 'tensorrt', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- options

def test_load_with_an_options_object_equals_load_with_overrides(bundle_root, monkeypatch):
    import genattn_runtime.recommender as recommender

    seen = []
    real = recommender.create_backend

    def spy(manifest, options):
        seen.append(options)
        return real(manifest, options)

    monkeypatch.setattr(recommender, "create_backend", spy)
    b = bundle(bundle_root, "softmax")
    base = BackendOptions(backend="cpu")
    for rec in (Recommender.load(b, BackendOptions(backend="cpu", threads=1, auto_cpu_route=False)),
                Recommender.load(b, backend="cpu", threads=1, auto_cpu_route=False),
                Recommender.load(b, base, threads=1, auto_cpu_route=False)):
        assert rec.backend == "cpu"
        rec.close()
    assert seen[0] == seen[1] == seen[2] == BackendOptions(backend="cpu", threads=1, auto_cpu_route=False)
    assert base == BackendOptions(backend="cpu")  # overrides never change the caller's object
    assert BackendOptions.from_flags({"backend": "cpu", "threads": 1, "k": 10, "nprobe": None}) == \
        BackendOptions(backend="cpu", threads=1)  # a front end's other flags and unset ones are ignored


def test_unknown_override_is_a_type_error_naming_it(bundle_root):
    with pytest.raises(TypeError, match="'thread'"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", thread=1)
    with pytest.raises(TypeError, match="options must be a BackendOptions"):
        Recommender.load(bundle(bundle_root, "softmax"), "cpu")
    with pytest.raises(TypeError, match="'bogus'"):
        BackendOptions().with_overrides(bogus=True)


@pytest.mark.parametrize("field, value, says", [
    ("backend", "gpu", "backend must be one of"),
    ("precision", "fp8", "precision must be 'fp32' or 'fp16'"),
    ("strict", "yes", "strict must be true or false, got 'yes'"),
    ("threads", -1, "threads must be an integer >= 0, got -1"),
    ("threads", 1.5, "threads must be an integer >= 0, got 1.5"),
    ("device_id", True, "device_id must be an integer >= 0, got True"),
    ("trt_max_batch", 0, "trt_max_batch must be an integer >= 1, got 0"),
    ("cuda_graph_batch", -2, "cuda_graph_batch must be None or an integer >= 0"),
    ("cuda_graph_buckets", (8, 0), "cuda_graph_buckets: CUDA graph buckets must be positive integers, got 0"),
    ("cuda_graph_buckets", "8", "cuda_graph_buckets must be a sequence of batch sizes, got '8'"),
    ("provider_options", {"CUDAExecutionProvider": 1}, "provider_options must be"),
    ("session_options", 3, "session_options must be None, an onnxruntime.SessionOptions"),
    ("trt_cache_dir", 5, "trt_cache_dir must be None or a folder path, got 5"),
    ("auto_cpu_route", None, "auto_cpu_route must be true or false, got None"),
    ("ef_search", 0, "ef_search must be an integer in 1..65536, got 0"),
    ("nprobe", True, "nprobe must be an integer in 1..65536, got True"),
])
def test_bad_option_values_are_value_errors_naming_the_field(bundle_root, field, value, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        BackendOptions(**{field: value})
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(BackendOptions(), **{field: value})
    with pytest.raises(ValueError, match=field):
        Recommender.load(bundle(bundle_root, "softmax"), **{field: value})


def test_options_normalise_what_they_accept():
    o = BackendOptions(cuda_graph_buckets=[64, 8, 8], provider_options=None, threads=np.int64(2))
    assert o.cuda_graph_buckets == (8, 64) and o.provider_options == {} and type(o.threads) is int


# ---------------------------------------------------------------- the chooser

def test_factory_chooses_the_exact_graph_and_refuses_ann_options(bundle_root):
    m = read_manifest(bundle(bundle_root, "softmax"))
    be = create_backend(m, BackendOptions(backend="cpu", threads=1))
    assert type(be) is OrtBackend and be.name == "cpu"
    out = be.run({"item_seq": np.zeros((2, MAX_LEN), np.int64), "exclude_items": np.zeros((2, MAX_LEN), np.int64)},
                 need=3)  # an exact graph ignores need
    assert list(out) == ["top_items", "top_scores"]
    assert out["top_items"].shape == (2, K) and out["top_items"].dtype == np.int64 and (out["top_items"] > 0).all()
    for key in ("ef_search", "nprobe"):
        with pytest.raises(ValueError, match="apply to bundles exported with --ann"):
            create_backend(m, BackendOptions(backend="cpu", **{key: 8}))


def test_factory_chooses_the_ann_backend(bundle_root):
    pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")
    from test_ann import ann_bundle

    from genattn_runtime.backends import AnnBackend
    from genattn_runtime.errors import BackendUnavailableError

    m = read_manifest(ann_bundle(bundle_root))
    be = create_backend(m, BackendOptions(backend="cpu", threads=1, ef_search=32))
    assert type(be) is AnnBackend and be.name == "cpu+ann" and be.search_params["ef_search"] == 32
    assert type(be.state) is OrtBackend and be.state.output_names == ["user_state"]  # the same ORT code path
    feeds = {"item_seq": np.zeros((2, MAX_LEN), np.int64), "exclude_items": np.zeros((2, MAX_LEN), np.int64)}
    out = be.run(feeds, need=3)
    assert list(out) == ["top_items", "top_scores", "user_state"]
    assert out["top_items"].dtype == np.int64 and out["top_scores"].dtype == np.float32
    assert (out["top_items"][:, :3] > 0).all() and (out["top_items"][:, 3:] == 0).all()
    assert np.isneginf(out["top_scores"][:, 3:]).all()
    assert be.run(feeds)["top_items"].shape == (2, K) and (be.run(feeds)["top_items"] > 0).all()
    with pytest.raises(BackendUnavailableError, match="state graph runs on ONNX Runtime"):
        create_backend(m, BackendOptions(backend="tensorrt", strict=True))


# ---------------------------------------------------------------- the run contract

def _edit_graph(src: Path, dst: Path, half_scores: bool = False, confidence: bool = False) -> None:
    """model.onnx rewritten: top_scores leaving as float16 (the FP16 variant of older bundles) and/or
    one more output, `confidence` [batch, 1] (the first top score), as later graphs add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = onnx.load(src)
    if half_scores:
        out = next(o for o in g.graph.output if o.name == "top_scores")
        for node in g.graph.node:
            node.output[:] = ["top_scores_fp32" if x == "top_scores" else x for x in node.output]
        g.graph.node.append(helper.make_node("Cast", ["top_scores_fp32"], ["top_scores"], to=TensorProto.FLOAT16))
        out.type.tensor_type.elem_type = TensorProto.FLOAT16
    if confidence:
        for name, v in (("conf_start", 0), ("conf_end", 1), ("conf_axis", 1)):
            g.graph.initializer.append(numpy_helper.from_array(np.array([v], np.int64), name))
        g.graph.node.append(helper.make_node("Slice", ["top_scores", "conf_start", "conf_end", "conf_axis"],
                                             ["confidence"]))
        g.graph.output.append(helper.make_tensor_value_info(
            "confidence", TensorProto.FLOAT16 if half_scores else TensorProto.FLOAT, ["batch", 1]))
    onnx.save(g, dst)


@pytest.fixture
def half(bundle_root, tmp_path) -> Path:
    """The softmax bundle with a model.fp16.onnx whose top_scores are float16 (a valid bundle)."""
    b = tmp_path / "half"
    shutil.copytree(bundle(bundle_root, "softmax"), b)
    _edit_graph(b / "model.onnx", b / "model.fp16.onnx", half_scores=True)
    rewrite_manifest(b, lambda m: (m["graph"].update(fp16_file="model.fp16.onnx"),
                                   m["files"].update({"model.fp16.onnx": file_entry(b / "model.fp16.onnx")})))
    return b


def _feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    seq = np.random.default_rng(seed).integers(0, 61, size=(n, MAX_LEN)).astype(np.int64)
    return {"item_seq": seq, "exclude_items": seq}


def test_fp16_scores_arrive_as_float32_through_every_backend(half):
    m = read_manifest(half)
    plain = create_backend(m, BackendOptions(backend="cpu", threads=1, precision="fp16"))
    assert type(plain) is OrtBackend
    feeds = _feeds(5)
    raw = plain.session.run(["top_scores"], feeds)[0]
    assert raw.dtype == np.float16  # the graph's own output: the cast is the backend layer's
    graphs = OrtBackend(half / "model.fp16.onnx", m, "cpu", BackendOptions(threads=1))
    graphs._graph = _CudaGraphRunner(graphs, (1, 4), device="cpu")  # float16 buffers bound per bucket
    routed = RoutedBackend(graphs, plain, cpu_rows=2)

    class Native(Backend):  # what the native TensorRT backend returns from an fp16 engine (no GPU here)
        output_dtypes = Backend.declared_dtypes(m)

        def _run(self, feeds, need=None):
            n = len(feeds["item_seq"])
            return {"top_items": raw_items[:n].astype(np.int32), "top_scores": raw[:n]}

    raw_items = plain.session.run(["top_items"], feeds)[0]
    for be in (plain, graphs, routed, Native()):
        for n in (1, 5):
            out = be.run({k: v[:n] for k, v in feeds.items()})
            assert out["top_scores"].dtype == np.float32 and out["top_items"].dtype == np.int64, be
            np.testing.assert_array_equal(out["top_scores"], raw[:n].astype(np.float32))
    with Recommender.load(half, backend="cpu", threads=1, precision="fp16") as rec:
        items, scores = rec.recommend_indices(feeds["item_seq"], k=5)
        assert scores.dtype == np.float32 and items.dtype == np.int64


@pytest.mark.parametrize("half_scores", [False, True])
def test_every_output_the_manifest_lists_is_returned(bundle_root, tmp_path, half_scores):
    """An output past top_items / top_scores (here `confidence` [batch, 1]) comes back from a plain
    run, IO binding and the CUDA graph runner alike, in the manifest's dtype; the optional full
    score matrix is never fetched."""
    src = bundle(bundle_root, "softmax")
    name = "model.fp16.onnx" if half_scores else "model.onnx"
    _edit_graph(src / "model.onnx", tmp_path / name, half_scores=half_scores, confidence=True)
    raw = copy.deepcopy(read_manifest(src).raw)
    raw["graph"]["outputs"].append({"name": "confidence", "dtype": "float32", "shape": ["batch", 1]})
    if half_scores:
        raw["graph"]["fp16_file"] = name
    raw["files"][name] = file_entry(tmp_path / name)  # backends read the graph through the file table
    m = Manifest(raw=raw, path=tmp_path)  # what a bundle format with more outputs would hold
    be = OrtBackend(tmp_path / name, m, "cpu", BackendOptions(threads=1))
    assert be.output_names == ["top_items", "top_scores", "confidence"]
    runner = _CudaGraphRunner(be, (2, 8), device="cpu")
    feeds = _feeds(3, seed=1)
    empty = {k: v[:0] for k, v in feeds.items()}
    for out in (be.run(feeds), be.run_iobinding(feeds), runner.run(feeds), runner.run(empty)):
        assert list(out) == ["top_items", "top_scores", "confidence"]
        assert out["confidence"].shape == (len(out["top_items"]), 1)
    out = be.run(feeds)
    assert out["confidence"].dtype == np.float32
    np.testing.assert_array_equal(out["confidence"][:, 0], out["top_scores"][:, 0])
    raw["graph"]["outputs"].append({"name": "scores", "dtype": "float32", "shape": ["batch", 61]})
    assert [t["name"] for t in run_outputs(m)] == ["top_items", "top_scores", "confidence"]
