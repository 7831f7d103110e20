"""The suite: every planned cell, the runtime overhead and the HTTP run, written after every model."""
from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from ..machine import git_commit, machine_info, repo_path
from .bundles import Bundles, model_shape
from .cells import Group, backend_status, machine_slug, run_cell
from .http_load import http_run
from .report import _write, evaluate_targets
from .settings import BACKENDS, MODEL_CONFIGS, ROOT, SCHEMA, Settings, Skip, default_key, log, plan


def run_suite(s: Settings, mode: str, out: Path, command: str, do_http: bool = True) -> dict:
    """mode: "default" (one axis at a time), "grid" (every combination) or "quick" (a smoke run)."""
    grid = mode == "grid"
    t_start = time.perf_counter()
    cpu0 = _cpu_snapshot()
    deadline = t_start + s.suite.budget_s
    import torch

    from genattn.config import ModelConfig
    from genattn_runtime.backends import physical_cores

    threads = s.suite.threads or physical_cores()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    info = machine_info()
    status = backend_status(s.suite.backends)
    gpu_present = bool(info.get("gpu"))
    result: dict = {
        "schema": SCHEMA, "command": command, "commit": git_commit(), "mode": mode,
        "complete": False,
        "machine": {**info, "slug": s.suite.machine or machine_slug(info, threads), "threads": threads,
                    "torch_threads": torch.get_num_threads(), "ort_intra_op_threads": threads,
                    "ort_inter_op_threads": 1, "loadavg_start": list(os.getloadavg())},
        "settings": asdict(s),
        "timed": {n: BACKENDS[n].timed for n in s.suite.backends},
        "backends": {n: {"available": status[n] is None, "skip_reason": status[n], "gpu": BACKENDS[n].gpu}
                     for n in s.suite.backends},
        "models": {"configs": {k: repo_path(MODEL_CONFIGS / f"{k}.toml") for k in s.suite.kinds},
                   # what those files meant when this ran (max_len and n_items are set per cell)
                   "shapes": {k: model_shape(ModelConfig(attention=k)) for k in s.suite.kinds},
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
