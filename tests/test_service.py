"""The HTTP service: a real uvicorn process under concurrent load, and every bad-request path."""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from runtime_fixtures import bundle, bundle_root, ids, rec  # noqa: F401 (fixtures)

from genattn_runtime import Recommender
from genattn_runtime.service import Metrics, MicroBatcher, create_app

pytestmark = pytest.mark.slow

N_REQUESTS, CONCURRENCY = 2000, 32


@pytest.fixture(scope="module")
def client(rec):
    with TestClient(create_app(rec, max_batch=16, max_wait_ms=1, max_body_bytes=1 << 20)) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


# ---------------------------------------------------------------- live server under load

def test_live_server_concurrent_load(bundle_root, rec, ids):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genattn_runtime.service", str(bundle(bundle_root, "softmax")),
                             "--host", "127.0.0.1", "--port", str(port), "--max-batch", "64", "--max-wait-ms", "2",
                             "--threads", "1", "--backend", "cpu", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not become healthy in 30 s"
            time.sleep(0.1)

        # A kept-alive connection idle longer than httpx's pool expiry (5 s, uvicorn's default keep-alive
        # before) must still be open: a server that closes idle connections as soon as clients may reuse
        # them drops requests under load (ReadError). Raw http.client: it never reconnects on its own.
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/healthz")
        r = idle.getresponse()
        assert r.status == 200 and r.read()
        idle_since = time.monotonic()

        rng = np.random.default_rng(0)
        hists = [[ids[j] for j in rng.integers(0, len(ids), size=int(rng.integers(0, 20)))] for _ in range(100)]
        hists[0] = ["not-an-item", ids[1]]
        expected = [rec.recommend(h, k=10) for h in hists]
        results: list = [None] * N_REQUESTS

        async def load() -> None:
            limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
                async def worker(w: int) -> None:
                    for n in range(w, N_REQUESTS, CONCURRENCY):
                        r = await c.post("/recommend", json={"history": hists[n % len(hists)], "k": 10})
                        results[n] = (r.status_code, r.json())

                await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))

        t0 = time.perf_counter()
        asyncio.run(load())
        elapsed = time.perf_counter() - t0
        failures = [(n, s, b) for n, (s, b) in enumerate(results) if s != 200]
        assert not failures, failures[:3]
        for n, (_, body) in enumerate(results):
            want = expected[n % len(hists)]
            assert body["items"] == want.items, n
            np.testing.assert_allclose(body["scores"], want.scores, rtol=1e-5, atol=1e-6)
            assert body["fallback"] == want.fallback and body["unknown_items"] == want.unknown_items
        assert results[0][1]["unknown_items"] == ["not-an-item"]

        time.sleep(max(0.0, idle_since + 5.5 - time.monotonic()))
        idle.request("POST", "/recommend", body=json.dumps({"history": hists[1], "k": 10}),
                     headers={"content-type": "application/json"})
        r = idle.getresponse()
        assert r.status == 200 and json.loads(r.read())["items"] == expected[1].items
        idle.close()

        metrics = httpx.get(f"{base}/metrics").text
        n_batches = _metric(metrics, "genattn_batch_size_count")
        single_row = _metric(metrics, 'genattn_batch_size_bucket{le="1.0"}')
        assert n_batches - single_row > 0, "no micro-batch grouped more than one request"
        assert _metric(metrics, 'genattn_http_requests_total{endpoint="/recommend",status="200"}') == N_REQUESTS + 1
        print(f"\n{N_REQUESTS} requests in {elapsed:.2f} s ({N_REQUESTS / elapsed:.0f} req/s), "
              f"{n_batches:.0f} session runs, mean batch {_metric(metrics, 'genattn_batch_size_sum') / n_batches:.1f}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # uvicorn exits 0, or re-raises the signal it handled gracefully (recent versions)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "queue drained" in out and "Application shutdown complete" in out


def test_serve_keeps_idle_connections_longer_than_client_pools(rec, monkeypatch):
    import uvicorn

    from genattn_runtime import service

    got = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: got.update(kw))
    service.serve(rec, port=0)
    # longer than httpx's (5 s), aiohttp's (15 s), nginx's and AWS ALB's (60 s) idle expiry
    assert got["timeout_keep_alive"] == service.KEEP_ALIVE_S > 60
    service.serve(rec, port=0, keep_alive_s=2.5)
    assert got["timeout_keep_alive"] == 2.5


def test_shutdown_drains_queue(rec, ids):
    async def scenario():
        b = MicroBatcher(rec, max_batch=4, max_wait_ms=50, metrics=Metrics())
        await b.start()
        preps = [rec.prepare(ids[i:i + 3], k=5) for i in range(10)]
        tasks = [asyncio.create_task(b.submit(p)) for p in preps]
        await asyncio.sleep(0)  # every request is queued
        await b.stop()  # must answer all ten before returning
        assert all(t.done() for t in tasks)
        with pytest.raises(Exception, match="shutting down"):
            await b.submit(preps[0])
        return [t.result() for t in tasks]

    got = asyncio.run(scenario())
    assert got == [rec.recommend(ids[i:i + 3], k=5) for i in range(10)]


# ---------------------------------------------------------------- endpoints and bad requests

def test_single_and_batch(client, rec, ids):
    r = client.post("/recommend", json={"history": ids[:4], "k": 5})
    assert r.status_code == 200
    assert r.json() == rec.recommend(ids[:4], k=5).to_dict()
    r = client.post("/recommend", json={"histories": [ids[:4], [], ids[5:7]], "k": 3, "exclude_seen": False})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["fallback"] for x in res] == [None, "popularity", None]
    assert res[2] == rec.recommend(ids[5:7], k=3, exclude_seen=False).to_dict()
    assert client.post("/recommend", json={"histories": []}).json() == {"results": []}
    r = client.post("/recommend", json={"history": [str(ids[0]), "ghost"], "k": 2})
    assert r.status_code == 200 and r.json()["unknown_items"] == ["ghost"]


@pytest.mark.parametrize("body, status, match", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty request body"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    (b'{"history": [' + b"9" * 5000 + b']}', 400, "not valid JSON"),
    (b'{"history": [1, NaN]}', 422, "item 1 is a float"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"k": 3}', 422, "exactly one of 'history'"),
    (b'{"history": [1], "histories": [[1]]}', 422, "exactly one of"),
    (b'{"hisotry": [1]}', 422, r"unknown field\(s\) \['hisotry'\]"),
    (b'{"history": "1,2,3"}', 422, "string"),
    (b'{"history": null}', 422, "got None"),
    (b'{"history": [1, 2.5]}', 422, "item 1 is a float"),
    (b'{"history": [1, {"a": 1}]}', 422, "item 1 is a dict"),
    (b'{"history": [[1], [2]]}', 422, "send a batch as 'histories'"),
    (b'{"histories": [[1], 2]}', 422, r"histories\[1\] must be a list"),
    (b'{"histories": {"a": 1}}', 422, "must be a list of lists"),
    (b'{"history": [1], "k": 0}', 422, r"k must be in 1\.\.20"),
    (b'{"history": [1], "k": 1000}', 422, r"k must be in 1\.\.20"),
    (b'{"history": [1], "k": "5"}', 422, "k must be a positive integer"),
    (b'{"history": [1], "k": 2.0}', 422, "k must be a positive integer"),
    (b'{"histories": [], "k": -1}', 422, "k must be in"),
    (b'{"history": [1], "seed": -4}', 422, "seed must be"),
    (b'{"history": [1], "exclude_seen": "no"}', 422, "exclude_seen must be"),
])
def test_bad_requests(client, body, status, match):
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert re.search(match, r.json()["detail"]), r.json()


def test_body_size_limit(rec):
    with TestClient(create_app(rec, max_body_bytes=2048)) as client:
        big = json.dumps({"history": list(range(2000))}).encode()
        r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit of 2048" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit must hold while streaming
            for _ in range(10):
                yield b" " * 500

        r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert client.post("/recommend", json={"history": [1, 2]}).status_code == 200


def test_unknown_items_error_policy(bundle_root, ids):
    strict = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", unknown_items="error", threads=1)
    with TestClient(create_app(strict)) as c:
        r = c.post("/recommend", json={"history": [ids[0], "ghost", 10**12]})
        assert r.status_code == 400
        body = r.json()
        assert body["error"] == "unknown_items" and body["unknown_items"] == ["ghost", 10**12]
        assert "'ghost'" in body["detail"]
        r = c.post("/recommend", json={"histories": [[ids[0]], ["ghost"]]})
        assert r.status_code == 400 and "histories [1]" in r.json()["detail"]


def test_diversity_per_request(bundle_root, ids, client):
    noisy = Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    with TestClient(create_app(noisy)) as c:
        body = {"history": ids[:6], "k": 5, "seed": 4}
        base = c.post("/recommend", json=body).json()
        assert c.post("/recommend", json={**body, "diversity": 1.0}).json() == base
        assert c.post("/recommend", json={**body, "diversity": 3.0}).json()["scores"] != base["scores"]
        direct = noisy.recommend(ids[:6], k=5, seed=4, diversity=0)
        assert c.post("/recommend", json={**body, "diversity": 0}).json()["items"] == direct.items
        r = c.post("/recommend", json={**body, "diversity": -1})
        assert r.status_code == 422 and "diversity" in r.json()["detail"]
    # A deterministic bundle refuses the knob instead of silently ignoring it.
    r = client.post("/recommend", json={"history": ids[:6], "diversity": 0.5})
    assert r.status_code == 422 and "deterministic" in r.json()["detail"]


def test_health_metadata_metrics(client):
    assert client.get("/healthz").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["attention"] == "softmax" and meta["k"] == 20 and meta["max_len"] == 12
    assert meta["n_items"] == 60 and meta["backend"] == "cpu" and meta["max_batch"] == 16
    assert "sampler" in meta and meta["deterministic"] is True
    client.post("/recommend", content=b"{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert 'genattn_http_requests_total{endpoint="/recommend",status="400"}' in text
    assert "genattn_http_request_seconds_bucket" in text and "genattn_batch_size_bucket" in text
    assert client.get("/nope").status_code == 404
    assert 'endpoint="other",status="404"' in client.get("/metrics").text


_LEAN_CASES = [b'{"history": [IDS], "k": 5}', b'{"histories": [[IDS], [IDS]], "k": 3, "exclude_seen": false}',
               b'{"histories": []}', b"{not json", b"", b'{"history": [1], "k": 0}', b'{"hisotry": [1]}',
               b'{"history": ["no-such-item"]}', b'{"histories": [[1], 2]}', b"[" * 5000 + b"]" * 5000]


def test_lean_route_answers_like_the_fastapi_route(rec, ids):
    """POST /recommend skips FastAPI's stack (app.fast); with that path off, the FastAPI route
    answers. Both must give the same status, body and content type for good and bad requests."""
    fast, plain = create_app(rec, max_batch=8, max_wait_ms=1), create_app(rec, max_batch=8, max_wait_ms=1)
    taken = []
    inner = fast.fast

    async def counting(scope, receive, send):
        taken.append(scope["path"])
        await inner(scope, receive, send)

    fast.fast, plain.fast = counting, None
    hist = ",".join(json.dumps(i) for i in ids[:4]).encode()
    statuses: dict[int, int] = {}
    with TestClient(fast) as a, TestClient(plain) as b:
        for body in _LEAN_CASES:
            body = body.replace(b"IDS", hist)
            ra, rb = (c.post("/recommend", content=body, headers={"content-type": "application/json"})
                      for c in (a, b))
            assert (ra.status_code, ra.json()) == (rb.status_code, rb.json()), body[:60]
            assert ra.headers["content-type"] == rb.headers["content-type"] == "application/json"
            assert int(ra.headers["content-length"]) == len(ra.content)
            statuses[ra.status_code] = statuses.get(ra.status_code, 0) + 1
        assert len(taken) == len(_LEAN_CASES)
        # Everything else still goes through FastAPI: other methods, the schema, metrics of both paths.
        assert a.get("/recommend").status_code == 405 and len(taken) == len(_LEAN_CASES)
        assert "/recommend" in a.get("/openapi.json").json()["paths"]
        text = a.get("/metrics").text
        assert statuses.keys() >= {200, 400, 422}
        for status, n in statuses.items():
            assert _metric(text, f'genattn_http_requests_total{{endpoint="/recommend",status="{status}"}}') == n


def test_lean_route_under_a_mount(rec, ids):
    """Mounted under a prefix, the app still answers POST {prefix}/recommend, by the lean path."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_app(rec, max_batch=8, max_wait_ms=1)
    parent = Starlette(routes=[Mount("/api", app=app)], lifespan=lambda _: app.router.lifespan_context(app))
    with TestClient(parent) as c:
        r = c.post("/api/recommend", json={"history": ids[:3], "k": 4})
        assert r.status_code == 200 and len(r.json()["items"]) == 4
        assert c.post("/recommend", json={"history": ids[:3]}).status_code == 404


# ---------------------------------------------------------------- limits and failure isolation

class FakeRec:
    """The real Recommender with `run_prepared` replaced (a slow, gated or failing backend)."""

    def __init__(self, rec, run):
        self._rec, self._run, self.calls = rec, run, []

    def __getattr__(self, name):
        return getattr(self._rec, name)

    def run_prepared(self, preps):
        self.calls.append(len(preps))
        return self._run(self._rec, preps)


@contextlib.asynccontextmanager
async def serving(app):
    """The app with its lifespan (micro-batcher) running, and an in-process async client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            yield c


async def _until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.005)


def gated(started: threading.Event, release: threading.Event):
    """A backend whose runs wait for `release` (signalling `started`): deterministic queueing."""
    def run(rec, preps):
        started.set()
        assert release.wait(30)
        return rec.run_prepared(preps)
    return run


def test_user_cap(rec, ids):
    with TestClient(create_app(rec, max_users=3)) as c:
        r = c.post("/recommend", json={"histories": [ids[:2]] * 4, "k": 2})
        assert r.status_code == 413
        body = r.json()
        assert body["error"] == "too_many_users" and body["max_users"] == 3
        assert "limit is 3 per request (max_users)" in body["detail"]
        r = c.post("/recommend", json={"histories": [ids[:2]] * 3, "k": 2})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert c.get("/metadata").json()["max_users"] == 3


def test_queue_full_503(rec, ids):
    started, release = threading.Event(), threading.Event()
    fake = FakeRec(rec, gated(started, release))
    app = create_app(fake, max_batch=1, max_wait_ms=0, max_queue=1)

    async def scenario():
        async with serving(app) as c:
            try:
                # 1st runs (blocked in the backend), 2nd waits in the queue, 3rd finds it full.
                t1 = asyncio.create_task(c.post("/recommend", json={"history": ids[:2]}))
                await _until(started.is_set)
                t2 = asyncio.create_task(c.post("/recommend", json={"history": ids[2:4]}))
                await _until(lambda: app.state.batcher.waiting == 1)
                r3 = await c.post("/recommend", json={"history": ids[4:6]})
            finally:
                release.set()
            return r3, await t1, await t2

    r3, r1, r2 = asyncio.run(scenario())
    assert r3.status_code == 503 and r3.headers["retry-after"] == "1"
    assert r3.json()["error"] == "queue_full" and "max_queue" in r3.json()["detail"]
    assert r1.status_code == r2.status_code == 200
    assert r2.json() == rec.recommend(ids[2:4]).to_dict()


def test_deadline_504(rec, ids):
    started, release = threading.Event(), threading.Event()
    fake = FakeRec(rec, gated(started, release))
    app = create_app(fake, max_batch=1, max_wait_ms=0, request_timeout_s=0.3)

    async def scenario():
        async with serving(app) as c:
            try:
                # the 1st blocks the backend past its deadline; the 2nd expires in the queue
                t1 = asyncio.create_task(c.post("/recommend", json={"history": ids[:2]}))
                await _until(started.is_set)
                r2 = await c.post("/recommend", json={"history": ids[2:4]})
                r1 = await t1
            finally:
                release.set()
            r3 = await c.post("/recommend", json={"history": ids[:3], "k": 4})
            return r1, r2, r3

    r1, r2, r3 = asyncio.run(scenario())
    for r in (r1, r2):
        assert r.status_code == 504
        assert r.json()["error"] == "deadline_exceeded" and "0.3 s" in r.json()["detail"]
    assert r3.status_code == 200 and r3.json() == rec.recommend(ids[:3], k=4).to_dict()
    assert fake.calls == [1, 1]  # the expired 2nd request was dropped, never run


def test_failed_batch_isolates_requests(rec, ids):
    """One request that breaks the backend fails alone; those grouped with it are retried and answered."""
    poison = ids[40]
    poison_index = rec.items.index[str(poison)]
    started, release = threading.Event(), threading.Event()

    def run(r, preps):
        if not started.is_set():  # the first run blocks so the others queue up behind it
            return gated(started, release)(r, preps)
        if any((p.seq == poison_index).any() for p in preps):
            raise RuntimeError("injected backend failure")
        return r.run_prepared(preps)

    fake = FakeRec(rec, run)
    app = create_app(fake, max_batch=64, max_wait_ms=0)
    hists = [ids[i:i + 3] for i in range(0, 15, 3)] + [[ids[1], poison]]  # the last one is the poison

    async def scenario():
        async with serving(app) as c:
            try:
                first = asyncio.create_task(c.post("/recommend", json={"history": ids[20:22]}))
                await _until(started.is_set)
                tasks = [asyncio.create_task(c.post("/recommend", json={"history": h, "k": 5})) for h in hists]
                await _until(lambda: app.state.batcher.waiting == len(hists))
            finally:
                release.set()
            return await first, await asyncio.gather(*tasks), (await c.get("/metrics")).text

    first, rs, metrics = asyncio.run(scenario())
    assert first.status_code == 200
    assert fake.calls == [1, len(hists)] + [1] * len(hists)  # grouped run failed, then one by one
    for h, r in zip(hists[:-1], rs[:-1]):
        assert r.status_code == 200 and r.json() == rec.recommend(h, k=5).to_dict()
    assert rs[-1].status_code == 500
    assert rs[-1].json()["error"] == "inference_failed"
    assert _metric(metrics, 'genattn_inference_failures_total{scope="batch"}') == 1
    assert _metric(metrics, 'genattn_inference_failures_total{scope="request"}') == 1


def test_unexpected_errors_are_json_500(rec, ids):
    class Broken(FakeRec):
        def prepare(self, *a, **kw):
            raise ZeroDivisionError("boom")

    with TestClient(create_app(Broken(rec, None))) as c:
        r = c.post("/recommend", json={"history": ids[:2]})
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "internal_error" and "boom" not in r.text
        assert 'status="500"' in c.get("/metrics").text


def test_large_request_runs_alone(rec, ids):
    """A request with more rows than max_batch is never grouped; no batch overflows max_batch."""
    seen: list[list[int]] = []

    def run(r, preps):
        seen.append([p.n_model_rows for p in preps])
        return r.run_prepared(preps)

    async def scenario():
        b = MicroBatcher(FakeRec(rec, run), max_batch=4, max_wait_ms=200, metrics=Metrics())
        await b.start()
        sizes = [1, 10, 3, 2, 1, 4, 1]
        preps = [rec.prepare([ids[i:i + 2] for i in range(n)], k=3) for n in sizes]
        got = await asyncio.gather(*(b.submit(p) for p in preps))
        await b.stop()
        return preps, got

    preps, got = asyncio.run(scenario())
    assert [10] in seen and [4] in seen
    for batch in seen:
        assert len(batch) == 1 or sum(batch) <= 4, seen
    assert sorted(n for batch in seen for n in batch) == sorted(p.n_model_rows for p in preps)
    assert got == [rec.run_prepared([p])[0] for p in preps]


def test_stalled_body_gets_408_and_connection_closed(rec):
    import uvicorn

    port = _free_port()
    app = create_app(rec, body_timeout_s=0.5)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and th.is_alive(), "server did not start"
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"history\": [1, ")  # 15 of 100 bytes, then silence
            t0 = time.monotonic()
            data = b""
            while True:  # read until the server closes the connection
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            elapsed = time.monotonic() - t0
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), data
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"] == "request_timeout"
        assert 0.4 < elapsed < 8, elapsed  # the 0.5 s body timeout, not the socket's 10 s
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # still serving
            assert c.get("/healthz").status_code == 200
    finally:
        server.should_exit = True
        th.join(30)


def test_limit_defaults_match_cli():
    import inspect

    from genattn_runtime.cli import serve_cmd

    defaults = {p.name: p.default for p in serve_cmd.params}
    sig = inspect.signature(create_app).parameters
    for name in ("max_batch", "max_wait_ms", "max_body_bytes", "max_users", "max_queue", "request_timeout_s",
                 "body_timeout_s"):
        assert defaults[name] == sig[name].default, name
