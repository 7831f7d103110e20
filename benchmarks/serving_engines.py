"""Both serving engines under C-speed load generators, each its own process.

    python -m benchmarks.serving_engines                  # 2 interleaved rounds, concurrency 1/4/16/32
    python -m benchmarks.serving_engines --quick          # 1 round of 3 s per cell (smoke run)
    python -m benchmarks.serving_engines --triton-queue-policy   # Triton only, with a queue policy (before)
    python -m benchmarks.serving_engines --fastapi-http-ab   # FastAPI only: uvloop+httptools vs asyncio+h11

The bundle of `benchmarks.triton_load` (diffusion, 8 DDIM steps, max_len 50, 1,682 items,
random weights) is served in turn by `genattn serve --engine fastapi` and `--engine triton`
(ONNX Runtime CPU, one intra-op thread, a 2 ms batching window). Clients: wrk for both
engines over HTTP/1.1 keep-alive (FastAPI `POST /recommend`, Triton KServe v2 JSON), and
Triton's perf_analyzer for Triton over HTTP and gRPC (binary tensors). Every request is one
user of 50 raw ids, k = 10. Rounds alternate the engines (A, B, B, A, ...) so that load from
other jobs falls on both; a cell's req/s is the mean over rounds, its percentiles the
median round's.

wrk: `apt-get install wrk`. perf_analyzer: `--perf-analyzer PATH` or on PATH (the PyPI wheel
needs glibc 2.38; tritonclient 2.35's wheel ships one built for older systems, which needs
libb64 and libcudart.so.12 to start, though it never uses a GPU here).

Results: benchmarks/results/serving_engines.{json,md}, section "engines" (or "triton_queue_policy"), and
the Triton cells beside FastAPI's as section "triton" of benchmarks/results/serving_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from genattn_runtime.service import MAX_WAIT_MS

from .machine import REPO, git_commit, machine_info, repo_path
from .record import update_results
from .serving_scale import write_section
from .triton_load import Server, _bundle

RESULTS = REPO / "benchmarks" / "results"
KIND, STEPS, MAX_LEN, N_ITEMS, K = "diffusion", 8, 50, 1682, 10
UVICORN_FAST, UVICORN_PLAIN = ("uvloop", "httptools"), ("asyncio", "h11")  # (event loop, HTTP parser)


def _history(n: int = MAX_LEN) -> list[int]:
    return np.random.default_rng(0).integers(1, N_ITEMS + 1, n).tolist()


def _ms(text: str) -> float:
    """wrk's '12.34ms' / '1.20s' / '850.00us' -> ms."""
    v, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: dict, concurrency: int, duration_s: float, tmp: Path) -> dict:
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(body))}\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, timeout=duration_s + 60).stdout
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", out))
    return {"req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(pct["50"]), "p99_ms": _ms(pct["99"]),
            "max_ms": _ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)), "errors": errors}


def run_perf_analyzer(pa: str, url: str, protocol: str, concurrency: int, duration_s: float, tmp: Path,
                      hist: list[int]) -> dict:
    data = tmp / "input.json"
    data.write_text(json.dumps({"data": [{"history": {"content": hist, "shape": [len(hist)]}}]}))
    csv_path = tmp / f"pa-{protocol}-{concurrency}.csv"
    window_ms = int(duration_s * 1000 / 3)  # the result averages 3 windows
    cmd = [pa, "-m", "genattn", "-u", url, "-i", protocol, "-b", "1", "--input-data", str(data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(window_ms),
           # contended cores: accept any spread between windows (PA otherwise refuses to report)
           "--max-trials", "8", "--stability-percentage", "999", "-f", str(csv_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s * 4 + 120)
    if out.returncode or not csv_path.is_file():
        raise RuntimeError(f"perf_analyzer failed: {(out.stdout + out.stderr)[-1500:]}")
    row = next(csv.DictReader(csv_path.open()))
    errs = re.search(r"(\d+) failed", out.stdout)
    return {"req_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3, "max_ms": None, "errors": int(errs.group(1)) if errs else 0}


def _merge(cells: list[dict]) -> dict:
    mid = sorted(cells, key=lambda c: c["req_per_s"])[len(cells) // 2]
    return {"req_per_s": float(np.mean([c["req_per_s"] for c in cells])), "p50_ms": mid["p50_ms"],
            "p99_ms": mid["p99_ms"], "p99_ms_worst": max(c["p99_ms"] for c in cells),
            "errors": sum(c["errors"] for c in cells),
            "rounds_req_per_s": " / ".join(f"{c['req_per_s']:.0f}" for c in cells)}


def render(doc: dict) -> str:
    lines = ["# Serving engines under C-speed clients", ""]
    for name in sorted(doc):
        lines += [f"## {name}", ""] + _render_section(doc[name])
    return "\n".join(lines)


def _render_section(doc: dict) -> list[str]:
    lines = [doc["setup"], "", f"Conditions: {doc['conditions']}", "",
             "| engine | protocol | client | concurrency | req/s | p50 ms | p99 ms | worst round p99 ms | errors "
             "| req/s per round |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['engine']} | {r['protocol']} | {r['client']} | {r['concurrency']} | "
                     f"{r['req_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms_worst']:.1f} | "
                     f"{r['errors']} | {r['rounds_req_per_s']} |")
    lines += ["", f"Clients: {doc['clients']}", "", f"Machine: {doc['machine']}; commit {doc['commit']}; "
              f"{doc['date']}", "", "Command:", "", f"    {doc['command']}", ""]
    if doc.get("notes"):
        lines += [doc["notes"], ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serving_engines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of 3 s per cell")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 2; quick 1)")
    ap.add_argument("--duration", type=float, help="seconds per cell (default 6; quick 3)")
    ap.add_argument("--concurrency", default="1,4,16,32", help="comma-separated connections / requests in flight")
    ap.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS,
                    help="batching window of both engines (default: the engines' own)")
    ap.add_argument("--perf-analyzer", default=shutil.which("perf_analyzer"), help="perf_analyzer binary")
    ap.add_argument("--perf-analyzer-version", default="version not given",
                    help="recorded with the results, e.g. 'from tritonclient 2.35.0's wheel'")
    ap.add_argument("--ids", type=int, default=MAX_LEN, help="raw ids in the one history of each request")
    ap.add_argument("--steps", type=int, default=STEPS,
                    help="DDIM steps of the served graph (2: what `genattn demo` exports)")
    ap.add_argument("--triton-queue-policy", action="store_true",
                    help="Triton only, with Triton's queue policy (max_queue 256, 10 s timeout) as before the fix")
    ap.add_argument("--fastapi-http-ab", action="store_true",
                    help="FastAPI only: uvicorn on uvloop + httptools (what the serve extra installs) against "
                         "asyncio + h11 (uvicorn without them), interleaved")
    ap.add_argument("--background", default="",
                    help="what else ran on the machine meanwhile, recorded with the results "
                         "(e.g. 'two training jobs, one thread each')")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    a = ap.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("serving_engines: wrk is not installed (apt-get install wrk)")
    rounds, duration = a.rounds or (1 if a.quick else 2), a.duration or (3.0 if a.quick else 6.0)
    conc = [int(x) for x in a.concurrency.split(",")]
    bundle = _bundle(KIND, a.steps, MAX_LEN, N_ITEMS)
    hist = _history(a.ids)
    bodies = {"fastapi": {"history": hist, "k": K},
              "triton": {"inputs": [{"name": "history", "shape": [1, a.ids], "datatype": "INT64", "data": hist}],
                         "outputs": [{"name": "items"}, {"name": "scores"}], "parameters": {"k": K}}}
    cells: dict[tuple, list] = {}
    load0, t0 = os.getloadavg()[0], time.time()
    with tempfile.TemporaryDirectory(prefix="serving-engines-") as tmp:
        for r in range(rounds):
            if a.fastapi_http_ab:
                variants = [("fastapi", UVICORN_FAST), ("fastapi", UVICORN_PLAIN)]
            elif a.triton_queue_policy:
                variants = [("triton", None)]
            else:
                variants = [("fastapi", None), ("triton", None)]
            for engine, impl in variants if r % 2 == 0 else variants[::-1]:
                srv = Server(engine, bundle, 1, a.max_wait_ms, open_statistics=bool(a.perf_analyzer),
                             queue_policy=a.triton_queue_policy, uvicorn_impl=impl)
                label = engine if impl is None else f"{engine} ({'+'.join(impl)})"
                try:
                    path = "/recommend" if engine == "fastapi" else "/v2/models/genattn/infer"
                    plan = [("http", "wrk")] + ([("http", "perf_analyzer"), ("grpc", "perf_analyzer")]
                                                if engine == "triton" and a.perf_analyzer else [])
                    for c in conc:
                        for proto, client in plan:
                            if client == "wrk":
                                res = run_wrk(f"http://127.0.0.1:{srv.http_port}{path}", bodies[engine], c,
                                              duration, Path(tmp))
                            else:
                                port = srv.grpc_port if proto == "grpc" else srv.http_port
                                try:
                                    res = run_perf_analyzer(a.perf_analyzer, f"127.0.0.1:{port}", proto, c,
                                                            duration, Path(tmp), hist)
                                except RuntimeError as e:  # a cell lost, not the run
                                    print(f"round {r + 1} {engine} {proto} c={c}: {e}", flush=True)
                                    continue
                            cells.setdefault((label, proto, client, c), []).append(res)
                            print(f"round {r + 1}/{rounds} {label:7s} {proto:4s} {client:13s} c={c:<3d} "
                                  f"{res['req_per_s']:7.0f} req/s  p50 {res['p50_ms']:6.1f} ms  "
                                  f"p99 {res['p99_ms']:6.1f} ms  errors {res['errors']}", flush=True)
                finally:
                    srv.stop()
    rows = [{"engine": e, "protocol": p, "client": cl, "concurrency": c, **_merge(v)}
            for (e, p, cl, c), v in sorted(cells.items(), key=lambda kv: (kv[0][3], kv[0][0], kv[0][2], kv[0][1]))]
    machine = machine_info()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    command = "python -m benchmarks.serving_engines" + (" --quick" if a.quick else "") + \
        (f" --rounds {a.rounds}" if a.rounds else "") + (f" --duration {a.duration:g}" if a.duration else "") + \
        ("" if a.concurrency == "1,4,16,32" else f" --concurrency {a.concurrency}") + \
        (" --triton-queue-policy" if a.triton_queue_policy else "") + ("" if a.ids == MAX_LEN else f" --ids {a.ids}") + \
        ("" if a.steps == STEPS else f" --steps {a.steps}") + (" --fastapi-http-ab" if a.fastapi_http_ab else "") + (f" --background {a.background!r}" if a.background else "")
    doc = {
        "setup": f"{KIND} bundle, {a.steps} DDIM steps, max_len {MAX_LEN}, {N_ITEMS} items (random weights, the "
                 f"MovieLens-100K catalogue size); one user of {a.ids} raw ids per request, k = {K}; both engines "
                 f"ONNX Runtime CPU, 1 intra-op thread, batching window {a.max_wait_ms:g} ms (FastAPI micro-batcher "
                 "<= 64 rows; Triton dynamic batcher <= 256 rows, 1 model instance, "
                 + ("queue policy: max_queue 256, 10 s timeout)" if a.triton_queue_policy else "no queue policy)"),
        "clients": f"{wrk_version} (-t1, one connection per concurrency unit, keep-alive, JSON); perf_analyzer "
                   f"perf_analyzer ({a.perf_analyzer_version}; concurrency mode, "
                   "3 windows per cell, binary tensor data over HTTP and gRPC); each client its own process on the same cores",
        "conditions": f"{machine['cores']} cores shared by client and server"
                      + (f", and {a.background}" if a.background else "")
                      + f"; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after",
        "machine": f"{machine['cpu']}, {machine['cores']} cores", "machine_info": machine, "commit": git_commit(),
        "rounds": rounds, "duration_s_per_cell": duration, "rows": rows, "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
    }
    if a.fastapi_http_ab:
        by = {(r["engine"], r["concurrency"]): r for r in rows}
        fast, plain = (f"fastapi ({'+'.join(i)})" for i in (UVICORN_FAST, UVICORN_PLAIN))
        doc["notes"] = "req/s of uvloop+httptools over asyncio+h11, same rounds: " + ", ".join(
            f"{by[fast, c]['req_per_s'] / by[plain, c]['req_per_s']:.2f}x at {c}" for c in conc
            if (fast, c) in by and (plain, c) in by)
    path = a.out / "serving_engines.json"
    section = ("triton_queue_policy" if a.triton_queue_policy else "fastapi_http_impl" if a.fastapi_http_ab
               else "engines") + \
        ("" if a.ids == MAX_LEN else f"_{a.ids}_ids") + ("" if a.steps == STEPS else f"_{a.steps}_steps")
    update_results(path, lambda d: d.__setitem__(section, doc), render)
    print(f"-> {repo_path(path)}")
    if not (a.fastapi_http_ab or a.triton_queue_policy):
        print(f"-> {repo_path(write_section('triton', triton_summary(doc, section)))}")


def triton_summary(doc: dict, section: str) -> dict:
    """serving_scale.json's `triton` section: each Triton cell (protocol, client, concurrency) beside
    the FastAPI engine's wrk cell at the same concurrency, and the engine target per HTTP cell at 16
    and 32 connections (req/s at least FastAPI's, p99 < 50 ms, no errors)."""
    fast = {r["concurrency"]: r for r in doc["rows"] if r["engine"] == "fastapi" and r["client"] == "wrk"}
    rows = []
    for r in doc["rows"]:
        if r["engine"] != "triton":
            continue
        f = fast.get(r["concurrency"], {})
        row = {"protocol": r["protocol"], "client": r["client"], "concurrency": r["concurrency"],
               "req_per_s": round(r["req_per_s"], 1), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
               "errors": r["errors"], "fastapi_req_per_s": round(f["req_per_s"], 1) if f else None,
               "fastapi_p50_ms": f.get("p50_ms"), "fastapi_p99_ms": f.get("p99_ms")}
        if r["protocol"] == "http" and r["concurrency"] in (16, 32) and f:
            row["target_met"] = bool(r["req_per_s"] >= f["req_per_s"] and r["p99_ms"] < 50 and r["errors"] == 0)
        rows.append(row)
    return {"source": f"benchmarks/results/serving_engines.json, section {section}", "setup": doc["setup"],
            "clients": doc["clients"], "conditions": doc["conditions"], "machine": doc["machine"],
            "commit": doc["commit"], "date": doc["date"], "command": doc["command"],
            "target": "HTTP at 16 and 32 connections: Triton req/s >= the FastAPI engine's in the same run, "
                      "p99 < 50 ms, zero errors", "rows": rows}


if __name__ == "__main__":
    main()
