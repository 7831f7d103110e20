"""The latency suite cannot rot: `--quick` runs end to end and writes well-formed results.

One real run of `python -m benchmarks.latency --quick` (exports four small bundles,
times every CPU backend, the runtime overhead and a live HTTP service) into a tmp
folder, then checks the JSON, the Markdown and the plots. Under a minute on 2 cores.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.latency import BACKENDS, KINDS, ModelKey, _verdict, load_settings, plan, summarize  # noqa: E402

CPU_CONFIG = ROOT / "benchmarks" / "configs" / "cpu.toml"
GPU_CONFIG = ROOT / "benchmarks" / "configs" / "gpu.toml"
STATS = ("min", "p50", "p90", "p95", "p99", "max", "mean")
CELL_KEYS = {"kind", "backend", "precision", "batch", "steps", "max_len", "n_items", "latency_ms", "cv",
             "throughput_users_per_s", "iterations", "warmup_iterations", "elapsed_s", "time_boxed", "memory"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("latency")
    out = root / "out"
    cmd = [sys.executable, "-m", "benchmarks.latency", "--config", str(CPU_CONFIG), "--quick",
           "--out", str(out), "--cache", str(root / "cache"),
           "--budget-s", "600"]  # the suite's 90 s safety net would skip cells on a busy machine
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "latency.json").read_text()), out


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------- the quick run (one subprocess)

@pytest.mark.slow
def test_quick_run_structure(quick):
    r, _ = quick
    assert r["schema"] == "genattn-latency/1" and r["mode"] == "quick" and r["complete"] is True
    assert r["command"].startswith("python -m benchmarks.latency ") and r["commit"]
    # the models' shapes as the per-kind defaults gave them when this ran
    assert r["models"]["shapes"]["vae"] == {"d_model": 32, "n_heads": 2, "n_blocks": 1, "generative_blocks": "last"}
    m = r["machine"]
    assert m["slug"] and m["cores"] >= 1 and m["versions"]["torch"] and m["versions"]["onnxruntime"]
    assert m["threads"] >= 1 and m["torch_threads"] == m["threads"] == m["ort_intra_op_threads"]
    for name in ("torch-cpu", "ort-cpu", "ort-cpu-e2e"):
        assert r["backends"][name]["available"] is True and r["timed"][name]
    assert r["cells"], "no cell was measured"
    for c in r["cells"]:
        assert CELL_KEYS <= set(c), set(CELL_KEYS) - set(c)
        assert c["backend"] in BACKENDS and c["kind"] in KINDS
        assert (c["steps"] is None) == (c["kind"] != "diffusion")
    # the quick sweep: every kind x CPU backend at batch 1 and 8, and diffusion at 1 and 2 steps
    got = {(c["kind"], c["backend"], c["batch"], c["steps"]) for c in r["cells"]}
    for kind in KINDS:
        st = 2 if kind == "diffusion" else None
        for b in ("torch-cpu", "ort-cpu", "ort-cpu-e2e"):
            assert {(kind, b, 1, st), (kind, b, 8, st)} <= got, (kind, b)
    assert {("diffusion", b, 1, 1) for b in ("torch-cpu", "ort-cpu", "ort-cpu-e2e")} <= got
    assert not r["skipped"], r["skipped"]
    assert _finite_positive(r["wall_s"])  # its speed is the suite's business, not a unit test's


@pytest.mark.slow
def test_quick_run_numbers_are_finite_positive_and_ordered(quick):
    r, _ = quick
    for c in r["cells"]:
        lm = c["latency_ms"]
        where = (c["kind"], c["backend"], c["batch"], c["steps"])
        assert all(_finite_positive(lm[s]) for s in STATS), where
        assert lm["min"] <= lm["p50"] <= lm["p90"] <= lm["p95"] <= lm["p99"] <= lm["max"], (where, lm)
        assert lm["min"] <= lm["mean"] <= lm["max"], where
        assert math.isfinite(c["cv"]) and c["cv"] >= 0, where
        assert _finite_positive(c["throughput_users_per_s"]), where
        assert c["throughput_users_per_s"] == pytest.approx(c["batch"] / (lm["mean"] / 1e3)), where
        assert c["iterations"] >= 3 and _finite_positive(c["elapsed_s"]), where
        assert _finite_positive(c["memory"]["rss_peak_mb"]) and c["memory"]["rss_peak_delta_mb"] >= 0, where
        if c["backend"] == "ort-cpu":  # the bundle serves the same model as the torch cell
            assert c["topk_agreement_vs_torch_cpu_fp32"] >= 0.9, where
    for kind in KINDS:
        o = r["overhead"][kind]
        assert _finite_positive(o["session_us_p50"]) and _finite_positive(o["python_overhead_us_p50"])
    h = r["http"]
    assert h["requests"] > 0 and h["errors"] == 0 and _finite_positive(h["requests_per_s"])
    assert h["latency_ms"]["p50"] <= h["latency_ms"]["p90"] <= h["latency_ms"]["p99"]


@pytest.mark.slow
def test_quick_run_targets(quick):
    r, _ = quick
    t = {row["id"]: row for row in r["targets"]}
    expected = ({f"ort_vs_torch_{k}" for k in KINDS} | {f"python_overhead_{k}" for k in KINDS}
                | {"diffusion_vs_softmax", "gpu_p99_batch1", "gpu_throughput_batch256"})
    assert expected <= set(t), expected - set(t)
    for row in r["targets"]:
        assert {"target", "threshold", "measured", "met", "by", "detail"} <= set(row)
        assert row["met"] in (True, False, None) and row["by"]
    for tid in expected - {"gpu_p99_batch1", "gpu_throughput_batch256"}:  # CPU targets are measured here
        assert _finite_positive(t[tid]["measured"]) and t[tid]["met"] in (True, False), t[tid]
        if t[tid]["met"] is False:
            assert "missed by" in t[tid]["by"]
    if not r["machine"]["gpu"]:
        assert t["gpu_p99_batch1"]["met"] is None and t["gpu_p99_batch1"]["measured"] is None


@pytest.mark.slow
def test_quick_run_markdown_and_plots(quick):
    r, out = quick
    md = (out / "latency.md").read_text()
    assert "## Targets" in md and "## What is timed" in md and "## HTTP service under load" in md
    assert md.count("| yes") + md.count("| **no**") + md.count("| n/a") >= len(r["targets"])
    for name in ("latency_vs_batch.png", "latency_vs_steps.png", "generative_vs_softmax.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in md
    # the results name the plots, never this machine's layout
    assert r["plots"] and not any(p.startswith("/") for p in r["plots"]), r["plots"]


# ----------------------------------------------------------------- pieces, no run

def test_configs_load_and_plan():
    s = load_settings(CPU_CONFIG)
    keys = dict(plan(s, grid=False))
    assert keys[ModelKey("diffusion", 8, 50, 1682)] == [1, 8, 64, 256]  # the batch axis at the default point
    assert {k.steps for k in keys if k.kind == "diffusion"} == {1, 2, 4, 8, 16}
    assert {k.n_items for k in keys} == {1682, 100_000, 1_000_000} and {k.max_len for k in keys} == {50, 200}
    assert all(k.steps is None for k in keys if k.kind != "diffusion")
    assert len(keys) == 16 and next(iter(keys)) == ModelKey("softmax", None, 50, 1682)
    assert len(plan(s, grid=True)) == 2 * 2 * 3 + 5 * 2 * 3  # softmax/vae: L x N; diffusion: steps x L x N
    q = load_settings(CPU_CONFIG, quick=True)
    assert q.sweep.batch == [1, 8] and q.default.steps == 2 and q.timing.min_iters < s.timing.min_iters
    g = load_settings(GPU_CONFIG)
    assert all(BACKENDS[b].gpu for b in g.suite.backends) and "fp16" in g.suite.precisions


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[timing]\nmin_itrs = 3\n")
    with pytest.raises(SystemExit, match="min_itrs"):
        load_settings(bad)
    bad.write_text("[suite]\nbackends = ['torch-tpu']\n")
    with pytest.raises(SystemExit, match="torch-tpu"):
        load_settings(bad)


def test_summary_and_verdict():
    st = summarize([0.001, 0.002, 0.003, 0.004], batch=8)
    assert st["latency_ms"]["p50"] == pytest.approx(2.5) and st["throughput_users_per_s"] == pytest.approx(3200)
    met, by = _verdict(1.9, 3.0, True, "x")
    assert met is False and "missed by 1.1x" in by
    met, by = _verdict(2.0, 1.5, False, "x")
    assert met is False and "33% over" in by
    assert _verdict(None, 1.0, False, " ms") == (None, "not measured")


def test_triton_summary_sets_each_cell_beside_fastapi():
    """serving_scale's `triton` section: Triton cells with the FastAPI wrk cell of the same
    concurrency, and the target judged only on HTTP at 16 and 32 connections."""
    from benchmarks.serving_engines import triton_summary

    def row(engine, proto, client, c, rps, p99, errors=0):
        return {"engine": engine, "protocol": proto, "client": client, "concurrency": c, "req_per_s": rps,
                "p50_ms": p99 / 2, "p99_ms": p99, "errors": errors}

    doc = {"setup": "s", "clients": "wrk", "conditions": "quiet", "machine": "m", "commit": "c", "date": "d",
           "command": "python -m benchmarks.serving_engines", "rows": [
               row("fastapi", "http", "wrk", 1, 200.0, 6.0), row("triton", "http", "wrk", 1, 210.0, 5.0),
               row("fastapi", "http", "wrk", 16, 1500.0, 20.0), row("triton", "http", "wrk", 16, 1600.0, 30.0),
               row("triton", "grpc", "perf_analyzer", 16, 900.0, 60.0),
               row("fastapi", "http", "wrk", 32, 1800.0, 25.0), row("triton", "http", "wrk", 32, 1700.0, 28.0),
               row("triton", "http", "perf_analyzer", 32, 2100.0, 40.0, errors=3)]}
    s = triton_summary(doc, "engines")
    by = {(r["protocol"], r["client"], r["concurrency"]): r for r in s["rows"]}
    assert len(by) == 5 and s["source"].endswith("section engines")
    assert "target_met" not in by["http", "wrk", 1] and "target_met" not in by["grpc", "perf_analyzer", 16]
    assert by["http", "wrk", 16]["target_met"] is True and by["http", "wrk", 16]["fastapi_p99_ms"] == 20.0
    assert by["http", "wrk", 32]["target_met"] is False  # fewer req/s than FastAPI
    assert by["http", "perf_analyzer", 32]["target_met"] is False  # errors
    assert by["grpc", "perf_analyzer", 16]["fastapi_req_per_s"] == 1500.0


def test_runtime_ab_report_names_its_ratio_by_mode(tmp_path):
    """runtime_ab: after / before for two runtimes, A / B for two bundles, in the JSON and the page."""
    from benchmarks.runtime_ab import _report

    def r(v):
        return {"p50_ms": v, "p90_ms": v + 0.1}

    doc = _report(str(tmp_path / "rt"), "cmd", {"before": [r(1.0), r(3.0)], "after": [r(2.0), r(2.0)]}, "T",
                  {"before": "abc"})
    assert doc["ratio_after_before"] == 1.0 and doc["before"] == "abc"
    doc = _report(str(tmp_path / "bd"), "cmd", {"a": [r(3.0)], "b": [r(2.0)]}, "T", {})
    assert doc["ratio_a_b"] == 1.5
    assert "(A / B 1.500)" in (tmp_path / "bd.md").read_text()


def test_device_scripts_parse_and_name_existing_configs():
    """The lent-GPU scripts cannot be run here: at least they parse, and every config they train exists."""
    import re
    import subprocess
    from pathlib import Path

    from genattn.config import load_run_config, parse_overrides

    root = Path(__file__).resolve().parents[1]
    for script in sorted((root / "benchmarks").glob("device_*.sh")):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script.name
    text = (root / "benchmarks" / "device_ml1m.sh").read_text()
    names = {v: re.search(rf'^{v}=(\S+)', text, re.M).group(1) for v in ("SEL", "ANCHOR", "VAE_ANCHOR")}
    jobs = re.findall(r'^\s+"(\w+)_seed0\|([^|]+)\|0\|([^"]*)"', text, re.M)
    # seed 0 of every kind's selected configuration and of the anchors' softmax, under both losses, and
    # the ML-1M pair that differs at max_len 50 under full CE (the VAE off the backbone, softmax + bias)
    assert {name for name, _, _ in jobs} == {f"{k}_{loss}" for k in ("softmax_anchor", "softmax_tuned", "vae_tuned",
                                                                    "diffusion_tuned", "vae_anchor")
                                             for loss in ("full", "bce")} | {"vae_anchor_pgen_full",
                                                                             "softmax_anchor_rb_full"}
    for name, cfg, extra in jobs:
        assert ("--loss bce" in extra) == name.endswith("_bce"), name
        for var, path in names.items():
            cfg = cfg.replace(f"${var}", path)
        assert (root / cfg).is_file(), cfg
        # its --set overrides name real fields: the configuration it trains builds
        run = load_run_config(root / cfg, parse_overrides(re.findall(r"--set (\S+)", extra)))
        assert ("pgen" in name) == (run.model.posterior_ce == "generative"), name
        assert ("_rb_" in name) == run.model.recency_bias, name


def test_headline_of_a_one_batch_sweep_shows_that_batch_once():
    """cpu_defaults.toml sweeps batch 1 only: the headline has one set of batch columns, and every
    row as many cells as its header (it used to repeat the batch-1 columns under 'batch 1 and 1')."""
    from benchmarks.latency.report import render
    s = load_settings(ROOT / "benchmarks" / "configs" / "cpu_defaults.toml")
    r = json.loads((ROOT / "benchmarks" / "results" / "cpu-2core-amd-epyc" / "defaults" / "latency.json").read_text())
    lines = render(r, s).splitlines()
    at = lines.index("## Headline: default point, batch 1")
    table = []
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert table[0].count("(b1)") == 3, table[0]
    assert len(table) > 2 and {row.count("|") for row in table} == {table[0].count("|")}, table
