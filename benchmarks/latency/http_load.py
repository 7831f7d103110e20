"""HTTP load: a real `python -m genattn_runtime.service` process on loopback under concurrent
httpx clients (http_run), and the pieces it is built from (_http_load, _metric, ...)."""
from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..machine import repo_path
from .cells import summarize
from .settings import HttpCfg, Settings, Skip


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, interval_s: float = 0.05) -> str | None:
    """Poll `url` until it answers 200: None once it does, else why not (the server process
    exited, or the time ran out). The caller decides what a failure means."""
    import httpx

    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        if time.monotonic() - t0 > timeout_s:
            return f"was not ready in {timeout_s:.0f} s"
        time.sleep(interval_s)


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
        why = wait_ready(f"{base}/healthz", proc, timeout_s=60)
        if why:
            raise Skip(f"the service {why}" + (f": {proc.stdout.read()[-500:]}" if proc.poll() is not None else ""))
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
