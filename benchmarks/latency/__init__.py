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
backend (BACKENDS in settings.py, and `timed` in the results): compute only (the model call or
ONNX Runtime session on index arrays) or end to end (raw ids in, raw ids out).

Results: <out>/latency.json, latency.md and PNG plots (benchmarks/README.md explains
them); the targets of the issue are evaluated from cells measured in the same run.

Modules: settings (config tables, backend catalog, plan), bundles (models and the
bundle cache), cells (timing, one model's backends, availability), http_load (the
HTTP service under load), report (targets, latency.json / .md, plots), suite (the
run), cli (the command line). Everything is re-exported here.
"""
from .bundles import Bundles, bundle_dir, make_model, model_config, sampling_of
from .cells import (Group, backend_status, machine_slug, make_call, maxrss_mb, rss_mb, run_cell, summarize,
                    time_calls, topk_agreement)
from .cli import main
from .http_load import _free_port, _http_load, _metric, _proc_hwm_mb, http_run
from .report import _verdict, evaluate_targets, make_plots, render
from .settings import (BACKENDS, GPU_DEVICE, KINDS, MODEL_CONFIGS, ROOT, RUNTIME_BACKEND, SCHEMA, BackendInfo,
                       HttpCfg, ModelKey, OverheadCfg, PointCfg, Settings, Skip, SuiteCfg, SweepCfg, TargetsCfg,
                       TimingCfg, default_key, load_settings, model_key, plan)
from .suite import run_suite

__all__ = [
    "BACKENDS", "GPU_DEVICE", "KINDS", "MODEL_CONFIGS", "ROOT", "RUNTIME_BACKEND", "SCHEMA",
    "BackendInfo", "Bundles", "Group", "HttpCfg", "ModelKey", "OverheadCfg", "PointCfg", "Settings", "Skip",
    "SuiteCfg", "SweepCfg", "TargetsCfg", "TimingCfg",
    "backend_status", "bundle_dir", "default_key", "evaluate_targets", "http_run", "load_settings",
    "machine_slug", "main", "make_call", "make_model", "make_plots", "maxrss_mb", "model_config", "model_key",
    "plan", "render", "rss_mb", "run_cell", "run_suite", "sampling_of", "summarize", "time_calls",
    "topk_agreement",
    # underscored, imported by the tests and by other benchmarks (HTTP load helpers)
    "_verdict", "_free_port", "_http_load", "_metric", "_proc_hwm_mb",
]
