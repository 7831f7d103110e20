"""Settings of the latency suite: the backend catalog, the TOML config ([suite], [default],
[sweep], [timing], [overhead], [http], [targets], [quick]) and the plan of models to build."""
from __future__ import annotations

import itertools
import logging
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = ROOT / "genattn" / "configs"
KINDS = ("softmax", "vae", "diffusion")
SCHEMA = "genattn-latency/1"
GPU_DEVICE = "cuda"
log = logging.getLogger("benchmarks.latency")


# ----------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class BackendInfo:
    name: str
    gpu: bool            # needs a CUDA device
    bundle: bool         # runs an exported bundle (ONNX / TensorRT) rather than the torch model
    timed: str           # what one timed call covers


BACKENDS = {b.name: b for b in [
    BackendInfo("torch-cpu", False, False,
                "compute only: the exported wrapper ServingGraph (model.scores + in-graph exclusion + top-K) "
                "in torch eager on CPU tensors prepared beforehand, torch.inference_mode"),
    BackendInfo("ort-cpu", False, True,
                "compute only: Recommender.recommend_indices (ONNX Runtime CPU session run plus the "
                "runtime's array checks), internal index arrays in and out"),
    BackendInfo("ort-cpu-e2e", False, True,
                "end to end: Recommender.recommend with raw ids in (Python lists), validation, id mapping, "
                "session run, decoding, raw ids and scores out"),
    BackendInfo("torch-cuda", True, False,
                "compute + transfers: host int64 inputs copied to the GPU, ServingGraph in torch eager, "
                "top-K items and scores copied back to the host"),
    BackendInfo("torch-cuda-graph", True, False,
                "as torch-cuda, with the serving path captured once per batch size in a torch.cuda.CUDAGraph "
                "and replayed (inputs copied into the captured buffers)"),
    BackendInfo("ort-cuda", True, True,
                "Recommender.recommend_indices on ONNX Runtime CUDAExecutionProvider with the runtime's defaults "
                "(IO binding, one CUDA graph per padded batch bucket 1/8/64/256), host arrays in and out"),
    BackendInfo("ort-cuda-nograph", True, True,
                "as ort-cuda with CUDA graphs off (cuda_graph_batch=0): IO binding only"),
    BackendInfo("ort-auto", True, True,
                "Recommender.recommend_indices with backend='auto': on a GPU, ONNX Runtime CUDA with its CUDA "
                "graph buckets, small batches sent to an ONNX Runtime CPU session where that measured faster at "
                "load; host arrays in and out"),
    BackendInfo("ort-trt-ep", True, True,
                "Recommender.recommend_indices on ONNX Runtime TensorrtExecutionProvider, host arrays in and out"),
    BackendInfo("tensorrt", True, True,
                "Recommender.recommend_indices on the bundle's native TensorRT engine, host arrays in and out"),
]}
RUNTIME_BACKEND = {"ort-cpu": "cpu", "ort-cpu-e2e": "cpu", "ort-cuda": "cuda", "ort-cuda-nograph": "cuda",
                   "ort-auto": "auto", "ort-trt-ep": "tensorrt-ep",
                   "tensorrt": "tensorrt"}


class Skip(Exception):
    """A cell (or a backend) cannot run here; the message is recorded as the reason."""


# ----------------------------------------------------------------------------- settings
@dataclass
class SuiteCfg:
    machine: str = ""                 # results folder name; "" = derived from the hardware
    cache: str = "runs/latency_cache"  # exported bundles, reused across runs
    kinds: list = field(default_factory=lambda: list(KINDS))
    backends: list = field(default_factory=lambda: ["torch-cpu", "ort-cpu", "ort-cpu-e2e"])
    precisions: list = field(default_factory=lambda: ["fp32"])  # GPU backends; CPU ones run fp32
    threads: int = 0                  # torch threads = ORT intra-op threads; 0 = physical cores
    seed: int = 0                     # model init and input sampling
    k: int = 10                       # top-k asked for
    graph_k: int = 100                # K computed in the graph (ExportOptions.k)
    budget_s: float = 840.0           # wall-time budget of the whole suite; later cells are skipped
    plots: bool = True


@dataclass
class PointCfg:
    batch: int = 1
    steps: int = 8
    max_len: int = 50
    n_items: int = 1682


@dataclass
class SweepCfg:
    batch: list = field(default_factory=lambda: [1, 8, 64, 256])
    steps: list = field(default_factory=lambda: [1, 2, 4, 8, 16])
    max_len: list = field(default_factory=lambda: [50, 200])
    n_items: list = field(default_factory=lambda: [1682, 100_000, 1_000_000])


@dataclass
class TimingCfg:
    warmup_iters: int = 10
    warmup_s: float = 0.2
    min_iters: int = 50
    min_s: float = 1.0
    max_s: float = 8.0                # time box per cell
    floor_iters: int = 5              # never fewer timed calls, even past the time box


@dataclass
class OverheadCfg:
    enabled: bool = True
    repeats: int = 300
    warmup: int = 30


@dataclass
class HttpCfg:
    enabled: bool = True
    kind: str = "diffusion"
    concurrency: int = 16
    duration_s: float = 5.0
    warmup_s: float = 1.0
    max_batch: int = 64
    max_wait_ms: float = 2.0


@dataclass
class TargetsCfg:
    ort_vs_torch_speedup: float = 3.0
    diffusion_vs_softmax_ratio: float = 1.5
    python_overhead_share: float = 0.10
    gpu_p99_ms: float = 1.0
    gpu_batch256_users_per_s: float = 100_000.0
    ort_cuda_vs_torch_graph: float = 1.0   # ORT CUDA p50 / torch CUDA graph p50, batch 1, fp32, at most


@dataclass
class Settings:
    suite: SuiteCfg = field(default_factory=SuiteCfg)
    default: PointCfg = field(default_factory=PointCfg)
    sweep: SweepCfg = field(default_factory=SweepCfg)
    timing: TimingCfg = field(default_factory=TimingCfg)
    overhead: OverheadCfg = field(default_factory=OverheadCfg)
    http: HttpCfg = field(default_factory=HttpCfg)
    targets: TargetsCfg = field(default_factory=TargetsCfg)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def load_settings(path: str | Path | None, quick: bool = False, overrides: dict | None = None) -> Settings:
    """Read a TOML config ([suite], [default], [sweep], ...; [quick] merged over them with --quick)."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"config file not found: {p}")
        raw = tomllib.loads(p.read_text())
    quick_tbl = raw.pop("quick", {})
    if quick:
        raw = _merge(raw, quick_tbl)
    raw = _merge(raw, overrides or {})
    tables = {f.name: f.type for f in fields(Settings)}
    unknown = sorted(set(raw) - set(tables))
    if unknown:
        raise SystemExit(f"{path}: unknown table(s) {unknown}; known: {sorted(tables)} and [quick]")
    built = {}
    for f in fields(Settings):
        cls = f.default_factory().__class__
        vals = raw.get(f.name, {})
        known = {x.name for x in fields(cls)}
        bad = sorted(set(vals) - known)
        if bad:
            raise SystemExit(f"{path}: unknown key(s) in [{f.name}]: {bad}; known: {sorted(known)}")
        built[f.name] = cls(**vals)
    s = Settings(**built)
    for kind in s.suite.kinds:
        if kind not in KINDS:
            raise SystemExit(f"unknown kind {kind!r}; known: {KINDS}")
    for b in s.suite.backends:
        if b not in BACKENDS:
            raise SystemExit(f"unknown backend {b!r}; known: {sorted(BACKENDS)}")
    for p in s.suite.precisions:
        if p not in ("fp32", "fp16"):
            raise SystemExit(f"unknown precision {p!r}; known: fp32, fp16")
    return s


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True, order=True)
class ModelKey:
    """One model (and one bundle): everything but the batch size, which is dynamic."""
    kind: str
    steps: int | None     # diffusion DDIM steps; None for softmax / vae
    max_len: int
    n_items: int

    @property
    def slug(self) -> str:
        st = f"-s{self.steps}" if self.steps is not None else ""
        return f"{self.kind}{st}-L{self.max_len}-N{self.n_items}"


def model_key(kind: str, steps: int, max_len: int, n_items: int) -> ModelKey:
    return ModelKey(kind, steps if kind == "diffusion" else None, max_len, n_items)


def default_key(s: Settings, kind: str) -> ModelKey:
    d = s.default
    return model_key(kind, d.steps, d.max_len, d.n_items)


def plan(s: Settings, grid: bool) -> list[tuple[ModelKey, list[int]]]:
    """Models to build, each with the batch sizes to time; default-point models first."""
    d, sw = s.default, s.sweep
    batches: dict[ModelKey, set] = {}
    for kind in s.suite.kinds:
        steps_axis = sw.steps if kind == "diffusion" else [d.steps]
        if grid:
            for st, L, n in itertools.product(steps_axis, sw.max_len, sw.n_items):
                batches.setdefault(model_key(kind, st, L, n), set()).update(sw.batch)
            continue
        batches.setdefault(default_key(s, kind), set()).update([*sw.batch, d.batch])
        for st in steps_axis:
            batches.setdefault(model_key(kind, st, d.max_len, d.n_items), set()).add(d.batch)
        for L in sw.max_len:
            batches.setdefault(model_key(kind, d.steps, L, d.n_items), set()).add(d.batch)
        for n in sw.n_items:
            batches.setdefault(model_key(kind, d.steps, d.max_len, n), set()).add(d.batch)

    def order(k: ModelKey):
        return (k != default_key(s, k.kind), k.n_items, k.max_len, s.suite.kinds.index(k.kind), k.steps or 0)

    return [(k, sorted(batches[k])) for k in sorted(batches, key=order)]
