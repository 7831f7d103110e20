"""ONNX Runtime backends: one session on CPU, CUDA or the TensorRT EP (OrtBackend), the CUDA
graph runner behind `cuda`, and auto's CPU route for small batches (RoutedBackend).

ONNX Runtime does not fail when a GPU provider cannot start (onnxruntime-gpu without
the CUDA libraries, no GPU): it logs an error and runs on CPU. Every session is
therefore checked with `get_providers()` after creation; the backend's `name` is what
actually runs, and `strict=True` turns a fallback into BackendUnavailableError.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..bundle import ORT_DTYPES, Manifest, check_graph_io
from ..errors import BackendUnavailableError, BundleError
from .base import DEFAULT_GRAPH_BUCKETS, Backend, BackendOptions, check_buckets, physical_cores, run_outputs

log = logging.getLogger("genattn_runtime")

CPU_EP, CUDA_EP, TRT_EP = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
EP_OF = {"cpu": CPU_EP, "cuda": CUDA_EP, "tensorrt-ep": TRT_EP}
_NAME_OF = {v: k for k, v in EP_OF.items()}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError("ONNX Runtime is not installed: pip install 'genattn[cpu]' "
                                      "(or 'genattn[gpu]' for CUDA / TensorRT)") from e
    return ort


def available_providers() -> list[str]:
    try:
        return list(_import_ort().get_available_providers())
    except BackendUnavailableError:
        return []


def make_session_options(opts: BackendOptions):
    """Latency-oriented defaults: one request at a time uses all physical cores, no inter-op pool."""
    ort = _import_ort()
    if isinstance(opts.session_options, ort.SessionOptions):
        return opts.session_options
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads if opts.threads > 0 else physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.log_severity_level = 3  # fallbacks are detected and reported by us, not ORT's error lines
    for key, value in (opts.session_options or {}).items():
        if key == "config":
            for ck, cv in value.items():
                so.add_session_config_entry(str(ck), str(cv))
        elif not hasattr(so, key):
            raise ValueError(f"session_options: onnxruntime.SessionOptions has no attribute {key!r}")
        else:
            setattr(so, key, value)
    return so


def bucket_plan(n_rows: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """How n rows run on fixed-shape graphs: [(start, stop, bucket)], rows [start, stop) padded
    to `bucket` rows. Rows beyond the largest bucket are chunked by it; the remainder (or a
    request that fits) takes the smallest bucket that holds it."""
    sizes = check_buckets(buckets)
    if not sizes:
        raise ValueError("no CUDA graph buckets")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    big, plan, start = sizes[-1], [], 0
    while n_rows - start > big:
        plan.append((start, start + big, big))
        start += big
    if n_rows > start:
        rest = n_rows - start
        plan.append((start, n_rows, next(b for b in sizes if b >= rest)))
    return plan


def graph_buckets(opts: BackendOptions) -> tuple[int, ...]:
    """The CUDA graph buckets these options ask for; () = CUDA graphs off (cuda_graph_batch=0,
    cuda_graph_buckets=(), or enable_cuda_graph=0 in the CUDA provider options)."""
    flag = str(opts.provider_options.get(CUDA_EP, {}).get("enable_cuda_graph", "1")).strip().lower()
    if flag in ("0", "false", "no", "off") or opts.cuda_graph_batch == 0:
        return ()
    if opts.cuda_graph_batch is not None:
        return check_buckets([opts.cuda_graph_batch])
    return check_buckets(opts.cuda_graph_buckets)


def without_graphs(opts: BackendOptions) -> BackendOptions:
    return dataclasses.replace(opts, cuda_graph_buckets=(), cuda_graph_batch=0)


def cpu_route_limit(timings: Mapping[int, tuple[float, float]], margin: float = 0.9) -> int:
    """The auto rule. timings: {batch: (cpu_seconds, gpu_seconds)} measured at load. Returns the
    largest batch b such that at b and at every smaller measured batch the CPU took less than
    `margin` x the GPU's time; requests of up to b rows go to the CPU, larger ones to the GPU.
    0 = the GPU serves every size. The margin leans to the GPU: it does not contend with the
    application for CPU cores, so the CPU must be clearly faster to be chosen."""
    limit = 0
    for b in sorted(timings):
        cpu_s, gpu_s = timings[b]
        if not cpu_s < margin * gpu_s:
            break
        limit = b
    return limit


def _shape_string(manifest: Manifest, batch: int) -> str:
    return ",".join(f"{t['name']}:{batch}x{t['shape'][1]}" for t in manifest.raw["graph"]["inputs"])


def _empty_feeds(manifest: Manifest, rows: int) -> dict[str, np.ndarray]:
    """All-padding inputs of `rows` rows, in the manifest's dtypes (no history, zero noise)."""
    return {t["name"]: np.zeros((rows, t["shape"][1]), np.dtype(t["dtype"])) for t in manifest.inputs}


class OrtBackend(Backend):
    """ONNX Runtime session on one execution provider (with CPU behind GPU providers).

    `requested` and `strict` are explicit (not read from opts.backend / opts.strict): auto
    tries several providers strictly with one set of options."""

    def __init__(self, model_path: Path, manifest: Manifest, requested: str, opts: BackendOptions,
                 strict: bool = False):
        ort = _import_ort()
        self.manifest, self.opts, self.requested = manifest, opts, requested
        want = EP_OF[requested]
        avail = ort.get_available_providers()
        if want not in avail:
            msg = (f"backend {requested!r} needs ONNX Runtime's {want}, which this onnxruntime "
                   f"{ort.__version__} does not have (available: {avail}); install onnxruntime-gpu "
                   f"('genattn[gpu]') on a machine with CUDA")
            if strict:
                raise BackendUnavailableError(msg)
            log.warning("%s; falling back to CPU", msg)
            requested, want = "cpu", CPU_EP
        graphs = requested == "cuda" and bool(graph_buckets(opts))
        providers = self._providers(requested, model_path)
        so = make_session_options(opts)
        # The bytes the loader verified (Manifest.read), not the path: what runs is what was hashed.
        model_bytes = manifest.read(model_path.name)
        try:
            self.session = ort.InferenceSession(model_bytes, so, providers=providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, RuntimeException)
            if graphs:  # e.g. a node ONNX Runtime places on the CPU: graph capture refused, CUDA still fine
                log.warning("CUDA graphs refused by ONNX Runtime (%s: %s); running without them",
                            type(e).__name__, str(e)[:300])
                self.__init__(model_path, manifest, requested, without_graphs(opts), strict)
                return
            if requested == "cpu":  # nothing to fall back to: the model itself does not load
                raise BundleError(f"bundle {manifest.path}: ONNX Runtime cannot load {model_path.name} "
                                  f"({type(e).__name__}: {str(e)[:300]})") from e
            raise BackendUnavailableError(f"backend {requested!r}: ONNX Runtime could not create the session "
                                          f"({type(e).__name__}: {e})") from e
        self.providers = self.session.get_providers()
        self.name = _NAME_OF.get(self.providers[0], self.providers[0])
        if want not in self.providers:
            msg = (f"backend {requested!r} requested but ONNX Runtime runs on {self.providers} "
                   f"({want} failed to start: CUDA / cuDNN / TensorRT libraries or the GPU are missing)")
            if strict:
                raise BackendUnavailableError(msg)
            log.warning("%s; using %s", msg, self.name)
        check_graph_io(manifest, self._io(self.session.get_inputs()), self._io(self.session.get_outputs()),
                       model_path.name, half_scores=model_path.name == manifest.fp16_file)
        self.output_dtypes = self.declared_dtypes(manifest)
        self.output_names = list(self.output_dtypes)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._graph = None
        if self.name == "cuda" and graphs:
            try:
                self._graph = _CudaGraphRunner(self, graph_buckets(opts))
            except Exception as e:  # capture failed: a session without graph capture serves instead
                log.warning("CUDA graph capture failed (%s: %s); running without CUDA graphs",
                            type(e).__name__, str(e)[:300])
                self.session = None
                self.__init__(model_path, manifest, requested, without_graphs(opts), strict)

    def describe(self) -> dict:
        return {**super().describe(), "cuda_graph_buckets": list(self._graph.buckets) if self._graph else []}

    @staticmethod
    def _io(args) -> list[tuple[str, str, list]]:
        """(name, numpy dtype name, shape) of ORT NodeArgs: what the graph itself declares."""
        return [(a.name, ORT_DTYPES.get(a.type, a.type), a.shape) for a in args]

    def _providers(self, requested: str, model_path: Path) -> list:
        extra = self.opts.provider_options
        cuda = {"device_id": str(self.opts.device_id)}
        if requested == "cuda" and graph_buckets(self.opts):
            cuda["enable_cuda_graph"] = "1"
        cuda.update({k: str(v) for k, v in extra.get(CUDA_EP, {}).items()})
        cpu = dict(extra.get(CPU_EP, {}))
        if requested == "cpu":
            return [(CPU_EP, cpu)]
        if requested == "cuda":
            return [(CUDA_EP, cuda), (CPU_EP, cpu)]
        cache = Path(self.opts.trt_cache_dir or model_path.parent / ".trt_cache")
        cache.mkdir(parents=True, exist_ok=True)
        mx = self.opts.trt_max_batch
        trt = {"device_id": str(self.opts.device_id), "trt_engine_cache_enable": "True",
               "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "True",
               "trt_timing_cache_path": str(cache), "trt_fp16_enable": str(bool(self.opts.trt_fp16)),
               "trt_profile_min_shapes": _shape_string(self.manifest, 1),
               "trt_profile_opt_shapes": _shape_string(self.manifest, min(8, mx)),
               "trt_profile_max_shapes": _shape_string(self.manifest, mx)}
        trt.update({k: str(v) for k, v in extra.get(TRT_EP, {}).items()})
        return [(TRT_EP, trt), (CUDA_EP, cuda), (CPU_EP, cpu)]

    def _run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        if self._graph is not None:
            return self._graph.run(feeds)
        if self.name == "cuda" and self.opts.io_binding:
            return self.run_iobinding(feeds)
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def run_iobinding(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()  # one per call: a binding is not shareable across threads
        for n, a in feeds.items():
            binding.bind_cpu_input(n, a)
        for n in self.output_names:
            binding.bind_output(n, "cpu")  # the outputs we fetch are small (B x K): straight to host
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def close(self) -> None:
        self._graph = None
        self.session = None


class _CudaGraphRunner:
    """CUDA graph replay at fixed batch sizes (buckets), one captured graph per bucket.

    A captured graph replays fixed device addresses and shapes, so each bucket has its own
    inputs and outputs as OrtValues on the GPU, bound once, and its own `gpu_graph_id` run
    option (ONNX Runtime captures one graph per id; 0 is reserved, -1 disables capture).
    Each call copies its rows in place per `bucket_plan` (padded with empty histories up to
    the bucket, or chunked by the largest) and replays. The bindings are shared state:
    replays are serialised by a lock. Any number of outputs: one OrtValue per output the
    backend fetches, [bucket, the manifest's width] in the dtype the graph itself declares
    (an FP16 graph's float16 scores; the backend casts them after the copy to host).
    """

    # ONNX Runtime runs a graph id uncaptured 1 or 2 times (by version; its allocations), then
    # captures it: 3 runs per bucket capture every graph at load. The CUDA EP keeps graphs per
    # thread, so a server whose model runs on another thread captures again on its first calls.
    WARMUP_RUNS = 3

    def __init__(self, backend: OrtBackend, buckets: int | Sequence[int], device: str = "cuda"):
        ort = _import_ort()
        self.backend = backend
        self.buckets = check_buckets([buckets] if isinstance(buckets, (int, np.integer)) else buckets)
        if not self.buckets:
            raise ValueError("no CUDA graph buckets")
        sess, dev, manifest = backend.session, backend.opts.device_id, backend.manifest
        graph_dtype = {a.name: np.dtype(ORT_DTYPES[a.type]) for a in sess.get_outputs()}
        self.out_spec = [(t["name"], t["shape"][1], graph_dtype[t["name"]]) for t in run_outputs(manifest)]
        self.lock = threading.Lock()
        self.slots: dict[int, tuple[dict, list, Any, Any]] = {}
        for graph_id, b in enumerate(self.buckets, start=1):
            inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, device, dev) for n, a in _empty_feeds(manifest, b).items()}
            outputs = [ort.OrtValue.ortvalue_from_shape_and_type((b, w), dt, device, dev) for _, w, dt in self.out_spec]
            binding = sess.io_binding()
            for n, v in inputs.items():
                binding.bind_ortvalue_input(n, v)
            for (n, _, _), v in zip(self.out_spec, outputs):
                binding.bind_ortvalue_output(n, v)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
            self.slots[b] = (inputs, outputs, binding, run_options)
            with self.lock:
                for _ in range(self.WARMUP_RUNS):
                    sess.run_with_iobinding(binding, run_options)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        parts: list[list[np.ndarray]] = [[] for _ in self.out_spec]
        for start, stop, b in bucket_plan(n, self.buckets):
            inputs, outputs, binding, run_options = self.slots[b]
            m = stop - start
            with self.lock:
                for name, arr in feeds.items():
                    arr = arr[start:stop]
                    if m < b:
                        pad = np.zeros((b, arr.shape[1]), dtype=arr.dtype)
                        pad[:m] = arr
                        arr = pad
                    inputs[name].update_inplace(np.ascontiguousarray(arr))
                self.backend.session.run_with_iobinding(binding, run_options)
                for part, v in zip(parts, outputs):
                    part.append(v.numpy()[:m].copy())
        if n == 0:  # zero rows: empty (0, width) outputs, as a session run gives
            return {name: np.zeros((0, w), dt) for name, w, dt in self.out_spec}
        return {name: np.concatenate(part) for (name, _, _), part in zip(self.out_spec, parts)}


class RoutedBackend(Backend):
    """auto on a GPU: requests of up to `cpu_rows` rows run on a CPU session, larger ones on the
    GPU backend. cpu_rows comes from cpu_route_limit over timings taken at load (calibrate)."""

    CALIBRATION_RUNS = 5      # timed runs per batch size and backend (median), after 2 warm-ups
    CALIBRATION_MAX_S = 0.05  # a CPU run slower than this ends the calibration: the GPU wins beyond

    def __init__(self, gpu: Backend, cpu: Backend, cpu_rows: int, timings: dict | None = None):
        self.gpu, self.cpu, self.cpu_rows = gpu, cpu, int(cpu_rows)
        self.timings = dict(timings or {})
        self.name, self.providers = gpu.name, gpu.providers
        self.output_dtypes = {}  # both sides return their outputs cast already

    @classmethod
    def calibrate(cls, gpu: OrtBackend, cpu: OrtBackend, batches: Sequence[int]) -> "RoutedBackend":
        """Time both backends on empty histories at each batch size, smallest first, until the
        GPU wins once (larger batches favour it further); route by cpu_route_limit."""
        import time

        def median_s(be: Backend, feeds: dict) -> float:
            for _ in range(2):
                be.run(feeds)
            ts = []
            for _ in range(cls.CALIBRATION_RUNS):
                t0 = time.perf_counter()
                be.run(feeds)
                ts.append(time.perf_counter() - t0)
            return float(np.median(ts))

        timings: dict[int, tuple[float, float]] = {}
        for b in check_buckets(batches):
            feeds = {i.name: np.zeros((b, i.shape[1]), np.dtype(ORT_DTYPES[i.type])) for i in cpu.session.get_inputs()}
            cpu_s = median_s(cpu, feeds)
            timings[b] = (cpu_s, median_s(gpu, feeds))
            if cpu_route_limit(timings) < b or cpu_s > cls.CALIBRATION_MAX_S:
                break
        return cls(gpu, cpu, cpu_route_limit(timings), timings)

    def _run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        return (self.cpu if n <= self.cpu_rows else self.gpu).run(feeds, need)

    def describe(self) -> dict:
        return {**super().describe(), "cpu_route": {
            "cpu_up_to_rows": self.cpu_rows,
            "calibration_ms": {b: {"cpu": c * 1e3, "gpu": g * 1e3} for b, (c, g) in self.timings.items()}}}

    def close(self) -> None:
        self.gpu.close()
        self.cpu.close()


def with_cpu_route(gpu: OrtBackend, model_path: Path, manifest: Manifest, opts: BackendOptions) -> Backend:
    """auto's batch-size rule: keep the GPU backend alone unless a CPU session measured clearly
    faster on the smallest batches here (then those go to the CPU)."""
    if not opts.auto_cpu_route or gpu.name == "cpu":
        return gpu
    try:
        cpu = OrtBackend(model_path, manifest, "cpu", opts, strict=True)
    except (BackendUnavailableError, BundleError) as e:
        log.info("auto: no CPU session beside %s (%s); the GPU serves every batch size", gpu.name, e)
        return gpu
    routed = RoutedBackend.calibrate(gpu, cpu, graph_buckets(opts) or DEFAULT_GRAPH_BUCKETS)
    if routed.cpu_rows == 0:
        cpu.close()
        log.info("auto: %s faster than the CPU from batch 1 (%s)", gpu.name, routed.describe()["cpu_route"])
        return gpu
    log.info("auto: batches of up to %d rows on the CPU, larger on %s (%s)", routed.cpu_rows, gpu.name,
             routed.describe()["cpu_route"])
    return routed
