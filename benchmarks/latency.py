"""Inference latency of softmax, VAE and diffusion attention across backends.

    python -m benchmarks.latency --config benchmarks/configs/cpu.toml            # default sweep
    python -m benchmarks.latency --config benchmarks/configs/cpu.toml --quick    # < 60 s smoke run
    python -m benchmarks.latency --config benchmarks/configs/cpu.toml --grid     # every combination
    python -m benchmarks.latency --config benchmarks/configs/gpu.toml            # GPU backends

Latency does not depend on trained weights, so every model is the kind's default
config (genattn/configs/<kind>.toml) with n_items / max_len set per cell and random
weights (torch.manual_seed). Bundles are exported once into the cache folder and
reused. The default sweep varies one axis at a time (batch, diffusion steps, max_len,
catalog size) around a default point; --grid runs every combination.

Each cell: warm-up, then timed calls until it has at least `min_iters` calls and
`min_s` seconds, or hits the `max_s` time box. What one call covers depends on the
backend (BACKENDS below, and `timed` in the results): compute only (the model call or
ONNX Runtime session on index arrays) or end to end (raw ids in, raw ids out).

Results: <out>/latency.json, latency.md and PNG plots (benchmarks/README.md explains
them); the targets of the issue are evaluated from cells measured in the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import contextlib
import gc
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .machine import machine_info, repo_path

ROOT = Path(__file__).resolve().parents[1]
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
                "Recommender.recommend_indices on ONNX Runtime CUDAExecutionProvider (IO binding), host arrays "
                "in and out"),
    BackendInfo("ort-trt-ep", True, True,
                "Recommender.recommend_indices on ONNX Runtime TensorrtExecutionProvider, host arrays in and out"),
    BackendInfo("tensorrt", True, True,
                "Recommender.recommend_indices on the bundle's native TensorRT engine, host arrays in and out"),
]}
RUNTIME_BACKEND = {"ort-cpu": "cpu", "ort-cpu-e2e": "cpu", "ort-cuda": "cuda", "ort-trt-ep": "tensorrt-ep",
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


# ----------------------------------------------------------------------------- models and bundles
def model_config(key: ModelKey):
    from genattn.config import load_run_config

    return load_run_config(MODEL_CONFIGS / f"{key.kind}.toml",
                           {"model": {"n_items": key.n_items, "max_len": key.max_len}})


def make_model(key: ModelKey, seed: int):
    """Random-init model of the kind's default config; identical in every process for one seed."""
    import torch

    from genattn.models import SASRec

    torch.manual_seed(seed)
    model = SASRec(model_config(key).model).eval()
    # A fresh generative layer has a zero output layer (it starts as softmax attention).
    # Give it random outputs, as a trained model has, so that no path is trivially constant.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".out." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def sampling_of(key: ModelKey):
    """What the bundle serves (ExportOptions defaults): deterministic DDIM / the VAE prior mean."""
    from genattn.models import Sampling

    if key.kind == "diffusion":
        return Sampling(n_steps=key.steps, eta=0.0, start="zeros")
    if key.kind == "vae":
        return Sampling(mode="mean", n_samples=1)
    return None


def bundle_dir(cache: Path, key: ModelKey, seed: int, graph_k: int, fp16: bool, trt: bool) -> Path:
    from dataclasses import asdict as _asdict

    cfg = _asdict(model_config(key).model)
    ident = json.dumps({"model": cfg, "steps": key.steps, "seed": seed, "k": graph_k, "fp16": fp16, "trt": trt,
                        "recipe": 1}, sort_keys=True)
    tag = ("-fp16" if fp16 else "") + ("-trt" if trt else "")
    return cache / f"{key.slug}{tag}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def _export_job(job: dict) -> dict:
    """Runs in a child process (so export memory never shows in the timed process's RSS)."""
    import numpy as _np

    from genattn.checkpoint import save_checkpoint
    from genattn_export import ExportOptions, export_bundle

    logging.basicConfig(level=logging.WARNING)
    key = ModelKey(**job["key"])
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    run = model_config(key)
    model = make_model(key, job["seed"])
    ck = folder / "checkpoint"
    t0 = time.perf_counter()
    save_checkpoint(ck, model, run, item_ids=list(range(1, key.n_items + 1)),
                    popularity=_np.zeros(key.n_items + 1, dtype=_np.int64), n_users=1)
    t1 = time.perf_counter()
    opts = ExportOptions(steps=key.steps or 8, verify_users=0, k=job["graph_k"], fp16=job["fp16"],
                         tensorrt=job["trt"])
    manifest = export_bundle(ck, folder / "bundle", opts)
    t2 = time.perf_counter()
    shutil.rmtree(ck, ignore_errors=True)  # the timed process rebuilds the same weights from the seed
    info = {"checkpoint_s": t1 - t0, "export_s": t2 - t1, "nodes": manifest["graph"]["nodes"],
            "onnx_mb": (folder / "bundle" / "model.onnx").stat().st_size / 2**20,
            "parity_max_abs_diff": manifest["parity"]["fp32"]["max_abs_diff"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (folder / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


class Bundles:
    """Exports bundles on demand in one spawned child process; cached bundles are reused."""

    def __init__(self, cache: Path, seed: int, graph_k: int):
        self.cache, self.seed, self.graph_k = cache, seed, graph_k
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.log: dict[str, dict] = {}
        self.failed: dict[Path, str] = {}

    def get(self, key: ModelKey, fp16: bool = False, trt: bool = False) -> Path:
        folder = bundle_dir(self.cache, key, self.seed, self.graph_k, fp16, trt)
        if folder in self.failed:
            raise Skip(self.failed[folder])
        bundle = folder / "bundle"
        if (bundle / "manifest.json").is_file():
            if folder.name not in self.log:
                built = json.loads((folder / "build.json").read_text()) if (folder / "build.json").is_file() else {}
                self.log[folder.name] = {**built, "cached": True, "path": repo_path(bundle)}
            return bundle
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        log.info("exporting %s%s%s ...", key.slug, " fp16" if fp16 else "", " +trt" if trt else "")
        t0 = time.perf_counter()
        try:
            info = self.pool.submit(_export_job, {"key": asdict(key), "folder": str(folder), "seed": self.seed,
                                                  "graph_k": self.graph_k, "fp16": fp16, "trt": trt}).result()
        except Exception as e:  # noqa: BLE001 - any export failure skips the bundle's cells, with the reason
            if isinstance(e, BrokenProcessPool):
                self.pool = None
            first = str(e).splitlines()[0][:300] if str(e) else ""
            reason = f"export of {key.slug} failed: {type(e).__name__}: {first}"
            self.failed[folder] = reason
            raise Skip(reason) from None
        self.log[folder.name] = {**info, "cached": False, "wall_s": time.perf_counter() - t0, "path": repo_path(bundle)}
        log.info("exported %s in %.1f s", key.slug, info["export_s"])
        return bundle

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


# ----------------------------------------------------------------------------- measuring
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
        key = (RUNTIME_BACKEND[backend], precision)
        if key in self._recs:
            return self._recs[key]
        from genattn_runtime import BackendUnavailableError, Recommender

        rb = RUNTIME_BACKEND[backend]
        if rb == "tensorrt":  # one engine per precision, built from model.fp16.onnx for fp16
            bundle = self.bundles.get(self.key, fp16=precision == "fp16", trt=True)
        else:  # GPU EPs: one bundle holding model.onnx and model.fp16.onnx serves both precisions
            gpu_fp16 = rb in ("cuda", "tensorrt-ep") and "fp16" in self.s.suite.precisions
            bundle = self.bundles.get(self.key, fp16=gpu_fp16)
        kw: dict = {"threads": self.threads, "strict": True}
        if rb in ("cuda", "tensorrt-ep"):
            kw["precision"] = precision
        if rb == "tensorrt-ep":
            kw.update(trt_cache_dir=bundle.parent / "trt_cache", trt_fp16=precision == "fp16",
                      trt_max_batch=self.trt_max_batch)
        try:
            rec = Recommender.load(bundle, backend=rb, **kw)
        except BackendUnavailableError as e:
            raise Skip(f"{backend}: {e}") from None
        if rec.backend != rb:
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

    if backend in ("ort-cpu", "ort-cuda", "ort-trt-ep", "tensorrt"):
        rec = g.recommender(backend, precision)
        facts["providers"] = rec.providers
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
            if why is None and name == "ort-cuda" and "CUDAExecutionProvider" not in providers:
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


# ----------------------------------------------------------------------------- HTTP service
def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def http_run(bundle: Path, s: Settings, threads: int, max_len: int, n_items: int) -> dict:
    """A real `python -m genattn_runtime.service` process on loopback under concurrent httpx load."""
    for mod in ("fastapi", "uvicorn", "prometheus_client", "httpx"):
        if importlib.util.find_spec(mod) is None:
            raise Skip(f"the HTTP run needs {mod}, which is not installed")
    import httpx

    h = s.http
    port = _free_port()
    cmd = [sys.executable, "-m", "genattn_runtime.service", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--backend", "cpu", "--threads", str(threads), "--max-batch", str(h.max_batch),
           "--max-wait-ms", str(h.max_wait_ms), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise Skip(f"the service exited with {proc.returncode}: {proc.stdout.read()[-500:]}")
            if time.monotonic() - t0 > 60:
                raise Skip("the service did not become healthy in 60 s")
            time.sleep(0.05)
        startup_s = time.monotonic() - t0
        rng = np.random.default_rng(s.suite.seed)
        bodies = [{"history": rng.integers(1, n_items + 1, max_len).tolist(), "k": s.suite.k} for _ in range(64)]
        lat, starts, ends, errors = asyncio.run(_http_load(base, bodies, h))
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        server_hwm = _proc_hwm_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    if not lat:
        raise Skip(f"no successful request in the HTTP run ({errors} errors)")
    window = max(ends) - min(starts)
    stats = summarize(lat, 1)
    batches = _metric(metrics, "genattn_batch_size_count")
    rows = _metric(metrics, "genattn_batch_size_sum")
    return {"bundle": repo_path(bundle), "concurrency": h.concurrency, "duration_s": window, "requests": len(lat),
            "errors": errors, "requests_per_s": len(lat) / window, "latency_ms": stats["latency_ms"],
            "cv": stats["cv"],
            "server": {"threads": threads, "max_batch": h.max_batch, "max_wait_ms": h.max_wait_ms,
                       "startup_s": startup_s, "peak_rss_mb": server_hwm, "session_runs": batches,
                       "mean_batch_rows": rows / batches if batches else None},
            "timed": "client side, one POST /recommend {history: max_len raw ids, k} per request, from send to the "
                     "parsed response; httpx.AsyncClient workers on the same machine as the server"}


async def _http_load(base: str, bodies: list[dict], h: HttpCfg):
    import httpx

    limits = httpx.Limits(max_connections=h.concurrency, max_keepalive_connections=h.concurrency)
    lat, starts, ends = [], [], []
    errors = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
        t_measure = time.perf_counter() + h.warmup_s
        t_end = t_measure + h.duration_s

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < t_end:
                a = time.perf_counter()
                try:
                    r = await c.post("/recommend", json=bodies[i % len(bodies)])
                    r.json()
                    ok = r.status_code == 200
                except (httpx.HTTPError, ValueError):  # a dropped connection, a body that is not JSON
                    ok = False
                    await asyncio.sleep(0.01)
                b = time.perf_counter()
                i += h.concurrency
                if a < t_measure:
                    continue
                if ok:
                    lat.append(b - a)
                    starts.append(a)
                    ends.append(b)
                else:
                    errors += 1

        await asyncio.gather(*(worker(w) for w in range(h.concurrency)))
    return lat, starts, ends, errors


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _proc_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


# ----------------------------------------------------------------------------- targets
def _at_default(c: dict, s: Settings, **kw) -> bool:
    d = s.default
    want = {"max_len": d.max_len, "n_items": d.n_items, "steps": d.steps if c["kind"] == "diffusion" else None,
            "batch": d.batch, **kw}
    return all(c.get(k) == v for k, v in want.items())


def _find(cells: list[dict], s: Settings, **kw) -> dict | None:
    hits = [c for c in cells if _at_default(c, s, **kw)]
    return hits[0] if hits else None


def _verdict(measured: float | None, threshold: float, higher_is_better: bool, unit: str) -> tuple[bool | None, str]:
    if measured is None or not math.isfinite(measured):
        return None, "not measured"
    met = measured >= threshold if higher_is_better else measured <= threshold
    gap = abs(measured - threshold)
    gap_s = f"{gap * 100:.1f} percentage points" if unit == "" else f"{gap:.3g}{unit}"  # unit "" = a share
    if higher_is_better:
        rel = measured / threshold
        word = (f"{rel:.2f}x the target" if met
                else f"missed by {gap_s} ({(1 - rel) * 100:.0f}% short)")
    else:
        rel = measured / threshold
        word = (f"{(1 - rel) * 100:.0f}% under the limit" if met
                else f"missed by {gap_s} ({(rel - 1) * 100:.0f}% over)")
    return met, word


def evaluate_targets(cells: list[dict], overhead: dict, s: Settings, gpu_present: bool) -> list[dict]:
    tg, d, rows = s.targets, s.default, []

    def row(tid, text, measured, threshold, better, unit, detail, reason=None):
        met, by = _verdict(measured, threshold, better, unit)
        if met is None and reason:
            by = reason
        rows.append({"id": tid, "target": text, "threshold": threshold, "measured": measured, "unit": unit,
                     "met": met, "by": by, "detail": detail})

    steps_note = "" if d.steps == 8 else f" (this run's default is {d.steps} steps, not 8)"
    for kind in [k for k in ("diffusion", "vae", "softmax") if k in s.suite.kinds]:
        tc = _find(cells, s, kind=kind, backend="torch-cpu", batch=1)
        oc = _find(cells, s, kind=kind, backend="ort-cpu", batch=1)
        ratio = tc["latency_ms"]["p50"] / oc["latency_ms"]["p50"] if tc and oc else None
        row(f"ort_vs_torch_{kind}", f"ONNX Runtime CPU >= {tg.ort_vs_torch_speedup:g}x faster than torch eager "
            f"(same model, same threads, batch 1, p50), {kind}", ratio, tg.ort_vs_torch_speedup, True, "x",
            {"torch_cpu_p50_ms": tc and tc["latency_ms"]["p50"], "ort_cpu_p50_ms": oc and oc["latency_ms"]["p50"],
             "threads": tc and tc.get("torch_threads")},
            None if ratio is not None else "needs torch-cpu and ort-cpu cells at the default point")
    if "diffusion" in s.suite.kinds and "softmax" in s.suite.kinds:
        dc = _find(cells, s, kind="diffusion", backend="ort-cpu", batch=1)
        sc = _find(cells, s, kind="softmax", backend="ort-cpu", batch=1)
        ratio = dc["latency_ms"]["p50"] / sc["latency_ms"]["p50"] if dc and sc else None
        row("diffusion_vs_softmax", f"diffusion attention ({d.steps} steps) <= {tg.diffusion_vs_softmax_ratio:g}x "
            f"the softmax baseline's latency, ORT CPU, batch 1, max_len {d.max_len}, p50{steps_note}",
            ratio, tg.diffusion_vs_softmax_ratio, False, "x",
            {"diffusion_p50_ms": dc and dc["latency_ms"]["p50"], "softmax_p50_ms": sc and sc["latency_ms"]["p50"],
             "steps": d.steps}, None if ratio is not None else "needs ort-cpu cells of both kinds")
    for kind in [k for k in ("diffusion", "vae", "softmax") if k in overhead]:
        o = overhead[kind]
        share = o["python_overhead_us_p50"] / o["session_us_p50"]
        row(f"python_overhead_{kind}", f"runtime Python overhead (prepare + decode) < "
            f"{tg.python_overhead_share:.0%} of session time, batch 1, {kind}", share,
            tg.python_overhead_share, False, "",
            {"python_overhead_us_p50": o["python_overhead_us_p50"], "session_us_p50": o["session_us_p50"],
             "share_of_total": o["python_overhead_share"]})
    if not overhead:
        row("python_overhead", f"runtime Python overhead < {tg.python_overhead_share:.0%} of session time, batch 1",
            None, tg.python_overhead_share, False, "", {}, "overhead not measured in this run (no ort-cpu)")

    gpu_cells = [c for c in cells if BACKENDS[c["backend"]].gpu and c["precision"] == "fp16"
                 and c["kind"] == "diffusion"]
    no_gpu = ("no GPU in this run" if not gpu_present else "no fp16 GPU diffusion cell in this run")
    b1 = [c for c in gpu_cells if _at_default(c, s, batch=1)]
    best = min(b1, key=lambda c: c["latency_ms"]["p99"]) if b1 else None
    row("gpu_p99_batch1", f"best GPU backend, FP16, batch 1, max_len {d.max_len}, diffusion {d.steps} steps: "
        f"p99 < {tg.gpu_p99_ms:g} ms{steps_note}", best and best["latency_ms"]["p99"], tg.gpu_p99_ms, False, " ms",
        {"backend": best and best["backend"], "fp16_mode": best and best.get("fp16_mode"),
         "candidates": {c["backend"]: c["latency_ms"]["p99"] for c in b1}}, None if best else no_gpu)
    b256 = [c for c in gpu_cells if _at_default(c, s, batch=256)]
    best = max(b256, key=lambda c: c["throughput_users_per_s"]) if b256 else None
    row("gpu_throughput_batch256", f"best GPU backend, FP16, batch 256, diffusion {d.steps} steps: "
        f"> {tg.gpu_batch256_users_per_s:,.0f} users/s", best and best["throughput_users_per_s"],
        tg.gpu_batch256_users_per_s, True, " users/s",
        {"backend": best and best["backend"],
         "candidates": {c["backend"]: c["throughput_users_per_s"] for c in b256}}, None if best else no_gpu)
    return rows


# ----------------------------------------------------------------------------- the suite
def run_suite(s: Settings, mode: str, out: Path, command: str, do_http: bool = True) -> dict:
    """mode: "default" (one axis at a time), "grid" (every combination) or "quick" (a smoke run)."""
    grid = mode == "grid"
    t_start = time.perf_counter()
    cpu0 = _cpu_snapshot()
    deadline = t_start + s.suite.budget_s
    import torch

    from genattn_runtime.backends import physical_cores

    threads = s.suite.threads or physical_cores()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    info = machine_info()
    status = backend_status(s.suite.backends)
    gpu_present = bool(info.get("gpu"))
    result: dict = {
        "schema": SCHEMA, "command": command, "mode": mode,
        "complete": False,
        "machine": {**info, "slug": s.suite.machine or machine_slug(info, threads), "threads": threads,
                    "torch_threads": torch.get_num_threads(), "ort_intra_op_threads": threads,
                    "ort_inter_op_threads": 1, "loadavg_start": list(os.getloadavg())},
        "settings": asdict(s),
        "timed": {n: BACKENDS[n].timed for n in s.suite.backends},
        "backends": {n: {"available": status[n] is None, "skip_reason": status[n], "gpu": BACKENDS[n].gpu}
                     for n in s.suite.backends},
        "models": {"configs": {k: repo_path(MODEL_CONFIGS / f"{k}.toml") for k in s.suite.kinds},
                   "weights": f"random init, torch.manual_seed({s.suite.seed}); generative output layers "
                              "randomised (a fresh one is all zeros)",
                   "inputs": "full-length histories of uniformly random items, 4 distinct batches cycled",
                   "exclusion": "history items masked in the graph (exclude_items = the history)",
                   "k": s.suite.k, "graph_k": s.suite.graph_k},
        "cells": [], "skipped": [], "overhead": {}, "http": None, "bundles": {}, "notes": [],
    }
    if gpu_present and not any(BACKENDS[n].gpu and status[n] is None and BACKENDS[n].bundle
                               for n in s.suite.backends):
        result["notes"].append("GPU figures come from torch (eager and CUDA graphs, fp16 via model.half() or "
                               "autocast) running the same serving path as the exported graph: this machine has "
                               "no onnxruntime-gpu and no TensorRT.")
    active = [n for n in s.suite.backends if status[n] is None]
    for n in s.suite.backends:
        if status[n] is not None:
            log.warning("backend %s skipped: %s", n, status[n])
    cache = Path(s.suite.cache)
    if not cache.is_absolute():
        cache = ROOT / cache
    bundles = Bundles(cache, s.suite.seed, s.suite.graph_k)
    trt_max_batch = max(s.sweep.batch + [s.default.batch])
    out.mkdir(parents=True, exist_ok=True)
    cells, skipped = result["cells"], result["skipped"]
    try:
        for key, batch_list in plan(s, grid):
            g = Group(key, s, bundles, threads, trt_max_batch)
            try:
                for batch in batch_list:
                    for b in active:
                        for prec in (s.suite.precisions if BACKENDS[b].gpu else ["fp32"]):
                            where = {"kind": key.kind, "backend": b, "precision": prec, "batch": batch,
                                     "steps": key.steps, "max_len": key.max_len, "n_items": key.n_items}
                            if time.perf_counter() > deadline:
                                skipped.append({**where, "reason": f"suite budget of {s.suite.budget_s:g} s spent"})
                                continue
                            try:
                                c = run_cell(g, b, prec, batch, s.timing)
                            except Skip as e:
                                skipped.append({**where, "reason": str(e)})
                                log.warning("skip %s %s %s b%d: %s", key.slug, b, prec, batch, e)
                                continue
                            except Exception as e:  # noqa: BLE001 - a failing cell must not lose the others
                                skipped.append({**where, "reason": f"{type(e).__name__}: {e}"})
                                log.error("cell %s %s %s b%d failed:\n%s", key.slug, b, prec, batch,
                                          traceback.format_exc())
                                continue
                            cells.append(c)
                            lm = c["latency_ms"]
                            log.info("%-26s b%-4d %-16s %s  p50 %8.3f ms  p99 %8.3f ms  %9.0f users/s  (%d it%s)",
                                     key.slug, batch, b, prec, lm["p50"], lm["p99"], c["throughput_users_per_s"],
                                     c["iterations"], ", time-boxed" if c["time_boxed"] else "")
                if g.notes:
                    result["notes"].extend(f"{key.slug}: {v}" for v in g.notes.values())
                if (s.overhead.enabled and "ort-cpu" in active and key == default_key(s, key.kind)
                        and time.perf_counter() < deadline):
                    try:
                        rec = g.recommender("ort-cpu", "fp32")
                        hist = g.inputs(1)[0][0].tolist()
                        result["overhead"][key.kind] = rec.measure_overhead(history=hist, k=s.suite.k,
                                                                            repeats=s.overhead.repeats,
                                                                            warmup=s.overhead.warmup)
                    except Exception as e:  # noqa: BLE001 - Skip (no bundle) or a runtime error: say so, go on
                        result["notes"].append(f"overhead of {key.kind} not measured: {type(e).__name__}: {e}")
            finally:
                g.close()
            result["bundles"] = bundles.log
            _write(result, s, out, plots=False)
        if do_http and s.http.enabled and s.http.kind in s.suite.kinds:
            key = default_key(s, s.http.kind)
            if time.perf_counter() > deadline:
                result["http"] = {"skipped": f"suite budget of {s.suite.budget_s:g} s spent"}
            else:
                try:
                    result["http"] = http_run(bundles.get(key), s, threads, key.max_len, key.n_items)
                    h = result["http"]
                    log.info("HTTP: %.0f req/s at concurrency %d, p50 %.2f ms, p99 %.2f ms, %d errors",
                             h["requests_per_s"], h["concurrency"], h["latency_ms"]["p50"], h["latency_ms"]["p99"],
                             h["errors"])
                except Exception as e:  # noqa: BLE001 - Skip, or the service failed: recorded, the results kept
                    result["http"] = {"skipped": str(e) if isinstance(e, Skip) else f"{type(e).__name__}: {e}"}
                    log.warning("HTTP run skipped: %s", e)
    finally:
        bundles.close()
    result["bundles"] = bundles.log
    result["targets"] = evaluate_targets(cells, result["overhead"], s, gpu_present)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["machine"]["other_processes_cpu_share"] = _other_cpu_share(cpu0)
    result["wall_s"] = time.perf_counter() - t_start
    result["complete"] = True
    _write(result, s, out, plots=s.suite.plots)
    return result


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy CPU seconds, this process + its reaped children's CPU seconds, wall time)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(vals[:8]) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system, time.monotonic()


def _other_cpu_share(start) -> float | None:
    """Share of the machine's CPU capacity used by other processes during the run (contamination)."""
    end = _cpu_snapshot()
    if start is None or end is None:
        return None
    wall = end[2] - start[2]
    other = (end[0] - start[0]) - (end[1] - start[1])
    return max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def _write(result: dict, s: Settings, out: Path, plots: bool) -> None:
    from genattn.fileio import write_json_atomic, write_text_atomic

    if "targets" not in result:
        result = {**result, "targets": evaluate_targets(result["cells"], result["overhead"], s,
                                                        bool(result["machine"].get("gpu")))}
    write_json_atomic(out / "latency.json", result)
    if plots:
        try:
            result["plots"] = make_plots(result, s, out)
        except Exception as e:  # noqa: BLE001 - no matplotlib, or a plot failed: the tables still get written
            result["notes"].append(f"plots skipped: {type(e).__name__}: {e}")
        write_json_atomic(out / "latency.json", result)
    write_text_atomic(out / "latency.md", render(result, s))


# ----------------------------------------------------------------------------- report
def _label(c: dict) -> str:
    return c["backend"] if c["precision"] == "fp32" else f"{c['backend']} {c['precision']}"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _axis_cells(cells: list[dict], s: Settings, axis: str) -> list[dict]:
    """Cells on one axis of the one-at-a-time sweep (all other coordinates at the default)."""
    d = s.default
    free = {"batch", "steps", "max_len", "n_items"} - {axis}
    out = []
    for c in cells:
        want = {"batch": d.batch, "max_len": d.max_len, "n_items": d.n_items,
                "steps": d.steps if c["kind"] == "diffusion" else None}
        if axis == "steps" and c["kind"] != "diffusion":
            continue
        if all(c[f] == want[f] for f in free):
            out.append(c)
    return sorted(out, key=lambda c: (KINDS.index(c["kind"]), c["backend"], c["precision"], c[axis] or 0))


def render(r: dict, s: Settings) -> str:
    m = r["machine"]
    d = s.default
    cells = r["cells"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    L = [f"# Inference latency ({r['mode']} run)", "",
         f"Machine `{m['slug']}`: {m['cpu']} ({m['cores']} logical cores){gpu}; torch {m['versions'].get('torch')}, "
         f"onnxruntime {m['versions'].get('onnxruntime') or m['versions'].get('onnxruntime-gpu')}, "
         f"Python {m['python']}. Threads: torch {m['torch_threads']}, ORT intra-op {m['ort_intra_op_threads']} "
         f"(inter-op 1). Load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
         + (f", at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}" if 'loadavg_end' in m else "") + ".", "",
         f"Reproduce: `{r['command']}`" + (f" ({r['wall_s']:.0f} s wall)" if "wall_s" in r else " (partial results)"),
         "", f"Default point: batch {d.batch}, diffusion {d.steps} steps, max_len {d.max_len}, "
             f"{d.n_items} items, top-{s.suite.k} (graph K {s.suite.graph_k}). Models: default configs, random "
             "weights. Latency in ms per call (a call serves the whole batch); throughput = batch / mean latency.",
         ""]
    notes = list(r.get("notes", []))
    other = m.get("other_processes_cpu_share")
    if other is not None and other > 0.05:
        notes.insert(0, f"**The machine was busy:** other processes used {other:.0%} of its CPU time during this run; "
                        "these timings are contaminated.")
    L += [f"> {note}" for note in notes] + ([""] if notes else [])
    L += ["## Targets", "", "| target | measured | met? |", "|---|---|---|"]
    for t in r.get("targets", []):
        meas = "-" if t["measured"] is None else (f"{t['measured']:.1%}" if t["unit"] == "" else
                                                  f"{t['measured']:,.3g}{t['unit']}")
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        L.append(f"| {t['target']} | {meas} | {met}: {t['by']} |")
    big = max(s.sweep.batch)
    head = [c for c in cells if _at_default(c, s, batch=c["batch"]) and c["batch"] in (d.batch, big)]
    if head:
        L += ["", f"## Headline: default point, batch {d.batch} and {big}", "",
              f"| kind | backend | p50 ms (b{d.batch}) | p99 ms (b{d.batch}) | users/s (b{d.batch}) | "
              f"p50 ms (b{big}) | users/s (b{big}) |", "|---|---|---|---|---|---|---|"]
        rows: dict[tuple, dict] = {}
        for c in head:
            rows.setdefault((KINDS.index(c["kind"]), c["kind"], _label(c)), {})[c["batch"]] = c
        for (_, kind, lab), by in sorted(rows.items()):
            a, b = by.get(d.batch), by.get(big)
            L.append(f"| {kind} | {lab} | " + (f"{_ms(a['latency_ms']['p50'])} | {_ms(a['latency_ms']['p99'])} | "
                                               f"{a['throughput_users_per_s']:,.0f} | " if a else "- | - | - | ")
                     + (f"{_ms(b['latency_ms']['p50'])} | {b['throughput_users_per_s']:,.0f} |" if b else "- | - |"))
    L += ["", "## What is timed", ""]
    for n, txt in r["timed"].items():
        b = r["backends"][n]
        L.append(f"- `{n}`: {txt}." + ("" if b["available"] else f" **Skipped here:** {b['skip_reason']}."))
    L.append("")
    cols = ("| kind | backend | {axis} | p50 | p90 | p95 | p99 | min | max | mean | CV | users/s "
            "| peak RSS MB (Δ) | iters |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

    def line(c: dict, axis: str) -> str:
        lm, mem = c["latency_ms"], c["memory"]
        v = c[axis] if c[axis] is not None else "-"
        gm = f", GPU {mem['cuda_max_allocated_mb']:.0f}" if "cuda_max_allocated_mb" in mem else ""
        return (f"| {c['kind']} | {_label(c)} | {v} | {_ms(lm['p50'])} | {_ms(lm['p90'])} | {_ms(lm['p95'])} | "
                f"{_ms(lm['p99'])} | {_ms(lm['min'])} | {_ms(lm['max'])} | {_ms(lm['mean'])} | {c['cv']:.2f} | "
                f"{c['throughput_users_per_s']:,.0f} | "
                f"{mem['rss_peak_mb']:.0f} ({mem['rss_peak_delta_mb']:+.0f}{gm}) | "
                f"{c['iterations']}{'*' if c['time_boxed'] else ''} |")

    if r["mode"] == "grid":
        L += ["## All cells", "", cols.format(axis="batch / steps / max_len / items"), sep]
        for c in sorted(cells, key=lambda c: (KINDS.index(c["kind"]), c["backend"], c["precision"], c["n_items"],
                                              c["max_len"], c["steps"] or 0, c["batch"])):
            c2 = {**c, "b": f"{c['batch']} / {c['steps'] or '-'} / {c['max_len']} / {c['n_items']}"}
            L.append(line(c2, "b"))
        L.append("")
    else:
        titles = {"batch": "Batch size", "steps": "Diffusion steps", "max_len": "Sequence length (max_len)",
                  "n_items": "Catalog size (items)"}
        for axis, title in titles.items():
            ac = _axis_cells(cells, s, axis)
            if not ac:
                continue
            L += [f"## {title}", "", cols.format(axis=axis), sep] + [line(c, axis) for c in ac] + [""]
    L += ["Latencies in ms. `*` = time-boxed (fewer than the minimum iterations fitted in the box). Peak RSS: the "
          "process's high-water mark after the cell (Δ: its growth during the cell, loading the cell's model or "
          "session included; the JSON also has the growth over the timed calls alone); GPU: "
          "torch.cuda.max_memory_allocated.", ""]
    if r["overhead"]:
        L += ["## Runtime Python overhead (Recommender.measure_overhead, batch 1, ORT CPU)", "",
              "| kind | prepare µs | session µs | decode µs | overhead µs | share of session | share of total |",
              "|---|---|---|---|---|---|---|"]
        for kind, o in r["overhead"].items():
            L.append(f"| {kind} | {o['prepare_us_p50']:.1f} | {o['session_us_p50']:.1f} | {o['decode_us_p50']:.1f} | "
                     f"{o['python_overhead_us_p50']:.1f} | {o['python_overhead_us_p50'] / o['session_us_p50']:.1%} | "
                     f"{o['python_overhead_share']:.1%} |")
        L.append("")
    h = r.get("http")
    if h:
        L += ["## HTTP service under load", ""]
        if "skipped" in h:
            L.append(f"Skipped: {h['skipped']}")
        else:
            sv = h["server"]
            L += [f"`python -m genattn_runtime.service` ({s.http.kind}, default point) on loopback, "
                  f"{sv['threads']} ORT threads, micro-batching max {sv['max_batch']} rows / {sv['max_wait_ms']} ms; "
                  f"{h['concurrency']} concurrent httpx clients for {h['duration_s']:.1f} s on the same machine.", "",
                  "| requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | mean rows per session run "
                  "| server peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {h['requests_per_s']:,.0f} | {_ms(h['latency_ms']['p50'])} | {_ms(h['latency_ms']['p90'])} | "
                  f"{_ms(h['latency_ms']['p99'])} | {_ms(h['latency_ms']['max'])} | {h['errors']} | "
                  f"{(sv['mean_batch_rows'] or 0):.1f} | {sv['peak_rss_mb'] or 0:.0f} |"]
        L.append("")
    skipped_b = {n: b["skip_reason"] for n, b in r["backends"].items() if not b["available"]}
    if skipped_b or r["skipped"]:
        L += ["## Skipped", ""]
        L += [f"- backend `{n}`: {why}" for n, why in skipped_b.items()]
        reasons: dict[str, list] = {}
        for sk in r["skipped"]:
            reasons.setdefault(f"`{sk['backend']}` {sk['precision']}: {sk['reason']}", []).append(sk)
        L += [f"- {why} ({len(v)} cell{'s' if len(v) > 1 else ''})" for why, v in reasons.items()]
        L.append("")
    if r["bundles"]:
        L += ["## Bundles", "", "| bundle | export s | ONNX MB | nodes | cached |", "|---|---|---|---|---|"]
        for name, b in r["bundles"].items():
            L.append(f"| {name} | {b.get('export_s', float('nan')):.1f} | {b.get('onnx_mb', float('nan')):.1f} | "
                     f"{b.get('nodes', '-')} | {'yes' if b.get('cached') else 'no'} |")
        L.append("")
    for p in r.get("plots", []):
        L.append(f"![{Path(p).stem}]({Path(p).name})")
    return "\n".join(L) + "\n"


def make_plots(r: dict, s: Settings, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, written = r["cells"], []
    labels = sorted({_label(c) for c in cells})
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}

    def log2_axis(ax, values):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(values))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(str(out / name))

    def series(cs, axis):
        by: dict[str, list] = {}
        for c in cs:
            by.setdefault(_label(c), []).append(c)
        return {lab: sorted(v, key=lambda c: c[axis]) for lab, v in by.items()}

    grid = r["mode"] == "grid"
    pick = (lambda axis: [c for c in cells if all(c[f] == v for f, v in _default_coords(c, s, axis).items())]) \
        if grid else (lambda axis: _axis_cells(cells, s, axis))

    kinds = [k for k in KINDS if any(c["kind"] == k for c in cells)]
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for lab, cs in series([c for c in pick("batch") if c["kind"] == kind], "batch").items():
                x = [c["batch"] for c in cs]
                ax.plot(x, [c["latency_ms"]["p50"] for c in cs], "o-", color=colors[lab], label=lab)
                ax.plot(x, [c["latency_ms"]["p99"] for c in cs], ":", color=colors[lab])
            ax.set(yscale="log", xlabel="batch", ylabel="latency per call, ms (p50; dotted p99)",
                   title=kind + (f" ({s.default.steps} steps)" if kind == "diffusion" else ""))
            log2_axis(ax, {c["batch"] for c in pick("batch")})
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "latency_vs_batch.png")

    steps_cells = [c for c in pick("steps") if c["kind"] == "diffusion"]
    if steps_cells:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, cs in series(steps_cells, "steps").items():
            ax.plot([c["steps"] for c in cs], [c["latency_ms"]["p50"] for c in cs], "o-", color=colors[lab],
                    label=f"diffusion, {lab}")
            base = [c for c in cells if c["kind"] == "softmax" and _label(c) == lab and _at_default(c, s)]
            if base:
                ax.axhline(base[0]["latency_ms"]["p50"], ls="--", color=colors[lab], lw=1)
        ax.set(yscale="log", xlabel="DDIM steps", ylabel="p50 latency, ms (dashed: softmax)",
               title=f"diffusion, batch {s.default.batch}, max_len {s.default.max_len}")
        log2_axis(ax, {c["steps"] for c in steps_cells})
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "latency_vs_steps.png")

    ratios: dict[str, list] = {}
    for c in cells:
        if c["kind"] == "softmax":
            continue
        base = [b for b in cells if b["kind"] == "softmax" and _label(b) == _label(c) and b["batch"] == c["batch"]
                and b["max_len"] == c["max_len"] and b["n_items"] == c["n_items"]]
        if base:
            ratios.setdefault(_label(c), []).append((c, c["latency_ms"]["p50"] / base[0]["latency_ms"]["p50"]))
    if ratios:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, rs in ratios.items():
            diff = sorted((c["steps"], q) for c, q in rs
                          if c["kind"] == "diffusion" and _at_default(c, s, steps=c["steps"]))
            if diff:
                ax.plot([x for x, _ in diff], [q for _, q in diff], "o-", color=colors[lab], label=f"diffusion, {lab}")
            vae = [q for c, q in rs if c["kind"] == "vae" and _at_default(c, s)]
            if vae:
                ax.axhline(vae[0], ls="--", color=colors[lab], lw=1, label=f"vae, {lab}")
        ax.axhline(s.targets.diffusion_vs_softmax_ratio, color="red", lw=1, alpha=0.6, label="target (ORT CPU)")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xlabel="DDIM steps", ylabel="p50 latency / softmax p50",
               title=f"generative vs softmax cost, batch {s.default.batch}, max_len {s.default.max_len}")
        log2_axis(ax, {c["steps"] for c in cells if c["kind"] == "diffusion"} or {1})
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "generative_vs_softmax.png")

    cat = pick("n_items")
    if len({c["n_items"] for c in cat}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, marker in zip(KINDS, "os^"):
            for lab, cs in series([c for c in cat if c["kind"] == kind], "n_items").items():
                ax.plot([c["n_items"] for c in cs], [c["latency_ms"]["p50"] for c in cs], marker + "-",
                        color=colors[lab], label=f"{kind}, {lab}", alpha=0.8)
        ax.set(xscale="log", yscale="log", xlabel="catalog size (items)", ylabel="p50 latency, ms",
               title=f"catalog size, batch {s.default.batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
        save(fig, "latency_vs_catalog.png")
    return written


def _default_coords(c: dict, s: Settings, axis: str) -> dict:
    d = s.default
    want = {"batch": d.batch, "max_len": d.max_len, "n_items": d.n_items,
            "steps": d.steps if c["kind"] == "diffusion" else None}
    want.pop(axis)
    return want


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "cpu.toml"))
    ap.add_argument("--quick", action="store_true", help="tiny sweep, few iterations (< 60 s)")
    ap.add_argument("--grid", action="store_true", help="every combination of the sweep axes")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<machine>; "
                                  "--quick: runs/latency_quick/<machine>)")
    ap.add_argument("--cache", help="bundle cache folder (default from the config)")
    ap.add_argument("--machine", help="results folder name (default from the config or the hardware)")
    ap.add_argument("--kinds", help="comma-separated subset of softmax,vae,diffusion")
    ap.add_argument("--backends", help="comma-separated backends (default from the config)")
    ap.add_argument("--threads", type=int, help="torch threads = ORT intra-op threads (0 = physical cores)")
    ap.add_argument("--budget-s", type=float, help="wall-time budget of the whole suite")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP service run")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    suite: dict = {}
    if a.cache:
        suite["cache"] = a.cache
    if a.machine:
        suite["machine"] = a.machine
    if a.kinds:
        suite["kinds"] = a.kinds.split(",")
    if a.backends:
        suite["backends"] = a.backends.split(",")
    if a.threads is not None:
        suite["threads"] = a.threads
    if a.budget_s is not None:
        suite["budget_s"] = a.budget_s
    if a.no_plots:
        suite["plots"] = False
    s = load_settings(a.config, quick=a.quick, overrides={"suite": suite})
    if a.dry_run:
        for key, batches in plan(s, a.grid):
            print(f"{key.slug:32s} batches {batches}")
        return {}
    if a.out:
        out = Path(a.out)
    else:
        from genattn_runtime.backends import physical_cores

        threads = s.suite.threads or physical_cores()
        slug = s.suite.machine or machine_slug(machine_info(), threads)
        out = (ROOT / "runs" / "latency_quick" / slug) if a.quick else (ROOT / "benchmarks" / "results" / slug)
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.latency " + " ".join(args)
    mode = "grid" if a.grid else ("quick" if a.quick else "default")
    r = run_suite(s, mode, out, command, do_http=not a.no_http)
    log.info("wrote %s (%.0f s)", out / "latency.json", r["wall_s"])
    for t in r["targets"]:
        log.info("target %-28s %-5s %s", t["id"], {True: "met", False: "MISSED", None: "n/a"}[t["met"]], t["by"])
    return r


if __name__ == "__main__":
    main()
