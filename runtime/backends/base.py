"""What every backend shares: the options object, the run contract and its output dtypes.

    Backend.run(feeds, need=None) -> {output name: array}

`feeds` maps the graph's input names to arrays (B rows each). The result holds every
output the bundle's graph declares (manifest `graph.outputs`) except the optional full
score matrix `scores` (B x n_items+1, never read by the runtime, so never fetched), each
in the dtype the manifest declares: an FP16 graph's float16 outputs (top_scores,
confidence, ...) come back float32, cast once here for every backend. Top-K bundles give
at least `top_items` int64 (B, K) and `top_scores` float32 (B, K); an ANN bundle's backend
gives those from its index search, next to the state graph's own outputs. `need` is how
many of the K slots the caller reads: the ANN search fetches only those (the rest are
item 0, score -inf); exact graphs ignore it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..ann import check_search_param
from ..bundle import OUTPUT_ALL, OUTPUT_ITEMS, OUTPUT_SCORES, Manifest

BACKENDS = ("auto", "cpu", "cuda", "tensorrt-ep", "tensorrt")
PRECISIONS = ("fp32", "fp16")

# A request of n rows runs on the smallest bucket >= n; more rows than the largest bucket are
# cut into chunks of it. 1 serves single users without padding; each step is 8x the last, so
# a batch that fits is padded to less than 8x its rows.
DEFAULT_GRAPH_BUCKETS = (1, 8, 64, 256)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct batch sizes; ValueError naming the bad value (not a positive int)."""
    out = set()
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"CUDA graph buckets must be positive integers, got {b!r} in {tuple(buckets)!r}")
        out.add(int(b))
    return tuple(sorted(out))


def _bad(name: str, want: str, value: Any) -> ValueError:
    r = repr(value)
    return ValueError(f"{name} must be {want}, got {r if len(r) <= 60 else r[:57] + '...'}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass
class BackendOptions:
    """How to run a bundle: which backend and everything it may need besides the bundle.
    Defaults are tuned for latency. Every value is checked on construction (and on
    `dataclasses.replace` / `with_overrides`): ValueError naming the field and the value."""
    backend: str = "auto"                 # "auto" | "cpu" | "cuda" | "tensorrt-ep" | "tensorrt"
    strict: bool = False                  # raise BackendUnavailableError instead of falling back
    precision: str = "fp32"               # "fp32" | "fp16" (the bundle's model.fp16.onnx)
    threads: int = 0                      # ORT intra-op threads; 0 = physical cores available to this process
    session_options: Any = None           # ort.SessionOptions (as is) or {attribute: value, "config": {key: value}}
    device_id: int = 0                    # GPU index (cuda, tensorrt-ep, tensorrt)
    cuda_graph_buckets: tuple[int, ...] = DEFAULT_GRAPH_BUCKETS  # cuda: one CUDA graph per padded batch size; () = off
    cuda_graph_batch: int | None = None   # cuda: one bucket of this size instead; 0 = CUDA graphs off
    io_binding: bool = True               # cuda: run through IO binding
    trt_cache_dir: str | Path | None = None  # tensorrt-ep: engine + timing cache folder (default <bundle>/.trt_cache)
    trt_fp16: bool = False                # tensorrt-ep: allow FP16 kernels
    trt_max_batch: int = 256              # tensorrt-ep: optimisation profile max batch (min 1, opt 8)
    provider_options: dict = field(default_factory=dict)  # extra options per provider name, merged over ours
    auto_cpu_route: bool = True           # auto on a GPU: small batches to a CPU session where it measured faster
    ef_search: int | None = None          # ANN hnsw bundles: search breadth instead of the export's
    nprobe: int | None = None             # ANN ivfpq bundles: lists probed instead of the export's

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {self.precision!r}")
        for name in ("strict", "io_binding", "trt_fp16", "auto_cpu_route"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise _bad(name, "true or false", getattr(self, name))
        for name, lo in (("threads", 0), ("device_id", 0), ("trt_max_batch", 1)):
            v = getattr(self, name)
            if not _is_int(v) or v < lo:
                raise _bad(name, f"an integer >= {lo}", v)
            setattr(self, name, int(v))  # numpy integers: ONNX Runtime's setters take Python ints
        if self.cuda_graph_batch is not None:
            if not _is_int(self.cuda_graph_batch) or self.cuda_graph_batch < 0:
                raise _bad("cuda_graph_batch", "None or an integer >= 0 (0 = CUDA graphs off)", self.cuda_graph_batch)
            self.cuda_graph_batch = int(self.cuda_graph_batch)
        if isinstance(self.cuda_graph_buckets, (str, bytes)) or not isinstance(self.cuda_graph_buckets, Sequence):
            raise _bad("cuda_graph_buckets", "a sequence of batch sizes", self.cuda_graph_buckets)
        try:
            self.cuda_graph_buckets = check_buckets(self.cuda_graph_buckets)
        except ValueError as e:
            raise ValueError(f"cuda_graph_buckets: {e}") from None
        if self.trt_cache_dir is not None and not isinstance(self.trt_cache_dir, (str, os.PathLike)):
            raise _bad("trt_cache_dir", "None or a folder path", self.trt_cache_dir)
        if self.provider_options is None:
            self.provider_options = {}
        if not isinstance(self.provider_options, Mapping) or not all(
                isinstance(k, str) and isinstance(v, Mapping) for k, v in self.provider_options.items()):
            raise _bad("provider_options", "{provider name: {option: value}}", self.provider_options)
        so = self.session_options
        if so is not None and not isinstance(so, Mapping) and type(so).__name__ != "SessionOptions":
            raise _bad("session_options", "None, an onnxruntime.SessionOptions or a dict of its attributes", so)
        check_search_param("ef_search", self.ef_search)  # the index's own rule (InputError, a ValueError)
        check_search_param("nprobe", self.nprobe)

    def with_overrides(self, **overrides: Any) -> "BackendOptions":
        """A copy with these fields changed; TypeError naming a keyword that is not a field."""
        unknown = [k for k in overrides if k not in _FIELDS]
        if unknown:
            raise TypeError(f"unknown backend option(s) {unknown}; BackendOptions has {sorted(_FIELDS)}")
        return dataclasses.replace(self, **overrides) if overrides else self

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any] | None = None, **more: Any) -> "BackendOptions":
        """Options from a front end's parsed flags (a click context's params, a config's asdict):
        the keys that name a field, None meaning "not given" (the field's default). Other keys
        are the front end's own and ignored, so callers pass everything they parsed."""
        given = {**(flags or {}), **more}
        return cls(**{k: v for k, v in given.items() if k in _FIELDS and v is not None})


_FIELDS = frozenset(f.name for f in dataclasses.fields(BackendOptions))


def run_outputs(manifest: Manifest) -> list[dict]:
    """The graph outputs a backend fetches and returns (the manifest's `graph.outputs` entries):
    all but the optional full score matrix."""
    return [t for t in manifest.outputs if t["name"] != OUTPUT_ALL]


TOP_K_DTYPES = {OUTPUT_ITEMS: np.dtype(np.int64), OUTPUT_SCORES: np.dtype(np.float32)}


class Backend:
    """Runs the serving graph. `run` is thread-safe.

    Subclasses implement `_run` and set `output_dtypes` ({name: the dtype the manifest
    declares}); `run` returns `_run`'s dict with every output in that dtype (the one place
    an FP16 graph's outputs become float32)."""

    name: str = "?"
    providers: list[str] = []
    output_dtypes: dict[str, np.dtype] = {}

    def run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        out = self._run(feeds, need)
        for n, dtype in self.output_dtypes.items():
            a = out[n]
            if a.dtype != dtype:
                out[n] = a.astype(dtype)
        return out

    def _run(self, feeds: dict[str, np.ndarray], need: int | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"backend": self.name, "providers": list(self.providers)}

    @staticmethod
    def declared_dtypes(manifest: Manifest) -> dict[str, np.dtype]:
        """{output: dtype} of what `run` returns for this bundle's graph, as the manifest declares them."""
        return {t["name"]: np.dtype(t["dtype"]) for t in run_outputs(manifest)}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads and other cgroups' CPUs not counted)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys or "0", core))
                    phys = core = None
    except OSError:
        pass
    n = len(cores) or (os.cpu_count() or 1)
    return max(1, min(n, allowed))
