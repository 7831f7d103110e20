"""Tests for genattn_export.tensorrt (graph contract, engine naming) and genattn_export.triton."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from genattn_export.tensorrt import (
    FORBIDDEN_OPS,
    TRT_MAX_OPSET,
    TRT_SUPPORTED_OPS,
    EngineProfile,
    TensorRTEngineMismatch,
    TensorRTGraphError,
    TensorRTUnavailable,
    assert_tensorrt_compatible,
    build_engine,
    check_engine_compat,
    check_tensorrt_graph,
    engine_name,
)
from genattn_export.triton import (
    TritonError,
    TritonModelExists,
    TritonOptions,
    check_model_name,
    check_triton_target,
    triton_config,
    triton_model_name,
    write_triton_repo,
)
from genattn_runtime.triton_config import TritonConfigError, parse_config, read_config, render_config

# ---------------------------------------------------------------------------- small ONNX graphs

L, D, N, K = 8, 4, 20, 5


def _model(nodes, inputs, outputs, initializers=(), opset=18, functions=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))


def _k(value=K, name="k"):
    return numpy_helper.from_array(np.array([value], dtype=np.int64), name)


def _valid_parts():
    """x (B, D) @ W (D, N) -> Softmax -> TopK(K constant, sorted): the serving graph in miniature."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])
    vals = helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", K])
    idx = helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", K])
    w = numpy_helper.from_array(np.ones((D, N), dtype=np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="matmul"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        helper.make_node("TopK", ["probs", "k"], ["top_scores", "top_items"], name="topk", axis=-1,
                         largest=1, sorted=1),
    ]
    return nodes, [x], [vals, idx], [w, _k()]


def _valid_model(**kw):
    nodes, ins, outs, inits = _valid_parts()
    return _model(nodes, ins, outs, inits, **kw)


def _with_node(node, extra_inputs=(), extra_inits=()):
    nodes, ins, outs, inits = _valid_parts()
    return _model(nodes + [node], ins + list(extra_inputs), outs, inits + list(extra_inits))


def _one_problem(model, *needles):
    problems = check_tensorrt_graph(model)
    assert len(problems) == 1, problems
    for n in needles:
        assert n in problems[0], problems[0]
    return problems[0]


def test_valid_graph_passes():
    model = _valid_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_tensorrt_graph(model) == []
    assert_tensorrt_compatible(model)


def test_op_tables():
    assert {"MatMul", "Softmax", "TopK", "ScatterElements", "LayerNormalization"} <= TRT_SUPPORTED_OPS
    assert {"Loop", "If", "Scan", "RandomNormal", "Multinomial", "Bernoulli"} <= FORBIDDEN_OPS
    assert "Multinomial" not in TRT_SUPPORTED_OPS and "NonExistentOp" not in TRT_SUPPORTED_OPS


def test_loop_is_forbidden_and_its_body_is_scanned():
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"], name="cond_id"),
         helper.make_node("RandomNormalLike", ["v_in"], ["v_out"], name="noise_in_body")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", K])],
    )
    trip = numpy_helper.from_array(np.array(2, dtype=np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["trip", "cond", "top_scores"], ["looped"], name="sampler_loop", body=body)
    problems = check_tensorrt_graph(_with_node(loop, extra_inits=[trip, cond]))
    assert any("'sampler_loop' (Loop)" in p and "forbidden" in p for p in problems), problems
    assert any("noise_in_body" in p and "RandomNormalLike" in p for p in problems), problems


def test_if_is_forbidden():
    branch = helper.make_graph([helper.make_node("Identity", ["top_scores"], ["o"], name="id")], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["batch", K])])
    node = helper.make_node("If", ["flag"], ["chosen"], name="branch", then_branch=branch, else_branch=branch)
    flag = numpy_helper.from_array(np.array(True), "flag")
    _one_problem(_with_node(node, extra_inits=[flag]), "'branch'", "If", "forbidden")


def test_random_normal_is_forbidden():
    node = helper.make_node("RandomNormal", [], ["eps"], name="draw_noise", shape=[2, K])
    _one_problem(_with_node(node), "'draw_noise'", "RandomNormal", "forbidden")


def test_custom_domain_op():
    node = helper.make_node("FusedAttention", ["top_scores"], ["fa"], name="fused", domain="com.example")
    _one_problem(_with_node(node), "'fused'", "com.example", "custom domain")


def test_unsupported_default_op():
    node = helper.make_node("Unique", ["top_scores"], ["u"], name="uniq")
    _one_problem(_with_node(node), "'uniq'", "Unique", "not supported")


def test_topk_k_from_graph_input():
    nodes, ins, outs, inits = _valid_parts()
    inits = [t for t in inits if t.name != "k"]
    ins.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    _one_problem(_model(nodes, ins, outs, inits), "'topk'", "TopK", "not a constant")


def test_topk_k_from_constant_node_is_accepted_and_bounded():
    nodes, ins, outs, inits = _valid_parts()
    inits = [t for t in inits if t.name != "k"]
    const = helper.make_node("Constant", [], ["k"], name="k_const", value=_k(K, "kv"))
    assert check_tensorrt_graph(_model([const] + nodes, ins, outs, inits)) == []
    big = helper.make_node("Constant", [], ["k"], name="k_const", value=_k(5000, "kv"))
    _one_problem(_model([big] + nodes, ins, outs, inits), "'topk'", "K = 5000", "3840")
    assert check_tensorrt_graph(_model([const] + nodes, ins, outs, inits), max_topk=4) != []


def test_topk_unsorted_and_smallest():
    nodes, ins, outs, inits = _valid_parts()
    nodes[-1] = helper.make_node("TopK", ["probs", "k"], ["top_scores", "top_items"], name="topk", sorted=0)
    _one_problem(_model(nodes, ins, outs, inits), "'topk'", "sorted=0")
    nodes[-1] = helper.make_node("TopK", ["probs", "k"], ["top_scores", "top_items"], name="topk", largest=0)
    _one_problem(_model(nodes, ins, outs, inits), "'topk'", "largest=0")


def test_dynamic_non_batch_axis():
    nodes, ins, outs, inits = _valid_parts()
    ins[0] = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])
    _one_problem(_model(nodes, ins, outs, inits), "graph input 'x'", "axis 1", "'width'")
    ins[0] = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None])
    _one_problem(_model(nodes, ins, outs, inits), "graph input 'x'", "axis 1", "no static size")


def test_double_graph_input():
    nodes, ins, outs, inits = _valid_parts()
    ins.append(helper.make_tensor_value_info("seed", TensorProto.DOUBLE, ["batch", 1]))
    _one_problem(_model(nodes, ins, outs, inits), "graph input 'seed'", "DOUBLE")
    outs.append(helper.make_tensor_value_info("names", TensorProto.STRING, ["batch", 1]))
    problems = check_tensorrt_graph(_model(nodes, ins, outs, inits))
    assert any("graph output 'names'" in p and "STRING" in p for p in problems)


def test_opset_out_of_range():
    _one_problem(_valid_model(opset=TRT_MAX_OPSET + 1), f"opset {TRT_MAX_OPSET + 1}")


def test_local_function_body_is_scanned():
    fn = helper.make_function("genattn.local", "Noisy", ["a"], ["b"],
                              [helper.make_node("RandomUniformLike", ["a"], ["b"], name="inner_rand")],
                              opset_imports=[helper.make_opsetid("", 18)])
    node = helper.make_node("Noisy", ["top_scores"], ["n"], name="call_noisy", domain="genattn.local")
    nodes, ins, outs, inits = _valid_parts()
    model = _model(nodes + [node], ins, outs, inits, functions=[fn])
    _one_problem(model, "function genattn.local::Noisy", "'inner_rand'", "RandomUniformLike")


def test_assert_lists_every_problem(tmp_path):
    nodes, ins, outs, inits = _valid_parts()
    nodes[-1] = helper.make_node("TopK", ["probs", "k"], ["top_scores", "top_items"], name="topk", sorted=0)
    nodes.append(helper.make_node("RandomNormal", [], ["eps"], name="draw_noise", shape=[2, K]))
    ins[0] = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", "width"])
    model = _model(nodes, ins, outs, inits)
    with pytest.raises(TensorRTGraphError) as ei:
        assert_tensorrt_compatible(model)
    assert len(ei.value.problems) == 4
    msg = str(ei.value)
    for needle in ("sorted=0", "'draw_noise'", "DOUBLE", "'width'", "4 problem(s)"):
        assert needle in msg
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TensorRTGraphError, match="bad.onnx"):
        assert_tensorrt_compatible(path)


# ---------------------------------------------------------------------------- real serving graphs

_REAL = [
    ("softmax", None, False),
    ("vae", {}, False),
    ("diffusion", {"n_steps": 2}, False),
    ("diffusion", {"n_steps": 2, "start": "noise"}, False),  # stochastic: noise is a graph input
    ("diffusion", {"n_steps": 2}, True),                     # the default (dynamo) exporter
]


@pytest.mark.parametrize("kind,sampling,dynamo", _REAL, ids=["softmax", "vae", "diffusion", "diffusion_noise",
                                                              "diffusion_dynamo"])
def test_exported_serving_graph_passes(tmp_path, kind, sampling, dynamo):
    torch = pytest.importorskip("torch")
    from genattn.config import ModelConfig
    from genattn.models import SASRec, Sampling
    from genattn_export.graph import GraphSpec, ServingGraph, finalize_onnx, to_onnx

    torch.manual_seed(0)
    model = SASRec(ModelConfig(n_items=50, max_len=8, d_model=16, attention=kind, generative_blocks="all",
                               pair_hidden=16))  # every block generative
    samp = Sampling(**sampling) if sampling is not None else None
    noise = model.noise_size(samp) if samp is not None else 0
    spec = GraphSpec.build(model, k=10, noise_size=noise, exclude=True, full_scores=False)
    graph = ServingGraph(model, samp, 10, exclude=True, noise=bool(noise), full_scores=False)
    path = tmp_path / "model.onnx"
    to_onnx(graph, spec, path, dynamo=dynamo)
    finalize_onnx(path, spec)
    m = onnx.load(str(path))
    assert check_tensorrt_graph(m) == []
    assert [i.name for i in m.graph.input] == spec.input_names
    if sampling and sampling.get("start") == "noise":
        assert "noise" in spec.input_names


# ---------------------------------------------------------------------------- engine build and naming


def test_build_engine_without_tensorrt(tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is importable here")
    onnx_path = tmp_path / "model.onnx"
    onnx.save(_valid_model(), str(onnx_path))
    with pytest.raises(TensorRTUnavailable) as ei:
        build_engine(onnx_path, tmp_path / "model.engine", profile=EngineProfile(), input_shapes={"x": [-1, D]})
    msg = str(ei.value)
    assert "pip install 'genattn[tensorrt]'" in msg and "NVIDIA GPU" in msg
    assert not (tmp_path / "model.engine").exists()


class _FakeTensorRT:
    """Just the TensorRT 10 Python API build_engine uses, recording the calls (no TensorRT here)."""

    __version__ = "10.3.0"

    def __init__(self, parse_ok=True):
        fake = self
        self.calls = {"profile": {}, "cache_in": None, "parse_ok": parse_ok}

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class NetworkDefinitionCreationFlag:
            EXPLICIT_BATCH = 0
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags):
                fake.calls["flags"] = flags
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class ParserError:
            def desc(self):
                return "Unsupported op"

            def node_name(self):
                return "topk"

            def node_operator(self):
                return "TopK"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network = network
                self.num_errors = 0 if fake.calls["parse_ok"] else 1

            def parse_from_file(self, path):
                for vi in onnx.load(path).graph.input:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(vi.name, tuple(dims)))
                return fake.calls["parse_ok"]

            def get_error(self, i):
                return ParserError()

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["profile"][name] = (list(lo), list(opt), list(hi))

        class Cache:
            def serialize(self):
                return b"timing-cache"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["workspace"] = (pool, size)

            def add_optimization_profile(self, profile):
                fake.calls["profiles_added"] = fake.calls.get("profiles_added", 0) + 1

            def create_timing_cache(self, data):
                fake.calls["cache_in"] = bytes(data)
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls["cache_ignore_mismatch"] = ignore_mismatch

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized-engine"

        self.Logger, self.NetworkDefinitionCreationFlag, self.MemoryPoolType = (
            Logger, NetworkDefinitionCreationFlag, MemoryPoolType)
        self.OnnxParser, self.Builder = OnnxParser, Builder


def test_build_engine_drives_the_tensorrt_api(tmp_path, monkeypatch):
    import sys

    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx_path, engine, cache = tmp_path / "model.onnx", tmp_path / "out" / "model.engine", tmp_path / "tc.bin"
    onnx.save(_valid_model(), str(onnx_path))
    meta = build_engine(onnx_path, engine, profile=EngineProfile(1, 4, 64), input_shapes={"x": [-1, D]},
                        workspace_gb=0.5, timing_cache_path=cache)
    assert engine.read_bytes() == b"serialized-engine"
    assert cache.read_bytes() == b"timing-cache" and fake.calls["cache_in"] == b""
    assert fake.calls["flags"] == 1 << 1  # STRONGLY_TYPED only: EXPLICIT_BATCH is the default from 10 on
    assert fake.calls["profile"] == {"x": ([1, D], [4, D], [64, D])} and fake.calls["profiles_added"] == 1
    assert fake.calls["workspace"] == ("workspace", 1 << 29)
    assert fake.calls["cache_ignore_mismatch"] is False
    assert meta["tensorrt_version"] == "10.3.0" and meta["engine_bytes"] == len(b"serialized-engine")
    assert meta["strongly_typed"] is True
    assert {"gpu_name", "compute_capability"} <= set(meta)
    assert meta["profile"]["min_batch"] == 1 and meta["profile"]["max_batch"] == 64

    build_engine(onnx_path, engine, profile=EngineProfile(), input_shapes={"x": [-1, D]}, timing_cache_path=cache)
    assert fake.calls["cache_in"] == b"timing-cache"  # the saved cache is loaded on the next build
    with pytest.raises(ValueError, match="do not match the network inputs"):
        build_engine(onnx_path, engine, profile=EngineProfile(), input_shapes={"y": [-1, D]})
    with pytest.raises(ValueError, match="does not fit"):
        build_engine(onnx_path, engine, profile=EngineProfile(), input_shapes={"x": [-1, D + 1]})

    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTensorRT(parse_ok=False))
    with pytest.raises(TensorRTGraphError, match="name 'topk', operator 'TopK': Unsupported op"):
        build_engine(onnx_path, tmp_path / "other.engine", profile=EngineProfile(), input_shapes={"x": [-1, D]})
    assert not (tmp_path / "other.engine").exists()


def test_build_engine_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="min_batch"):
        EngineProfile(min_batch=8, opt_batch=4)
    with pytest.raises(ValueError, match="axis 0 must be -1"):
        build_engine(tmp_path / "m.onnx", tmp_path / "e", profile=EngineProfile(), input_shapes={"x": [4, D]})


def test_engine_name():
    assert engine_name("9.0", "10.3.0") == "model.sm90.trt10.3.0.engine"
    assert engine_name("8.6", "10.13.2.6") == "model.sm86.trt10.13.2.6.engine"
    assert engine_name("sm_89", "11.0.0", stem="genattn") == "genattn.sm89.trt11.0.0.engine"
    assert engine_name(None, "10.3.0") == engine_name("unknown", "10.3.0") == "model.unknown-gpu.trt10.3.0.engine"
    with pytest.raises(ValueError):
        engine_name("hopper", "10.3.0")
    with pytest.raises(ValueError):
        engine_name("9.0", "10.3/../x")


def test_check_engine_compat():
    meta = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    check_engine_compat(meta, current={"tensorrt_version": "10.3.0.26", "compute_capability": "9.0"})
    with pytest.raises(TensorRTEngineMismatch, match="TensorRT 10.3.0 .*10.4.0"):
        check_engine_compat(meta, current={"tensorrt_version": "10.4.0", "compute_capability": "9.0"})
    with pytest.raises(TensorRTEngineMismatch, match="compute capability 9.0 .*8.6"):
        check_engine_compat(meta, current={"tensorrt_version": "10.3.0", "compute_capability": "8.6"})
    with pytest.raises(TensorRTUnavailable):  # a mismatch is a kind of "TensorRT unavailable"
        check_engine_compat(meta, current={"tensorrt_version": "10.3.0", "compute_capability": None})
    with pytest.raises(ValueError, match="lacks"):
        check_engine_compat({"gpu_name": "x"}, current={"tensorrt_version": "10.3.0", "compute_capability": "9.0"})
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(TensorRTUnavailable, match="genattn\\[tensorrt\\]"):
            check_engine_compat(meta)


# ---------------------------------------------------------------------------- Triton

GRAPH = {
    "inputs": [{"name": "item_seq", "dtype": "int64", "shape": ["batch", 50]},
               {"name": "exclude_items", "dtype": "int64", "shape": ["batch", 50]}],
    "outputs": [{"name": "top_items", "dtype": "int64", "shape": ["batch", 100]},
                {"name": "top_scores", "dtype": "float32", "shape": ["batch", 100]}],
}


def _dims(tensors) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc import model_config_pb2 as pb2

    return [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


def test_triton_config_parses():
    cfg = parse_config(render_config(triton_config("genattn", "onnxruntime", GRAPH["inputs"], GRAPH["outputs"],
                                                   TritonOptions())))
    assert cfg.name == "genattn" and cfg.backend == "onnxruntime" and not cfg.platform
    assert cfg.default_model_filename == "model.onnx"
    assert cfg.max_batch_size == 256
    assert _dims(cfg.input) == [("item_seq", "TYPE_INT64", [50]), ("exclude_items", "TYPE_INT64", [50])]
    assert _dims(cfg.output) == [("top_items", "TYPE_INT64", [100]), ("top_scores", "TYPE_FP32", [100])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 32, 64]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.KIND_CPU == g.kind) for g in cfg.instance_group] == [(1, True)]


def test_triton_config_tensorrt_and_dtypes():
    outs = GRAPH["outputs"] + [{"name": "scores", "dtype": "float16", "shape": ["batch", 51]},
                               {"name": "flag", "dtype": "bool", "shape": ["batch"]}]
    ins = [{"name": "item_seq", "dtype": "int32", "shape": ["batch", 8]}]
    opts = TritonOptions(preferred_batch_sizes=[4], instance_count=2)
    cfg = parse_config(render_config(triton_config("g_trt", "tensorrt", ins, outs, opts)))
    assert cfg.platform == "tensorrt_plan" and not cfg.backend
    assert cfg.default_model_filename == "model.plan"
    assert _dims(cfg.input) == [("item_seq", "TYPE_INT32", [8])]
    assert _dims(cfg.output)[2:] == [("scores", "TYPE_FP16", [51]), ("flag", "TYPE_BOOL", [1])]
    assert cfg.output[3].HasField("reshape") and list(cfg.output[3].reshape.shape) == []  # [1] served as a scalar
    assert [(g.count, g.KIND_GPU == g.kind) for g in cfg.instance_group] == [(2, True)]


def test_triton_config_rejects_bad_input():
    with pytest.raises(ValueError, match="complex64"):
        triton_config("g", "onnxruntime", [{"name": "x", "dtype": "complex64", "shape": ["batch", 2]}],
                      GRAPH["outputs"], TritonOptions())
    with pytest.raises(ValueError, match="batch axis"):
        triton_config("g", "onnxruntime", [{"name": "x", "dtype": "int64", "shape": [4, 2]}],
                      GRAPH["outputs"], TritonOptions())
    with pytest.raises(ValueError, match="backend"):
        triton_config("g", "tensorflow", GRAPH["inputs"], GRAPH["outputs"], TritonOptions())
    with pytest.raises(TritonConfigError, match="model 'g'.*'item_seq' is used twice"):
        triton_config("g", "onnxruntime", GRAPH["inputs"] + GRAPH["inputs"][:1], GRAPH["outputs"], TritonOptions())
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        TritonOptions(max_batch_size=16, preferred_batch_sizes=[8, 32])
    with pytest.raises(ValueError, match="instance_kind"):
        TritonOptions(instance_kind="GPU")
    with pytest.raises(ValueError, match="model_name"):
        TritonOptions(model_name="../evil")


def test_parse_config_rejects():
    good = render_config(triton_config("genattn", "onnxruntime", GRAPH["inputs"], GRAPH["outputs"], TritonOptions()))
    cases = [  # (edit, what the error names)
        (lambda t: t.replace('name: "genattn"\n', ""), "name is missing"),
        (lambda t: t.replace("TYPE_INT64", "TYPE_INT65", 1), "TYPE_INT65"),
        (lambda t: t.replace("KIND_CPU", "KIND_TPU"), "KIND_TPU"),
        (lambda t: t.replace("max_batch_size", "max_batch_siz"), "no field named \"max_batch_siz\""),
        (lambda t: t.replace("max_batch_size: 256", "max_batch_size: 16"), "preferred_batch_size 32"),
        (lambda t: t.replace("dims: 50", "dims: [ 50", 1), "line 8: .*Expected"),  # the list is unclosed
        (lambda t: t.replace("dims: 50", "dims: 0", 1), r"dims \[0\]"),
        (lambda t: t + 'name: "again"\n', "multiple \"name\""),
    ]
    for edit, what in cases:
        with pytest.raises(TritonConfigError, match=what) as e:
            parse_config(edit(good), source="repo/m/config.pbtxt")
        assert str(e.value).startswith("repo/m/config.pbtxt"), str(e.value)  # names the file
        assert isinstance(e.value, ValueError)


def test_parse_config_reads_text_format_variants():
    text = """
    name: 'm'  # comment
    platform: "tensorrt_plan"
    max_batch_size: 8
    input { name: "a" data_type: TYPE_FP32 dims: 3 dims: 4 }
    input < name: "b", data_type: TYPE_BOOL, dims: [ -1 ] >
    output [ { name: "c" data_type: TYPE_FP32 dims: [ 2 ] } ];
    dynamic_batching { }
    parameters { key: "x" value: { string_value: "y" } }
    """
    cfg = parse_config(text)
    assert [list(t.dims) for t in cfg.input] == [[3, 4], [-1]]
    assert cfg.HasField("dynamic_batching") and not cfg.dynamic_batching.preferred_batch_size
    assert cfg.parameters["x"].string_value == "y"


def _manifest(**trt):
    m = {"graph": GRAPH}
    if trt:
        m["tensorrt"] = {"tensorrt_version": "10.3.0", "compute_capability": "9.0", "profile": trt}
    return m


def test_write_triton_repo(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx-bytes")
    (tmp_path / "items.json").write_text('{"item_ids": ["a", "b"]}')
    engine = tmp_path / "model.sm90.trt10.3.0.engine"
    engine.write_bytes(b"plan-bytes")
    repo = tmp_path / "triton"

    written = write_triton_repo(repo, _manifest(), onnx_path, None, TritonOptions())
    assert written == [repo / "genattn" / "config.pbtxt"]
    assert (repo / "genattn" / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (repo / "genattn" / "items.json").read_text() == '{"item_ids": ["a", "b"]}'
    assert not (repo / "genattn_trt").exists()
    assert read_config(written[0]).name == "genattn"

    opts = TritonOptions(model_name="rec", backends=("onnxruntime", "tensorrt"))
    written = write_triton_repo(repo, _manifest(min_batch=1, opt_batch=8, max_batch=32), onnx_path, engine, opts)
    assert written == [repo / "rec" / "config.pbtxt", repo / "rec_trt" / "config.pbtxt"]
    assert (repo / "rec_trt" / "1" / "model.plan").read_bytes() == b"plan-bytes"
    assert (repo / "rec_trt" / "items.json").is_file()
    trt_cfg = read_config(written[1])
    assert trt_cfg.name == "rec_trt" and trt_cfg.platform == "tensorrt_plan"
    assert trt_cfg.max_batch_size == 32  # capped to the engine's profile
    assert list(trt_cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    assert trt_cfg.instance_group[0].kind == trt_cfg.instance_group[0].KIND_GPU
    assert sorted(p.name for p in repo.iterdir()) == ["genattn", "rec", "rec_trt"]  # no temp folders left

    # rewriting replaces the model folder whole
    (repo / "rec" / "stale.txt").write_text("x")
    write_triton_repo(repo, _manifest(), onnx_path, None, TritonOptions(model_name="rec"))
    assert not (repo / "rec" / "stale.txt").exists()


def test_write_triton_repo_errors(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="id map"):
        write_triton_repo(tmp_path / "r", _manifest(), onnx_path, None, TritonOptions())
    (tmp_path / "items.json").write_text("{}")
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ValueError, match="engine_path"):
        write_triton_repo(tmp_path / "r", _manifest(), onnx_path, None, TritonOptions(backends=("tensorrt",)))
    with pytest.raises(ValueError, match="min_batch"):
        write_triton_repo(tmp_path / "r", _manifest(min_batch=4, max_batch=64), onnx_path, engine, TritonOptions())
    with pytest.raises(FileNotFoundError):
        write_triton_repo(tmp_path / "r", _manifest(), tmp_path / "missing.onnx", None, TritonOptions())
    bad = {"graph": {"inputs": [{"name": "x", "dtype": "str", "shape": ["batch", 1]}], "outputs": GRAPH["outputs"]}}
    with pytest.raises(ValueError):
        write_triton_repo(tmp_path / "r", bad, onnx_path, None, TritonOptions())
    assert not (tmp_path / "r" / "genattn").exists()


@pytest.mark.parametrize("folder,name", [("rec", "rec"), ("my bundle (v2)", "my_bundle__v2_"), (".hidden", "hidden"),
                                         ("-x.1", "x.1"), ("ü", "genattn"), ("a" * 300, "a" * 200)])
def test_triton_model_name_from_bundle_folder(tmp_path, folder, name):
    assert triton_model_name(tmp_path / folder) == name
    assert check_model_name(name) == name


@pytest.mark.parametrize("name,why", [("", "empty"), ("a/b", "'/'"), ("../x", "'/'"), ("-x", "must not start"),
                                      (".x", "must not start"), ("a b", "' '"), ("x" * 201, "at most 200")])
def test_triton_model_name_is_validated(name, why):
    with pytest.raises(TritonError, match=why):
        check_model_name(name)
    with pytest.raises(TritonError, match="model_name"):  # also a ValueError, as the other option errors
        TritonOptions(model_name=name)


def _bundle(folder, onnx=b"onnx", fp16=b"onnx16"):
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx)
    (folder / "model.fp16.onnx").write_bytes(fp16)
    (folder / "items.json").write_text(f'{{"item_ids": ["{folder.name}"]}}')
    return folder


def test_write_triton_repo_fp16_variant_and_provenance(tmp_path, caplog):
    import json

    b = _bundle(tmp_path / "b1")
    repo = tmp_path / "repo"
    written = write_triton_repo(repo, _manifest(), b / "model.onnx", None, TritonOptions(model_name="rec"),
                                fp16_path=b / "model.fp16.onnx")
    assert written == [repo / "rec" / "config.pbtxt", repo / "rec_fp16" / "config.pbtxt"]
    fp16 = read_config(written[1])
    assert fp16.name == "rec_fp16" and fp16.backend == "onnxruntime"
    # the fp16 graph keeps fp32 / int64 I/O, so the tensors are the fp32 model's
    assert list(fp16.input) == list(read_config(written[0]).input)
    assert (repo / "rec_fp16" / "1" / "model.onnx").read_bytes() == b"onnx16"
    for folder in ("rec", "rec_fp16"):
        assert json.loads((repo / folder / "items.json").read_text()) == {"item_ids": ["b1"]}
        info = json.loads((repo / folder / "genattn_model.json").read_text())
        assert info["bundle"] == str(b.resolve())
    assert json.loads((repo / "rec_fp16" / "genattn_model.json").read_text())["variant"] == "fp16"
    # re-exported without fp16: the old fp16 model of the same bundle is flagged as stale
    with caplog.at_level("WARNING", logger="genattn_export.triton"):
        write_triton_repo(repo, _manifest(), b / "model.onnx", None, TritonOptions(model_name="rec"))
    assert "rec_fp16" in caplog.text and "stale" in caplog.text
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        write_triton_repo(repo, _manifest(), b / "model.onnx", None, TritonOptions(model_name="x"),
                          fp16_path=b / "missing.onnx")


def test_triton_repo_refuses_another_bundles_model(tmp_path):
    b1, b2 = _bundle(tmp_path / "b1", onnx=b"one"), _bundle(tmp_path / "b2", onnx=b"two")
    repo = tmp_path / "repo"
    opts = TritonOptions(model_name="rec")
    write_triton_repo(repo, _manifest(), b1 / "model.onnx", None, opts)
    # the same bundle may rewrite its own model
    write_triton_repo(repo, _manifest(), b1 / "model.onnx", None, opts)
    # another bundle may not, with any of the variants it would write
    with pytest.raises(TritonModelExists, match="'rec'.*b1.*--triton-name.*--triton-force"):
        write_triton_repo(repo, _manifest(), b2 / "model.onnx", None, opts)
    write_triton_repo(repo, _manifest(), b1 / "model.onnx", None, TritonOptions(model_name="rec2"),
                      fp16_path=b1 / "model.fp16.onnx")
    with pytest.raises(TritonModelExists, match="rec2_fp16"):
        check_triton_target(repo, "rec2", b2, ["fp16"])
    assert (repo / "rec" / "1" / "model.onnx").read_bytes() == b"one", "a refused write changed the model"
    # a folder genattn did not write is refused too
    (repo / "theirs").mkdir()
    with pytest.raises(TritonModelExists, match="not written by genattn"):
        write_triton_repo(repo, _manifest(), b1 / "model.onnx", None, TritonOptions(model_name="theirs"))
    # force replaces
    write_triton_repo(repo, _manifest(), b2 / "model.onnx", None, opts, force=True)
    assert (repo / "rec" / "1" / "model.onnx").read_bytes() == b"two"
    with pytest.raises(TritonError, match="not a folder"):
        (tmp_path / "file").write_text("x")
        check_triton_target(tmp_path / "file", "rec", b1, ["onnxruntime"])


def test_export_and_runtime_share_one_engine_compatibility_rule():
    from genattn_runtime.backends.tensorrt import engine_mismatch

    # The same release, build number aside: compatible; another patch release is not.
    assert engine_mismatch("10.3.0.26", "9.0", "10.3.0", "9.0") is None
    assert "TensorRT 10.3.0" in engine_mismatch("10.3.0", "9.0", "10.3.1", "9.0")
    assert "compute capability 9.0" in engine_mismatch("10.3.0", "9.0", "10.3.0", "8.6")
    assert engine_mismatch("10.3.0", None, "10.3.0", "8.6") is None  # unrecorded: not checked
    with pytest.raises(ValueError, match="not like"):
        engine_mismatch("ten", "9.0", "10.3.0", "9.0")
    # check_engine_compat (export) says no exactly where the runtime's rule does.
    meta = {"tensorrt_version": "10.3.0", "compute_capability": "9.0"}
    for now in (("10.3.1", "9.0"), ("10.4.0", "9.0"), ("10.3.0", "8.6"), ("10.3.0.99", "9.0")):
        current = {"tensorrt_version": now[0], "compute_capability": now[1]}
        refused = engine_mismatch("10.3.0", "9.0", *now) is not None
        if refused:
            with pytest.raises(TensorRTEngineMismatch):
                check_engine_compat(meta, current=current)
        else:
            check_engine_compat(meta, current=current)
