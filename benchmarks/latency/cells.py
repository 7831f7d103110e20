"""Cells: one model at one batch size on one backend, timed. Timing helpers, the per-model
Group (torch model, bundles, sessions, inputs), the timed call of each backend, and which
backends can run on this machine."""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import itertools
import os
import re
import resource
import sys
import time
from typing import Any, Callable

import numpy as np

from .bundles import Bundles, make_model, sampling_of
from .settings import BACKENDS, GPU_DEVICE, RUNTIME_BACKEND, ModelKey, Settings, Skip, TimingCfg


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def summarize(samples_s: list[float], batch: int) -> dict:
    ms = np.asarray(samples_s) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {"latency_ms": {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
                           "min": float(ms.min()), "max": float(ms.max()), "mean": mean, "std": std},
            "cv": std / mean if mean > 0 else 0.0,
            "throughput_users_per_s": batch / (mean / 1e3)}


def time_calls(call: Callable[[], Any], t: TimingCfg) -> dict:
    """Warm up, then time `call` until min_iters and min_s are both reached, or the max_s box."""
    t0 = time.perf_counter()
    warm = 0
    while warm < t.warmup_iters or time.perf_counter() - t0 < t.warmup_s:
        call()
        warm += 1
        if time.perf_counter() - t0 > t.max_s:
            break
    samples: list[float] = []
    start = time.perf_counter()
    boxed = False
    while True:
        a = time.perf_counter()
        call()
        b = time.perf_counter()
        samples.append(b - a)
        elapsed, n = b - start, len(samples)
        if n >= t.min_iters and elapsed >= t.min_s:
            break
        if elapsed >= t.max_s and n >= t.floor_iters:
            boxed = True
            break
    return {"samples": samples, "warmup_iterations": warm, "iterations": len(samples),
            "elapsed_s": time.perf_counter() - start, "time_boxed": boxed}


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean share of each row's top-k set that two backends agree on."""
    return float(np.mean([len(set(x[:k].tolist()) & set(y[:k].tolist())) / k for x, y in zip(a, b)]))


# ----------------------------------------------------------------------------- one model, its backends
class Group:
    """One ModelKey: the torch model (CPU and GPU copies), its bundle(s), sessions and inputs."""

    POOL = 4  # distinct input batches cycled through, so no call sees the previous call's data

    def __init__(self, key: ModelKey, s: Settings, bundles: Bundles, threads: int, trt_max_batch: int):
        self.key, self.s, self.bundles, self.threads = key, s, bundles, threads
        self.trt_max_batch = trt_max_batch
        self.k_graph = min(s.suite.graph_k, key.n_items)
        self._cpu_model = None
        self._graphs: dict[tuple, Any] = {}
        self._recs: dict[tuple, Any] = {}
        self._inputs: dict[int, list[np.ndarray]] = {}
        self._ref: dict[int, np.ndarray] = {}
        self.notes: dict[str, str] = {}

    # -- inputs: full-length histories of random items (the graph is padded to max_len anyway)
    def inputs(self, batch: int) -> list[np.ndarray]:
        if batch not in self._inputs:
            rng = np.random.default_rng([self.s.suite.seed, batch, self.key.max_len, self.key.n_items])
            self._inputs[batch] = [rng.integers(1, self.key.n_items + 1, (batch, self.key.max_len), dtype=np.int64)
                                   for _ in range(self.POOL)]
        return self._inputs[batch]

    # -- torch
    def cpu_model(self):
        if self._cpu_model is None:
            self._cpu_model = make_model(self.key, self.s.suite.seed)
        return self._cpu_model

    def serving_graph(self, device: str, precision: str):
        """(ServingGraph on device, fp16 mode or None); fp16 = model.half(), autocast if that fails."""
        if (device, precision) in self._graphs:
            return self._graphs[(device, precision)]
        import copy

        import torch

        from genattn_export.graph import ServingGraph

        base = self.cpu_model()
        model = base if device == "cpu" and precision == "fp32" else copy.deepcopy(base).to(device)
        mode = None
        graph = ServingGraph(model, sampling_of(self.key), self.k_graph, True, False, False)
        if precision == "fp16":
            half = ServingGraph(copy.deepcopy(model).half(), sampling_of(self.key), self.k_graph, True, False, False)
            probe = torch.from_numpy(self.inputs(8)[0]).to(device)
            try:
                with torch.inference_mode():
                    _, sc = half(probe, probe)
                why = None if bool(torch.isfinite(sc[:, 0]).all()) else "non-finite top scores"
            except (RuntimeError, TypeError) as e:  # an op without a half kernel, a dtype mismatch
                why = f"{type(e).__name__}: {str(e)[:200]}"
            if why is None:
                mode, graph = "half", half
            else:
                mode = "autocast"
                self.notes["fp16"] = f"model.half() failed ({why}); torch.autocast(float16) instead"
        self._graphs[(device, precision)] = (graph, mode)
        return graph, mode

    def reference(self, batch: int) -> np.ndarray:
        """Top-k items of torch fp32 on CPU for the first input batch: what every backend should return."""
        if batch not in self._ref:
            import torch

            graph, _ = self.serving_graph("cpu", "fp32")
            with torch.inference_mode():
                s = torch.from_numpy(self.inputs(batch)[0])
                items, _ = graph(s, s)
            self._ref[batch] = items[:, :self.s.suite.k].numpy()
        return self._ref[batch]

    # -- runtime
    def recommender(self, backend: str, precision: str):
        rb = RUNTIME_BACKEND[backend]
        key = (backend if backend in ("ort-cuda-nograph", "ort-auto") else rb, precision)
        if key in self._recs:
            return self._recs[key]
        from genattn_runtime import BackendUnavailableError, Recommender

        if rb == "tensorrt":  # one engine per precision, built from model.fp16.onnx for fp16
            bundle = self.bundles.get(self.key, fp16=precision == "fp16", trt=True)
        else:  # one bundle holding model.onnx and model.fp16.onnx serves both precisions (and ort-cpu)
            bundle = self.bundles.get(self.key, fp16="fp16" in self.s.suite.precisions)
        kw: dict = {"threads": self.threads, "strict": True}
        if rb in ("cuda", "tensorrt-ep", "auto"):
            kw["precision"] = precision
        if backend == "ort-cuda-nograph":
            kw["cuda_graph_batch"] = 0
        if rb == "tensorrt-ep":
            kw.update(trt_cache_dir=bundle.parent / "trt_cache", trt_fp16=precision == "fp16",
                      trt_max_batch=self.trt_max_batch)
        try:
            rec = Recommender.load(bundle, backend=rb, **kw)
        except BackendUnavailableError as e:
            raise Skip(f"{backend}: {e}") from None
        if rec.backend != rb and rb != "auto":
            rec.close()
            raise Skip(f"{backend}: the runtime fell back to {rec.backend} ({rec.providers})")
        self._recs[key] = rec
        return rec

    def close(self) -> None:
        for rec in self._recs.values():
            rec.close()
        self._recs.clear()
        self._graphs.clear()
        self._cpu_model = None
        self._inputs.clear()
        self._ref.clear()
        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def make_call(g: Group, backend: str, precision: str, batch: int) -> tuple[Callable, dict, Callable | None]:
    """(the timed call, facts about the cell, cleanup) for one backend at one batch size."""
    pool = g.inputs(batch)
    k = g.s.suite.k
    cyc = itertools.cycle(range(len(pool)))
    facts: dict = {}

    if backend in ("ort-cpu", "ort-cuda", "ort-cuda-nograph", "ort-auto", "ort-trt-ep", "tensorrt"):
        rec = g.recommender(backend, precision)
        facts["providers"] = rec.providers
        facts["runtime_backend"] = rec._backend.describe()  # what runs: graph buckets, auto's CPU route
        items, _ = rec.recommend_indices(pool[0], k=k, exclude=pool[0])
        facts["topk_agreement_vs_torch_cpu_fp32"] = topk_agreement(items, g.reference(batch), k)

        def call():
            s = pool[next(cyc)]
            return rec.recommend_indices(s, k=k, exclude=s)

        return call, facts, None

    if backend == "ort-cpu-e2e":
        rec = g.recommender(backend, precision)
        hists = [x.tolist() for x in pool]  # raw ids == internal indices: item_ids = 1..n
        if batch == 1:
            hists = [h[0] for h in hists]  # one history, the single-user call form

        def call():
            return rec.recommend(hists[next(cyc)], k=k)

        facts["providers"] = rec.providers
        return call, facts, None

    import torch

    if backend == "torch-cpu":
        graph, _ = g.serving_graph("cpu", "fp32")
        tens = [torch.from_numpy(x) for x in pool]

        def call():
            s = tens[next(cyc)]
            with torch.inference_mode():
                return graph(s, s)

        facts["torch_threads"] = torch.get_num_threads()
        return call, facts, None

    # GPU torch backends
    dev = GPU_DEVICE
    graph, mode = g.serving_graph(dev, precision)
    facts["fp16_mode"] = mode
    # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture
    amp = ((lambda: torch.autocast("cuda", dtype=torch.float16, cache_enabled=False)) if mode == "autocast"
           else contextlib.nullcontext)
    host = [torch.from_numpy(x).pin_memory() for x in pool]
    with torch.inference_mode(), amp():
        d = host[0].to(dev)
        items = graph(d, d)[0][:, :k].cpu().numpy()
    facts["topk_agreement_vs_torch_cpu_fp32"] = topk_agreement(items, g.reference(batch), k)

    if backend == "torch-cuda":
        def call():
            s = host[next(cyc)].to(dev, non_blocking=True)
            with torch.inference_mode(), amp():
                items, scores = graph(s, s)
            return items.cpu(), scores.cpu()

        return call, facts, None

    # torch-cuda-graph: capture the serving path at this batch size, replay it
    static_in = torch.zeros((batch, g.key.max_len), dtype=torch.int64, device=dev)
    static_in.copy_(host[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad(), amp():
        for _ in range(3):
            graph(static_in, static_in)
    torch.cuda.current_stream().wait_stream(side)
    cg = torch.cuda.CUDAGraph()
    with torch.no_grad(), amp(), torch.cuda.graph(cg):
        static_items, static_scores = graph(static_in, static_in)
    torch.cuda.synchronize()

    def call():
        static_in.copy_(host[next(cyc)], non_blocking=True)
        cg.replay()
        return static_items.cpu(), static_scores.cpu()

    def cleanup():
        nonlocal cg
        del cg
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    return call, facts, cleanup


def run_cell(g: Group, backend: str, precision: str, batch: int, t: TimingCfg) -> dict:
    gpu = BACKENDS[backend].gpu
    if gpu:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    rss_before, peak_before = rss_mb(), maxrss_mb()
    call, facts, cleanup = make_call(g, backend, precision, batch)  # may load a model / session
    peak_setup = maxrss_mb()
    try:
        timing = time_calls(call, t)
    finally:
        del call
        if cleanup is not None:
            cleanup()
    peak_after = maxrss_mb()
    # rss_peak_delta_mb: growth of the high-water mark over the whole cell (a model or session
    # loaded for it included); ..._timed_mb: over the timed calls alone (steady state: ~0).
    mem = {"rss_peak_mb": peak_after, "rss_peak_delta_mb": max(0.0, peak_after - peak_before),
           "rss_peak_delta_timed_mb": max(0.0, peak_after - peak_setup),
           "rss_mb": rss_mb(), "rss_before_mb": rss_before}
    if gpu:
        import torch

        mem["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    key = g.key
    return {"kind": key.kind, "backend": backend, "precision": precision, "batch": batch, "steps": key.steps,
            "max_len": key.max_len, "n_items": key.n_items, "k": g.s.suite.k, "graph_k": g.k_graph,
            **summarize(timing.pop("samples"), batch), **timing, "memory": mem, **facts}


# ----------------------------------------------------------------------------- availability
def backend_status(names: list[str]) -> dict[str, str | None]:
    """None = can be tried here; else the reason it is skipped."""
    out: dict[str, str | None] = {}
    cuda, cuda_why = False, "torch is not installed"
    try:
        import torch

        cuda = torch.cuda.is_available()
        cuda_why = "no CUDA device (torch.cuda.is_available() is False)"
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ort_why = None
    except ImportError:
        providers, ort_why = [], "onnxruntime is not installed"
    export_why = None
    for mod in ("onnx", "onnxscript"):
        if importlib.util.find_spec(mod) is None:
            export_why = f"exporting a bundle needs {mod}, which is not installed"
    for name in names:
        b = BACKENDS[name]
        why = None
        if b.gpu and not cuda:
            why = cuda_why
        elif name in ("torch-cpu", "torch-cuda", "torch-cuda-graph") and cuda_why == "torch is not installed":
            why = cuda_why
        elif b.bundle:
            why = ort_why or export_why
            if why is None and name in ("ort-cuda", "ort-cuda-nograph") and "CUDAExecutionProvider" not in providers:
                why = (f"this onnxruntime build has no CUDAExecutionProvider (providers: {providers}); "
                       "needs onnxruntime-gpu")
            if why is None and name == "ort-trt-ep" and "TensorrtExecutionProvider" not in providers:
                why = (f"this onnxruntime build has no TensorrtExecutionProvider (providers: {providers}); "
                       "needs onnxruntime-gpu and TensorRT")
            if why is None and name == "tensorrt":
                if importlib.util.find_spec("tensorrt") is None:
                    why = "the tensorrt Python package is not installed"
                elif importlib.util.find_spec("cuda") is None:
                    why = "cuda-python is not installed (device buffers of the native TensorRT backend)"
        out[name] = why
    return out


def machine_slug(info: dict, threads: int) -> str:
    def slug(s: str) -> str:
        s = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$|\bprocessor\b", " ", s.lower())
        return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:40] or "unknown"

    if info.get("gpu"):
        return f"gpu-{slug(info['gpu'])}"
    return f"cpu-{threads}core-{slug(info.get('cpu') or '')}"
