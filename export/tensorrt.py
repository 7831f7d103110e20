"""TensorRT: a static contract check of the ONNX graph, and a thin engine builder.

The check runs everywhere (onnx only) and tells, before any GPU is involved, whether the
serving graph keeps our TensorRT contract (docs/export.md, "The graph" and "Randomness"): only ops the TensorRT 10
ONNX parser supports, no Loop / If / Scan, no in-graph randomness, TopK with a constant K,
static shapes except the batch axis.

The builder is written against the TensorRT 10 / 11 Python API and imports `tensorrt`
lazily. Precision comes from the ONNX itself (strongly typed network): TensorRT 11
removed the FP16 builder flag. Engines are specific to the GPU (compute capability) and
the TensorRT version, so they are named and checked for both.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genattn_runtime.errors import BackendUnavailableError
from genattn_runtime.backends.tensorrt import engine_mismatch, trt_release

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install 'genattn[tensorrt]' (TensorRT >= 10 and cuda-python); "
                "it needs an NVIDIA GPU and a recent NVIDIA driver")


class TensorRTUnavailable(BackendUnavailableError, RuntimeError):
    """TensorRT, cuda-python, a GPU or a driver is missing here; the message says which."""


class TensorRTEngineMismatch(TensorRTUnavailable):
    """An engine was built for another GPU (compute capability) or TensorRT version."""


class TensorRTGraphError(ValueError):
    """The ONNX graph breaks our TensorRT contract or the parser rejects it; lists every problem."""

    def __init__(self, problems: list[str], source: str = "ONNX graph"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is not TensorRT-compatible ({len(self.problems)} problem(s)):\n{lines}")


class TensorRTBuildError(RuntimeError):
    """The TensorRT builder failed on a graph the parser accepted (see the TensorRT log)."""


# Opset range of the default ONNX domain the TensorRT 10 ONNX parser supports: onnx-tensorrt
# docs/operators.md for TensorRT 10.15 ("inclusive range of opset 9 to opset 24"); earlier
# 10.x releases documented lower ceilings, TensorRT 11 raises it to 25.
TRT_MIN_OPSET = 9
TRT_MAX_OPSET = 24

# TopK: K is a build-time constant of the TensorRT TopK layer, limited to 3840 in TensorRT 10
# (operators.md words it "less than 3840"; our exporter caps K far lower, at graph.MAX_K).
TRT_MAX_TOPK = 3840

# ONNX ops marked supported ("Y") in onnx-tensorrt docs/operators.md, TensorRT 10.15
# (release/10.x branch). Per-op restrictions of that table are not all checked here;
# the parser is the final word (build_engine reports its errors).
TRT_SUPPORTED_OPS: frozenset[str] = frozenset("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod
    Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
    QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
    ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization
    RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND
    Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth
    Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Upsample Where Xor
""".split())

# Our contract (docs/export.md): the sampler is unrolled (no control flow) and noise is an
# explicit input (no in-graph random ops), so one backend is bit-reproducible.
FORBIDDEN_OPS: frozenset[str] = frozenset({
    "Loop", "If", "Scan",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})

DEFAULT_DOMAINS = ("", "ai.onnx")

# Element types TensorRT takes as network inputs / outputs (onnx TensorProto names). DOUBLE is
# only cast down inside the network; 8-bit, 4-bit and FP8 types are quantized types that
# enter through Q/DQ nodes, not as I/O of our graph.
IO_DTYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "BOOL"})


# --------------------------------------------------------------------------- graph contract


def check_tensorrt_graph(model: Any, *, max_topk: int = TRT_MAX_TOPK) -> list[str]:
    """Every way `model` (an onnx.ModelProto) breaks the TensorRT contract; empty = OK.

    Checks the opset, graph I/O (dtype; static shapes except axis 0), and every node,
    including the bodies of control-flow subgraphs and model-local functions.
    """
    problems: list[str] = []
    opsets = {o.domain: o.version for o in model.opset_import}
    version = next((opsets[d] for d in DEFAULT_DOMAINS if d in opsets), None)
    if version is None:
        problems.append("model imports no default-domain ('' / 'ai.onnx') opset")
    elif not TRT_MIN_OPSET <= version <= TRT_MAX_OPSET:
        problems.append(f"default-domain opset {version} is outside {TRT_MIN_OPSET}..{TRT_MAX_OPSET}, "
                        f"the range the TensorRT 10 ONNX parser supports")

    g = model.graph
    for kind, values in (("input", g.input), ("output", g.output)):
        for vi in values:
            problems += _io_problems(kind, vi)

    functions = {(f.domain, f.name): f for f in model.functions}
    _scan_graph(g.node, g.initializer, "graph", set(), functions, max_topk, problems, set())
    return problems


def assert_tensorrt_compatible(model_or_path: Any, *, max_topk: int = TRT_MAX_TOPK) -> None:
    """Raise TensorRTGraphError listing every problem check_tensorrt_graph finds."""
    import onnx

    source = "ONNX graph"
    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        source = str(model_or_path)
        model = onnx.load(source)
    problems = check_tensorrt_graph(model, max_topk=max_topk)
    if problems:
        raise TensorRTGraphError(problems, source)


def _io_problems(kind: str, vi: Any) -> list[str]:
    import onnx

    where = f"graph {kind} {vi.name!r}"
    if vi.type.WhichOneof("value") != "tensor_type":
        return [f"{where}: type {vi.type.WhichOneof('value')} is not a tensor; TensorRT I/O must be tensors"]
    tt = vi.type.tensor_type
    out = []
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type)
    if dtype not in IO_DTYPES:
        out.append(f"{where}: element type {dtype} cannot be a TensorRT network input/output "
                   f"(allowed: {', '.join(sorted(IO_DTYPES))})")
    if not tt.HasField("shape"):
        out.append(f"{where}: no shape; TensorRT needs static shapes except the batch axis")
        return out
    for axis, d in enumerate(tt.shape.dim):
        if axis == 0:
            if d.HasField("dim_value") and d.dim_value < 1:
                out.append(f"{where}: batch axis has size {d.dim_value}")
            continue
        if d.HasField("dim_param"):
            out.append(f"{where}: axis {axis} is dynamic ({d.dim_param!r}); only axis 0 (batch) may be")
        elif not d.HasField("dim_value") or d.dim_value < 1:
            out.append(f"{where}: axis {axis} has no static size; only axis 0 (batch) may be dynamic")
    return out


def _node_label(node: Any, index: int, scope: str) -> str:
    name = node.name or f"#{index}"
    domain = f"{node.domain}::" if node.domain not in DEFAULT_DOMAINS else ""
    return f"{scope} node {name!r} ({domain}{node.op_type})"


def _scan_graph(nodes: Any, initializers: Any, scope: str, outer_consts: set[str], functions: dict,
                max_topk: int, problems: list[str], seen_functions: set) -> None:
    """Append the problems of `nodes` (a graph's or a function's) and their subgraphs to `problems`."""
    consts = _constants(nodes, initializers)
    names = set(outer_consts) | set(consts)
    for i, node in enumerate(nodes):
        label = _node_label(node, i, scope)
        key = (node.domain, node.op_type)
        if key in functions:  # a model-local function: the parser expands it, so check its body
            if key not in seen_functions:
                seen_functions.add(key)
                _scan_graph(functions[key].node, (), f"function {node.domain}::{node.op_type}", set(),
                            functions, max_topk, problems, seen_functions)
            continue
        if node.domain not in DEFAULT_DOMAINS:
            problems.append(f"{label}: custom domain {node.domain!r}; TensorRT would need a plugin")
        elif node.op_type in FORBIDDEN_OPS:
            problems.append(f"{label}: {node.op_type} is forbidden by the genattn graph contract "
                            f"(no control flow, no in-graph randomness)")
        elif node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{label}: op not supported by the TensorRT 10 ONNX parser")
        elif node.op_type == "TopK":
            problems += _topk_problems(node, label, consts, names, max_topk)
        for attr in node.attribute:  # bodies of control-flow nodes
            for j, sub in enumerate(_subgraphs(attr)):
                sub_scope = f"{scope}/{node.name or f'#{i}'}.{attr.name}" + (f"[{j}]" if j else "")
                _scan_graph(sub.node, sub.initializer, sub_scope, names, functions, max_topk, problems,
                            seen_functions)


def _subgraphs(attr: Any) -> list:
    if attr.HasField("g"):
        return [attr.g]
    return list(attr.graphs)


def _constants(nodes: Any, initializers: Any) -> dict[str, Any]:
    """Name -> initializer TensorProto or Constant node; values are read only where needed."""
    out = {t.name: t for t in initializers}
    for node in nodes:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            out[node.output[0]] = node
    return out


def _constant_value(obj: Any) -> Any:
    """numpy value of an initializer or a Constant node (None for kinds we do not read)."""
    import numpy as np
    from onnx import numpy_helper

    if not hasattr(obj, "op_type"):
        return numpy_helper.to_array(obj)
    for a in obj.attribute:
        if a.name == "value" and a.HasField("t"):
            return numpy_helper.to_array(a.t)
        if a.name == "value_int":
            return np.asarray(a.i)
        if a.name == "value_ints":
            return np.asarray(list(a.ints))
    return None


def _topk_problems(node: Any, label: str, consts: dict, const_names: set, max_topk: int) -> list[str]:
    attrs = {a.name: a for a in node.attribute}
    out = []
    if len(node.input) >= 2:  # opset >= 10: K is the second input
        k_name = node.input[1]
        if k_name not in const_names:
            out.append(f"{label}: K comes from {k_name!r}, not a constant (initializer or Constant node); "
                       f"TensorRT needs K at build time")
            k = None
        else:
            k = _constant_value(consts[k_name]) if k_name in consts else None  # outer scope: unchecked
    else:
        k = attrs["k"].i if "k" in attrs else None
    if k is not None:
        try:
            kv = int(k.reshape(-1)[0]) if hasattr(k, "reshape") else int(k)
        except (TypeError, ValueError, IndexError):
            kv = None
        if kv is None:
            out.append(f"{label}: K constant is not a single integer")
        elif not 1 <= kv <= max_topk:
            out.append(f"{label}: K = {kv} is outside 1..{max_topk}, the TensorRT TopK limit")
    if "sorted" in attrs and attrs["sorted"].i == 0:
        out.append(f"{label}: sorted=0; TensorRT TopK needs sorted=1")
    if "largest" in attrs and attrs["largest"].i != 1:
        out.append(f"{label}: largest={attrs['largest'].i}; the serving graph must take the largest scores")
    return out


# --------------------------------------------------------------------------- engine build


@dataclass
class EngineProfile:
    """The one optimisation profile: the batch range the engine accepts, tuned for opt_batch."""
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got "
                             f"{self.min_batch}, {self.opt_batch}, {self.max_batch}")


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not loadable
        raise TensorRTUnavailable(f"TensorRT is not importable here ({e}); {INSTALL_HINT}") from e
    return trt


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_info() -> tuple[str | None, str | None]:
    """(name, compute capability like "9.0") of the current CUDA device, or (None, None).

    cuda-python first (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6), then torch.cuda.
    """
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        ok = cudart.cudaError_t.cudaSuccess
        err, dev = cudart.cudaGetDevice()
        if err == ok:
            err, props = cudart.cudaGetDeviceProperties(dev)
            if err == ok:
                name = props.name
                if isinstance(name, bytes):
                    name = name.split(b"\0", 1)[0].decode(errors="replace")
                return str(name), f"{props.major}.{props.minor}"
    except Exception:  # noqa: BLE001 - any failure here means "unknown", the torch probe follows
        log.debug("cuda-python GPU probe failed", exc_info=True)
    try:
        import torch

        if torch.cuda.is_available():
            i = torch.cuda.current_device()
            major, minor = torch.cuda.get_device_capability(i)
            return torch.cuda.get_device_name(i), f"{major}.{minor}"
    except Exception:  # noqa: BLE001
        log.debug("torch.cuda GPU probe failed", exc_info=True)
    return None, None


def _check_input_shapes(input_shapes: dict[str, list[int]]) -> None:
    if not input_shapes:
        raise ValueError("input_shapes is empty: give every graph input as name -> [-1, ...]")
    for name, shape in input_shapes.items():
        shape = list(shape)
        if not shape or shape[0] != -1 or any(int(d) < 1 for d in shape[1:]):
            raise ValueError(f"input_shapes[{name!r}] = {shape}: axis 0 must be -1 (batch) and the "
                             f"other axes static positive sizes")


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        parts = []
        for attr in ("node_name", "node_operator"):  # TensorRT >= 10 parser errors name the node
            fn = getattr(e, attr, None)
            try:
                v = fn() if callable(fn) else None
            except Exception:  # noqa: BLE001
                v = None
            if v:
                parts.append(f"{attr.split('_')[1]} {v!r}")
        desc = e.desc() if callable(getattr(e, "desc", None)) else str(e)
        out.append(f"{', '.join(parts) + ': ' if parts else ''}{desc}")
    return out or ["the TensorRT ONNX parser failed without reporting an error"]


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, profile: EngineProfile | None = None,
                 input_shapes: dict[str, list[int]], workspace_gb: float = 2.0,
                 timing_cache_path: str | Path | None = None) -> dict:
    """Build and atomically write a serialized TensorRT engine for `onnx_path`.

    One optimisation profile sets min/opt/max batch on axis 0 of every input; the network is
    strongly typed where TensorRT offers it, so precision is the ONNX's own. The timing cache
    is loaded when the file exists and saved after the build. Returns what the bundle
    manifest records: TensorRT version, GPU name and compute capability, engine size, profile.
    """
    from genattn.fileio import write_bytes_atomic

    profile = profile or EngineProfile()
    _check_input_shapes(input_shapes)
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb must be > 0, got {workspace_gb}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")

    trt = _import_tensorrt()
    assert_tensorrt_compatible(onnx_path)
    gpu_name, cc = gpu_info()

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # TensorRT returns a null builder without a usable GPU / driver
        raise TensorRTUnavailable(f"could not create a TensorRT builder ({e}); {INSTALL_HINT}") from e

    flags, NF = 0, trt.NetworkDefinitionCreationFlag
    if _trt_major(trt) < 10 and hasattr(NF, "EXPLICIT_BATCH"):  # default (and deprecated) from 10 on
        flags |= 1 << int(NF.EXPLICIT_BATCH)
    if hasattr(NF, "STRONGLY_TYPED"):
        flags |= 1 << int(NF.STRONGLY_TYPED)
    strongly_typed = hasattr(NF, "STRONGLY_TYPED") or _trt_major(trt) >= 11  # 11 is always strongly typed
    network = builder.create_network(flags)

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTGraphError(_parser_errors(parser), f"{onnx_path} (TensorRT ONNX parser)")

    net_inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if set(net_inputs) != set(input_shapes):
        raise ValueError(f"input_shapes names {sorted(input_shapes)} do not match the network inputs "
                         f"{sorted(net_inputs)}")
    for name, shape in input_shapes.items():
        net = net_inputs[name]
        if len(net) != len(shape) or any(n not in (-1, int(d)) for n, d in zip(net[1:], shape[1:])):
            raise ValueError(f"input_shapes[{name!r}] = {list(shape)} does not fit the network's {list(net)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    shapes = {}
    for name, shape in input_shapes.items():
        rest = [int(d) for d in shape[1:]]
        s = {"min": [profile.min_batch, *rest], "opt": [profile.opt_batch, *rest], "max": [profile.max_batch, *rest]}
        opt_profile.set_shape(name, s["min"], s["opt"], s["max"])
        shapes[name] = s
    config.add_optimization_profile(opt_profile)

    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - a corrupt cache only costs build time
            log.warning("timing cache %s is unreadable; starting an empty one", cache_path)
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is refused

    log.info("building TensorRT %s engine for %s (batch %d..%d, opt %d)", trt.__version__, onnx_path,
             profile.min_batch, profile.max_batch, profile.opt_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; "
                                 f"see the TensorRT log above")
    data = bytes(serialized)
    write_bytes_atomic(engine_path, data)
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))

    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": gpu_name,
        "compute_capability": cc,
        "engine_bytes": len(data),
        "strongly_typed": strongly_typed,
        "workspace_gb": workspace_gb,
        "profile": {**asdict(profile), "shapes": shapes},
    }


# --------------------------------------------------------------------------- naming and compatibility


def _sm(cc: str) -> str:
    m = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d+))?", str(cc).strip().lower())
    if not m:
        raise ValueError(f"compute capability {cc!r} is not like '9.0', '8.6' or 'sm90'")
    major, minor = m.group(1), m.group(2)
    return f"sm{major}{minor}" if minor is not None else f"sm{major}"


def _trt_version(v: str) -> str:
    trt_release(v)  # the runtime's check: a version like '10.3.0', or ValueError
    return str(v).strip()


def engine_name(gpu_cc: str | None, trt_version: str, stem: str = "model") -> str:
    """File name that says which GPU and TensorRT the engine is for: model.sm90.trt10.3.0.engine.

    An unrecorded compute capability (None or "unknown") gives model.unknown-gpu.trt10.3.0.engine.
    """
    gpu = "unknown-gpu" if gpu_cc in (None, "", "unknown") else _sm(gpu_cc)
    return f"{stem}.{gpu}.trt{_trt_version(trt_version)}.engine"


def current_tensorrt() -> dict:
    """What this machine would run an engine with; TensorRTUnavailable when it cannot."""
    trt = _import_tensorrt()
    name, cc = gpu_info()
    if cc is None:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed but no CUDA GPU was found "
                                  f"(cuda-python or torch.cuda); {INSTALL_HINT}")
    return {"tensorrt_version": str(trt.__version__), "gpu_name": name, "compute_capability": cc}


def check_engine_compat(meta: dict, *, current: dict | None = None) -> None:
    """Raise unless an engine recorded as `meta` (build_engine's result) can run here.

    `current` defaults to current_tensorrt() (TensorRTUnavailable without TensorRT or a GPU);
    a different TensorRT release or compute capability raises TensorRTEngineMismatch.
    """
    missing = [k for k in ("tensorrt_version", "compute_capability") if k not in meta]
    if missing:
        raise ValueError(f"engine metadata lacks {missing}; rebuild the engine with build_engine")
    now = current if current is not None else current_tensorrt()
    built_v, now_v = str(meta["tensorrt_version"]), str(now["tensorrt_version"])
    built_cc, now_cc = meta["compute_capability"], now.get("compute_capability")
    if built_cc is None:
        log.warning("engine metadata records no compute capability; cannot check the GPU match")
    why = engine_mismatch(built_v, built_cc, now_v, now_cc)  # the one rule, shared with the runtime
    if why:
        raise TensorRTEngineMismatch(f"engine ({meta.get('gpu_name') or 'unknown GPU'}) {why} "
                                     f"({now.get('gpu_name') or 'unknown GPU'}): rebuild it here, or install "
                                     f"TensorRT {built_v} on a GPU of compute capability {built_cc}")
