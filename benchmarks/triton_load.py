"""Triton engine vs FastAPI engine under the same HTTP load.

    python -m benchmarks.triton_load            # 3 interleaved rounds of 10 s per engine
    python -m benchmarks.triton_load --quick    # 1 round of 3 s (smoke run)

One bundle (the latency suite's default diffusion model: 8 DDIM steps, max_len 50, 1,682
items, random weights, exported once into its cache) is served in turn by
`genattn serve --engine fastapi` and `--engine triton` (each its own process, ONNX
Runtime CPU with one intra-op thread, the same batching window). A separate client
process drives each with the same code: `concurrency` aiohttp workers on keep-alive
connections, each sending one request at a time (one user, max_len raw ids, k = 10) and
parsing the JSON answer; FastAPI gets `POST /recommend`, Triton its KServe v2 JSON
`POST /v2/models/genattn/infer` (asking for the items and scores outputs). A Triton gRPC row (tritonclient.grpc.aio, same
concurrency) is added for reference. Rounds alternate the engines so that load from
other jobs on the machine falls on both.

The Triton server runs from the engine's own venv (`make triton-env`; another interpreter with
GENATTN_TRITON_PYTHON), or from this interpreter when that venv does not exist.

Results: section "triton" of benchmarks/results/serving_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from genattn_runtime.service import MAX_WAIT_MS

from .latency.http_load import _free_port, wait_ready
from .machine import REPO, machine_info, repo_path

CLIENT_TIMEOUT_S = 30.0
# The Triton engine has its own venv (`make triton-env`: pytriton pins numpy<2); its server runs from there.
TRITON_PYTHON = os.environ.get("GENATTN_TRITON_PYTHON") or str(REPO / ".venv-triton" / "bin" / "python")


# ---------------------------------------------------------------- the client (its own process)

def _triton_body(history: list[int], k: int) -> dict:
    # items and scores only: what the FastAPI answer carries besides flags
    return {"inputs": [{"name": "history", "shape": [1, len(history)], "datatype": "INT64", "data": history}],
            "outputs": [{"name": "items"}, {"name": "scores"}], "parameters": {"k": k}}


async def _closed_loop(call, concurrency: int, warmup_s: float, duration_s: float) -> dict:
    """`concurrency` workers, each sending its next request when the last one answered;
    `call(i)` sends request i and returns None or why it failed. Latencies and errors
    count only after the warm-up."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    t_measure = time.perf_counter() + warmup_s
    t_end = t_measure + duration_s

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < t_end:
            a = time.perf_counter()
            why = await call(i)
            b = time.perf_counter()
            i += concurrency
            if a >= t_measure:
                if why is None:
                    lat.append(b - a)
                else:
                    errors[why] = errors.get(why, 0) + 1
            if why is not None:
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"latencies_s": lat, "errors": errors, "window_s": duration_s}


async def _load_http(url: str, bodies: list[dict], concurrency: int, warmup_s: float, duration_s: float,
                     check) -> dict:
    import aiohttp  # lighter per request than httpx: on 2 shared cores the client must not be the limit

    payloads = [json.dumps(b).encode() for b in bodies]
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Content-Type": "application/json"}) as c:
        async def call(i: int) -> str | None:
            try:
                async with c.post(url, data=payloads[i % len(payloads)]) as r:
                    body = await r.read()
                if r.status != 200:
                    return f"HTTP {r.status}"
                return None if check(json.loads(body)) else "bad answer"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                return type(e).__name__

        return await _closed_loop(call, concurrency, warmup_s, duration_s)


async def _load_grpc(url: str, histories: list[list[int]], k: int, concurrency: int, warmup_s: float,
                     duration_s: float) -> dict:
    import tritonclient.grpc.aio as grpcclient

    inputs = []
    for h in histories:
        t = grpcclient.InferInput("history", [1, len(h)], "INT64")
        t.set_data_from_numpy(np.asarray([h], dtype=np.int64))
        inputs.append(t)
    c = grpcclient.InferenceServerClient(url)
    try:
        async def call(i: int) -> str | None:
            try:
                r = await c.infer("genattn", [inputs[i % len(inputs)]], parameters={"k": k},
                                  client_timeout=CLIENT_TIMEOUT_S)
                return None if r.as_numpy("items").shape == (1, k) else "bad answer"
            except Exception as e:  # noqa: BLE001 - counted, never fatal
                return type(e).__name__

        return await _closed_loop(call, concurrency, warmup_s, duration_s)
    finally:
        await c.close()


def client_main(spec: dict) -> dict:
    """One load run against one server (run in a separate process: `--client JSON`)."""
    k, hists = spec["k"], spec["histories"]
    if spec["protocol"] == "grpc":
        res = asyncio.run(_load_grpc(spec["url"], hists, k, spec["concurrency"], spec["warmup_s"],
                                     spec["duration_s"]))
    elif spec["engine"] == "triton":
        def ok(doc):
            return any(o["name"] == "items" and len(o["data"]) == k for o in doc.get("outputs", []))
        res = asyncio.run(_load_http(f"http://{spec['url']}/v2/models/genattn/infer",
                                     [_triton_body(h, k) for h in hists], spec["concurrency"], spec["warmup_s"],
                                     spec["duration_s"], ok))
    else:
        res = asyncio.run(_load_http(f"http://{spec['url']}/recommend", [{"history": h, "k": k} for h in hists],
                                     spec["concurrency"], spec["warmup_s"], spec["duration_s"],
                                     lambda doc: len(doc.get("items", ())) == k))
    ms = np.asarray(res["latencies_s"]) * 1e3
    out = {"requests": int(ms.size), "errors": int(sum(res["errors"].values())), "error_kinds": res["errors"],
           "req_per_s": ms.size / res["window_s"]}
    if ms.size:
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        out.update(p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), max_ms=float(ms.max()),
                   mean_ms=float(ms.mean()))
    return out


# ---------------------------------------------------------------- servers and the run

_ENGINE_LAUNCH = """import json, sys
from genattn_runtime.triton_engine import EngineConfig, TritonEngine
a = json.loads(sys.argv[1])
cfg = EngineConfig(bundle=a["bundle"], backend="cpu", threads=a["threads"], max_wait_ms=a["max_wait_ms"],
                   queue_policy=a["queue_policy"])
h, g, m = a["ports"]
TritonEngine(cfg, http_port=h, grpc_port=g, metrics_port=m, open_statistics=a["open_statistics"]).start().wait()
"""


# The FastAPI engine as `genattn serve` runs it, but on a chosen uvicorn event loop and HTTP parser.
_FASTAPI_LAUNCH = """import json, sys, uvicorn
from genattn_runtime import Recommender
from genattn_runtime.service import KEEP_ALIVE_S, create_app
a = json.loads(sys.argv[1])
rec = Recommender.load(a["bundle"], backend="cpu", threads=a["threads"])
uvicorn.run(create_app(rec, max_wait_ms=a["max_wait_ms"]), host="127.0.0.1", port=a["port"], log_level="warning",
            access_log=False, loop=a["loop"], http=a["http"], timeout_keep_alive=KEEP_ALIVE_S)
"""


class Server:
    """`python -m genattn_runtime.cli serve BUNDLE --engine E` on free loopback ports."""

    def __init__(self, engine: str, bundle: Path, threads: int, max_wait_ms: float, open_statistics: bool = False,
                 queue_policy: bool = False, uvicorn_impl: tuple[str, str] | None = None):
        """triton only: open_statistics opens the statistics endpoint (perf_analyzer reads it); queue_policy
        bounds Triton's queue (256 waiting, 10 s) as the engine did before, with its batcher stalls.
        fastapi only: uvicorn_impl (loop, http), e.g. ("asyncio", "h11"), instead of uvicorn's own choice."""
        self.engine = engine
        self.http_port, self.grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
        python = TRITON_PYTHON if engine == "triton" and Path(TRITON_PYTHON).is_file() else sys.executable
        cmd = [python, "-m", "genattn_runtime.cli", "serve", str(bundle), "--engine", engine,
               "--port", str(self.http_port), "--backend", "cpu", "--threads", str(threads),
               "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
        if engine == "triton":
            cmd += ["--grpc-port", str(self.grpc_port), "--metrics-port", str(metrics_port)]
        if engine == "triton" and (open_statistics or queue_policy):
            args = {"bundle": str(bundle), "threads": threads, "max_wait_ms": max_wait_ms, "queue_policy": queue_policy,
                    "ports": [self.http_port, self.grpc_port, metrics_port], "open_statistics": open_statistics}
            cmd = [python, "-c", _ENGINE_LAUNCH, json.dumps(args)]
        if engine == "fastapi" and uvicorn_impl:
            args = {"bundle": str(bundle), "threads": threads, "max_wait_ms": max_wait_ms, "port": self.http_port,
                    "loop": uvicorn_impl[0], "http": uvicorn_impl[1]}
            cmd = [python, "-c", _FASTAPI_LAUNCH, json.dumps(args)]
        self.log = open(f"/tmp/genattn-triton-load-{engine}-{os.getpid()}.log", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        path = "/healthz" if engine == "fastapi" else "/v2/models/genattn/ready"
        why = wait_ready(f"http://127.0.0.1:{self.http_port}{path}", self.proc, timeout_s=180, interval_s=0.1)
        if why:
            if self.proc.poll() is None:
                self.stop()
            raise RuntimeError(f"the {engine} server {why}: {self._tail()}")
        self.startup_s = time.monotonic() - t0

    def _tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-1500:]

    def stop(self) -> int | None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        self.log.close()
        os.unlink(self.log.name)
        return rc


def _client(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.triton_load", "--client", json.dumps(spec)],
                         capture_output=True, text=True, cwd=REPO,
                         timeout=spec["warmup_s"] + spec["duration_s"] + 120)
    if out.returncode:
        raise RuntimeError(f"the load client failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bundle(kind: str, steps: int, max_len: int, n_items: int) -> Path:
    from .latency import Bundles, model_key
    from .latency.settings import SuiteCfg

    suite = SuiteCfg()
    b = Bundles(REPO / suite.cache, suite.seed, suite.graph_k)
    try:
        return b.get(model_key(kind, steps, max_len, n_items))
    finally:
        b.close()


def _merge(runs: list[dict]) -> dict:
    """Rounds of one engine: totals, and the median round for latency percentiles."""
    total = sum(r["requests"] for r in runs)
    window = sum(r["window_s"] for r in runs)
    mid = sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2]
    return {"requests": total, "errors": sum(r["errors"] for r in runs), "req_per_s": total / window,
            "req_per_s_rounds": [round(r["req_per_s"], 1) for r in runs],
            **{k: mid.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
            "startup_s": float(np.median([r["startup_s"] for r in runs])),
            "error_kinds": {k: v for r in runs for k, v in r["error_kinds"].items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.triton_load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of 3 s per engine")
    ap.add_argument("--concurrency", type=int, default=16, help="client workers (requests in flight)")
    ap.add_argument("--duration", type=float, help="seconds measured per engine and round (default 10; quick 3)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of each server")
    ap.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS,
                    help="batching window of both engines (default: the engines' own)")
    ap.add_argument("--no-grpc", action="store_true", help="skip the Triton gRPC reference row")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.client:
        print(json.dumps(client_main(json.loads(a.client))))
        return
    from genattn_runtime.triton_engine import TritonEngineError, check_available

    try:
        check_available()
    except TritonEngineError as e:
        sys.exit(f"triton_load: {e}")
    duration = a.duration or (3.0 if a.quick else 10.0)
    rounds = a.rounds or (1 if a.quick else 3)
    kind, steps, max_len, n_items, k = "diffusion", 8, 50, 1682, 10
    bundle = _bundle(kind, steps, max_len, n_items)
    rng = np.random.default_rng(0)
    hists = [rng.integers(1, n_items + 1, max_len).tolist() for _ in range(64)]
    base = {"k": k, "histories": hists, "concurrency": a.concurrency, "warmup_s": 1.0, "duration_s": duration}
    plan = [("fastapi", "http"), ("triton", "http")] + ([] if a.no_grpc else [("triton", "grpc")])
    runs: dict[tuple, list] = {p: [] for p in plan}
    load0 = os.getloadavg()
    t_start = time.time()
    for r in range(rounds):
        for engine in ("fastapi", "triton") if r % 2 == 0 else ("triton", "fastapi"):
            srv = Server(engine, bundle, a.threads, a.max_wait_ms)
            try:
                for eng, proto in plan:
                    if eng != engine:
                        continue
                    url = f"127.0.0.1:{srv.grpc_port if proto == 'grpc' else srv.http_port}"
                    res = _client({**base, "engine": engine, "protocol": proto, "url": url})
                    res.update(startup_s=srv.startup_s, window_s=duration)
                    runs[(engine, proto)].append(res)
                    print(f"round {r + 1}/{rounds} {engine:7s} {proto:4s}: {res['req_per_s']:7.1f} req/s  "
                          f"p50 {res.get('p50_ms', float('nan')):6.2f} ms  p99 {res.get('p99_ms', float('nan')):6.2f} "
                          f"ms  errors {res['errors']}", flush=True)
            finally:
                srv.stop()
    merged = {f"{e}_{p}": _merge(v) for (e, p), v in runs.items()}
    tri, fa = merged["triton_http"], merged["fastapi_http"]
    ratio = tri["req_per_s"] / fa["req_per_s"] if fa["req_per_s"] else None
    command = "python -m benchmarks.triton_load" + (" --quick" if a.quick else "") + \
        ("" if a.concurrency == 16 else f" --concurrency {a.concurrency}")
    machine = machine_info()
    versions = {}
    for pkg in ("nvidia-pytriton", "tritonclient", "fastapi", "uvicorn", "aiohttp"):
        try:
            from importlib import metadata

            versions[pkg] = metadata.version(pkg)
        except Exception:  # noqa: BLE001 - absent packages are just not listed
            pass
    machine["versions"].update(versions)
    rows = [{"engine": e, "protocol": p, "req_per_s": m["req_per_s"], "p50_ms": m["p50_ms"], "p90_ms": m["p90_ms"],
             "p99_ms": m["p99_ms"], "errors": m["errors"], "requests": m["requests"],
             "rounds_req_per_s": " / ".join(str(x) for x in m["req_per_s_rounds"]), "startup_s": m["startup_s"]}
            for (e, p), m in ((k2.rsplit("_", 1), v) for k2, v in merged.items())]
    section = {
        "req_per_s": tri["req_per_s"], "p50_ms": tri["p50_ms"], "p99_ms": tri["p99_ms"], "errors": tri["errors"],
        "fastapi_req_per_s": fa["req_per_s"], "fastapi_p50_ms": fa["p50_ms"], "fastapi_p99_ms": fa["p99_ms"],
        "fastapi_errors": fa["errors"], "triton_vs_fastapi": ratio, "concurrency": a.concurrency,
        "target_met": bool(tri["errors"] == 0 and ratio is not None and ratio >= 1.0),
        "bundle": f"{kind}, {steps} DDIM steps, max_len {max_len}, {n_items} items (random weights): "
                  f"{repo_path(bundle)}",
        "request": f"one user, {max_len} raw ids, k = {k}; JSON over HTTP/1.1 keep-alive, aiohttp client "
                   "(Triton: KServe v2 JSON, outputs items + scores); gRPC row: tritonclient.grpc.aio",
        "servers": f"ONNX Runtime CPU, {a.threads} intra-op thread(s), batching window {a.max_wait_ms:g} ms "
                   "(FastAPI micro-batcher <= 64 rows; Triton dynamic batcher <= 256 rows, 1 model instance)",
        "rounds": rounds, "duration_s_per_round": duration,
        "machine": f"{machine['cpu']}, {machine['cores']} cores (shared with other jobs)",
        "conditions": f"client and server on the same {machine['cores']} cores; load average "
                      f"{load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after; run under nice",
        "machine_info": machine, "rows": rows, "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
    }
    from .serving_scale import write_section

    path = write_section("triton", section, a.out)
    print(f"triton {tri['req_per_s']:.1f} req/s (p99 {tri['p99_ms']:.2f} ms, {tri['errors']} errors) vs fastapi "
          f"{fa['req_per_s']:.1f} req/s (p99 {fa['p99_ms']:.2f} ms) at concurrency {a.concurrency}: "
          f"{ratio:.2f}x -> {repo_path(path)}")


if __name__ == "__main__":
    main()
