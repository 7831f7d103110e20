"""HTTP service: FastAPI app around one Recommender, with a micro-batching queue.

    POST /recommend   {"history": [...], "k": 10, "exclude_seen": true, "seed": null, "diversity": null,
                       "aggregate": null, "times": null}
                      {"histories": [[...], ...], "times": [[...], ...], "k": 10, ...}
    GET  /healthz     {"status": "ok"} (503 while shutting down)
    GET  /metadata    bundle summary, backend and the service's limits
    GET  /metrics     Prometheus text format

Concurrent requests are validated in the event loop, queued, and grouped by one
worker into a single session run (at most `max_batch` rows, waiting at most
`max_wait_ms` after the first; a request larger than `max_batch` runs alone); the run
happens in a worker thread so the loop keeps accepting. On shutdown the queue is
drained before the app exits.

Every answer other than 2xx is a JSON object `{"error": ..., "detail": ...}`. User
input never causes a 500: malformed JSON -> 400, wrong fields / types / k -> 422,
unknown ids under policy "error" -> 400 naming them. The work one request can cause is
bounded: a body over `max_body_bytes` or more than `max_users` histories -> 413, a body
not received within `body_timeout_s` -> 408 (connection closed), a full queue
(`max_queue` requests waiting) -> 503 with Retry-After, no answer within
`request_timeout_s` of queueing -> 504. A backend failure -> 500 for the requests it
concerns only: a failed micro-batch is retried request by request.

Run with `genattn serve BUNDLE` or `python -m genattn_runtime.service BUNDLE`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from .errors import InputError, UnknownItemError
# The limits' defaults live in limits.py (the Triton engine and the CLI share them).
from .limits import (BODY_TIMEOUT_S, KEEP_ALIVE_S, MAX_BATCH, MAX_BODY_BYTES, MAX_QUEUE, MAX_USERS,
                     MAX_WAIT_MS, REQUEST_TIMEOUT_S, RETRY_AFTER_S)
from .recommender import PreparedRequest, Recommender

log = logging.getLogger("genattn_runtime.service")

ENDPOINTS = ("/recommend", "/healthz", "/metadata", "/metrics")
REQUEST_FIELDS = {"history", "histories", "k", "exclude_seen", "seed", "diversity", "aggregate", "times"}
LATENCY_BUCKETS = (.0005, .001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra
        self.headers = headers

    def body(self) -> dict:
        return {"error": self.error, "detail": self.detail, **self.extra}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class Metrics:
    """Prometheus collectors in their own registry (several apps may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genattn_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("genattn_http_request_seconds", "HTTP request latency (server side)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("genattn_batch_size", "Rows per session run of the micro-batcher",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("genattn_batch_requests", "Requests grouped into one session run",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("genattn_queue_wait_seconds", "Time from enqueue to the start of the run",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("genattn_inference_seconds", "Session run + decode time per micro-batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("genattn_queue_depth", "Requests waiting in the micro-batch queue", registry=r)
        self.users = Counter("genattn_recommended_users", "Users answered, by kind", ["kind"], registry=r)
        self.failures = Counter("genattn_inference_failures", "Failed session runs: 'batch' (then retried "
                                "request by request) or 'request' (answered 500)", ["scope"], registry=r)
        self._children: dict[tuple, object] = {}

    def child(self, metric, *labels):
        """metric.labels(*labels), kept: the lookup (a lock and a dict) costs more than the increment."""
        key = (metric, labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def user(self, fallback: str | None) -> None:
        self.child(self.users, fallback or "model").inc()


@dataclass
class _Job:
    prep: PreparedRequest
    fut: asyncio.Future
    t_queued: float
    rows: int  # rows it takes in a batch (a request whose users all fall back still costs a slot)
    waiting: bool = True  # counted in MicroBatcher.waiting until a batch takes it or its deadline passes


class MicroBatcher:
    """asyncio queue + one worker: concurrent requests share one session run.

    At most `max_queue` requests wait at a time. They are counted rather than bounded by
    the asyncio queue, so that a request whose deadline passed frees its place at once
    (its entry stays in the queue until the worker skips it).
    """

    def __init__(self, rec: Recommender, max_batch: int, max_wait_ms: float, metrics: Metrics,
                 max_queue: int = MAX_QUEUE):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.rec, self.max_batch, self.max_wait = rec, int(max_batch), max_wait_ms / 1000.0
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self.waiting = 0
        self.task: asyncio.Task | None = None
        self.closing = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genattn-infer")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.waiting = 0
        self.closing = False
        self.task = asyncio.create_task(self._worker(), name="genattn-microbatcher")

    async def submit(self, prep: PreparedRequest, timeout: float | None = None):
        """Queue one prepared call and wait for its result (HTTPError 503 / 504 / 500 otherwise)."""
        if self.closing or self.queue is None:
            raise HTTPError(503, "shutting_down", "the server is shutting down",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
        if self.waiting >= self.max_queue:
            raise HTTPError(503, "queue_full", f"the server is at capacity ({self.max_queue} requests queued, "
                            f"max_queue); retry later", headers={"Retry-After": str(RETRY_AFTER_S)})
        job = _Job(prep, asyncio.get_running_loop().create_future(), time.perf_counter(),
                   max(1, prep.n_model_rows))
        self.queue.put_nowait(job)
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            # On timeout the awaiting task is cancelled and with it the future: the worker then skips
            # the job if it has not run yet. asyncio.timeout, not wait_for: no task per request.
            async with asyncio.timeout(timeout):
                return await job.fut
        except TimeoutError:
            raise HTTPError(504, "deadline_exceeded", f"no result within the request deadline of {timeout:g} s "
                            "(request_timeout_s); the server is overloaded or the backend is slow") from None
        finally:
            self._unwait(job)

    def _unwait(self, job: _Job) -> None:
        if job.waiting:
            job.waiting = False
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued, stop the worker."""
        self.closing = True
        if self.queue is not None and self.task is not None:
            self.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        q = self.queue
        carry: _Job | None = None  # taken from the queue but did not fit the previous batch: starts the next
        stopping = False
        while True:
            if carry is not None:
                first, carry = carry, None
            elif stopping:
                break
            else:
                first = await q.get()
                if first is None:
                    break
            if first.fut.done():  # its deadline passed while it waited
                continue
            self._unwait(first)
            batch, rows = [first], first.rows
            deadline = loop.time() + self.max_wait
            # A request as large as max_batch or larger never enters this loop: it runs alone.
            while rows < self.max_batch:
                try:
                    nxt = q.get_nowait()
                except asyncio.QueueEmpty:
                    if deadline <= loop.time():
                        break
                    try:
                        async with asyncio.timeout_at(deadline):
                            nxt = await q.get()
                    except TimeoutError:
                        break
                if nxt is None:
                    stopping = True  # drain: run what we hold, then exit (the sentinel is last in the queue)
                    break
                if nxt.fut.done():
                    continue
                if rows + nxt.rows > self.max_batch:
                    carry = nxt
                    break
                self._unwait(nxt)
                batch.append(nxt)
                rows += nxt.rows
            try:
                await self._run(loop, batch)
            except Exception:  # keep serving: a dead worker would hang every later request
                log.exception("micro-batch worker error")
                for job in batch:
                    if not job.fut.done():
                        job.fut.set_exception(HTTPError(500, "internal_error", "internal error in the micro-batcher"))

    async def _run(self, loop, batch: list[_Job]) -> None:
        batch = [j for j in batch if not j.fut.done()]  # deadlines may have passed while collecting
        if not batch:
            return
        now = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(now - job.t_queued)
        preps = [j.prep for j in batch]
        n_rows = sum(p.n_model_rows for p in preps)
        if n_rows:
            self.metrics.batch_rows.observe(n_rows)
            self.metrics.batch_requests.observe(len(preps))
        try:
            results = await loop.run_in_executor(self.executor, self.rec.run_prepared, preps)
        except Exception:  # a backend failure, never user input (validated before queueing)
            if len(batch) == 1:
                self._fail(batch[0])
                return
            # One bad request must not fail the ones it was merely grouped with: run each alone.
            self.metrics.failures.labels("batch").inc()
            log.warning("inference failed for a micro-batch of %d requests; retrying each alone", len(batch),
                        exc_info=True)
            for job in batch:
                if job.fut.done():
                    continue
                try:
                    res = await loop.run_in_executor(self.executor, self.rec.run_prepared, [job.prep])
                except Exception:
                    self._fail(job)
                else:
                    if not job.fut.done():
                        job.fut.set_result(res[0])
            return
        self.metrics.inference.observe(time.perf_counter() - now)
        for job, res in zip(batch, results, strict=True):
            if not job.fut.done():  # the deadline may have passed during the run
                job.fut.set_result(res)

    def _fail(self, job: _Job) -> None:
        self.metrics.failures.labels("request").inc()
        log.exception("inference failed for a request of %d model rows", job.prep.n_model_rows)
        if not job.fut.done():
            job.fut.set_exception(HTTPError(500, "inference_failed",
                                            "the model failed on this request; the server log has the details"))


class _GuardMiddleware:
    """Pure ASGI middleware: request count by endpoint and status, latency histogram, and a
    JSON 500 for any exception that escapes the app (Starlette's own answer is plain text)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status, started = 500, False

        async def send_wrapper(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:  # else the server closes the connection mid-response
                status = 500
                await JSONResponse({"error": "internal_error",
                                    "detail": "unexpected server error; the server log has the details"},
                                   status_code=500, headers={"Connection": "close"})(scope, receive, send)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.child(self.metrics.requests, endpoint, str(status)).inc()
            self.metrics.child(self.metrics.latency, endpoint).observe(time.perf_counter() - t0)


class _RecommendRoute:
    """POST /recommend as a pure ASGI endpoint (the same `answer` as the FastAPI route)."""

    def __init__(self, answer, max_body_bytes: int, body_timeout_s: float):
        self.answer, self.max_body_bytes, self.body_timeout_s = answer, max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        headers = None
        try:
            body = await _read_body(Request(scope, receive), self.max_body_bytes, self.body_timeout_s)
            status, content = 200, await self.answer(body)
        except HTTPError as e:
            status, content, headers = e.status, e.body(), e.headers
        await _send_json(send, status, content, headers)


class _App(FastAPI):
    """The service's FastAPI app, with POST /recommend taken before FastAPI's own stack: the
    request skips the error, telemetry and body-limit middleware, the router and FastAPI's
    endpoint wrapper (about a dozen await layers, most of them seen again by every `send`),
    which took more event-loop time than validating, queueing and answering the request
    (py-spy under wrk at 32 connections). Every other path, method and the lifespan take the
    usual way; `fast` (set by create_app) holds its own guard for metrics and a JSON 500."""

    fast = None

    async def __call__(self, scope, receive, send):
        if self.fast is not None and scope["type"] == "http" and scope["method"] == "POST" \
                and _route_path(scope) == "/recommend":
            return await self.fast(scope, receive, send)
        return await super().__call__(scope, receive, send)


def _route_path(scope) -> str:
    """The path the app routes on: without the root_path of a mount or a proxy prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def _send_json(send, status: int, content: dict, headers: dict | None = None) -> None:
    """What JSONResponse sends (compact UTF-8 JSON, NaN refused), without building a Response."""
    body = _JSON.encode(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# Answers sent before the whole body was read close the connection: the unread rest of the
# body would otherwise be parsed as the next request on a kept-alive connection.
_CLOSE = {"Connection": "close"}


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise HTTPError(400, "bad_request", f"invalid Content-Length {cl!r}", headers=_CLOSE) from None
        if n > limit:
            raise HTTPError(413, "payload_too_large", f"request body of {n} bytes exceeds the limit of {limit}",
                            headers=_CLOSE)
    # uvicorn's keep-alive timeout does not cover a client that sent its headers and stalls
    # on the body; one deadline for the whole body also stops a byte-at-a-time trickle.
    # One deadline around the whole read (asyncio.timeout: no task per chunk, as wait_for made).
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # also bounds chunked bodies without a Content-Length
                    raise HTTPError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes",
                                    headers=_CLOSE)
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, "request_timeout", f"request body not received within {timeout:g} s "
                        "(body_timeout_s)", headers=_CLOSE) from None
    except ClientDisconnect:
        raise HTTPError(400, "client_disconnected", "the client closed the connection mid-body") from None
    return b"".join(chunks)


def _parse(body: bytes) -> dict:
    if not body:
        raise HTTPError(400, "malformed_json", "empty request body; send a JSON object")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, "malformed_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise HTTPError(400, "malformed_json", "request body is nested too deeply") from None
    if not isinstance(payload, dict):
        raise HTTPError(422, "invalid_request",
                        "request body must be a JSON object with 'history' or 'histories', "
                        f"got {type(payload).__name__}")
    extra = sorted(set(payload) - REQUEST_FIELDS)
    if extra:
        raise HTTPError(422, "invalid_request", f"unknown field(s) {extra}; allowed: {sorted(REQUEST_FIELDS)}")
    if ("history" in payload) == ("histories" in payload):
        raise HTTPError(422, "invalid_request", "give exactly one of 'history' (one user) or 'histories' (a batch)")
    return payload


_REQUEST_SCHEMA = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object",
        "properties": {
            "history": {"type": "array", "items": {"type": ["integer", "string"]},
                        "description": "one user's item ids, oldest first"},
            "histories": {"type": "array", "items": {"type": "array", "items": {"type": ["integer", "string"]}},
                          "description": "a batch of histories"},
            "k": {"type": "integer", "minimum": 1, "default": 10},
            "exclude_seen": {"type": "boolean", "default": True},
            "seed": {"type": ["integer", "null"], "minimum": 0, "default": None},
            "diversity": {"type": ["number", "null"], "minimum": 0, "default": None,
                          "description": "stochastic bundles: the prior's sampling temperature "
                                         "(0 deterministic, 1 the trained prior, more = more varied)"},
            "aggregate": {"type": ["string", "null"], "enum": ["mean", "interleave", "vote", None], "default": None,
                          "description": "bundles exported with S >= 2 samples: the top of the mean scores "
                                         "(mean), each sample's best in turn (interleave) or the items most "
                                         "samples list (vote); such bundles also answer `confidence`"},
            "times": {"type": ["array", "null"], "default": None,
                      "description": "when each history event happened, in seconds (Unix time), shaped like "
                                     "'history' / 'histories', never decreasing; required by bundles over time "
                                     "gaps (/metadata: time_buckets > 0), checked and ignored by the others"},
        }}}}},
}


def create_app(recommender: Recommender, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS,
               max_body_bytes: int = MAX_BODY_BYTES, max_users: int = MAX_USERS, max_queue: int = MAX_QUEUE,
               request_timeout_s: float = REQUEST_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The ASGI app. The micro-batcher starts and drains with the app's lifespan."""
    if max_body_bytes < 1 or max_users < 1:
        raise ValueError("max_body_bytes and max_users must be >= 1")
    if not (request_timeout_s > 0 and body_timeout_s > 0):
        raise ValueError("request_timeout_s and body_timeout_s must be > 0")
    metrics = Metrics()
    batcher = MicroBatcher(recommender, max_batch, max_wait_ms, metrics, max_queue=max_queue)
    limits = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_body_bytes": max_body_bytes,
              "max_users": max_users, "max_queue": max_queue, "request_timeout_s": request_timeout_s,
              "body_timeout_s": body_timeout_s}
    meta = {**recommender.metadata(), **limits}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("genattn serve: %s bundle, backend %s, micro-batch <= %d rows / %.1f ms, <= %d users per "
                 "request, queue <= %d requests, deadline %g s", meta["attention"], meta["backend"], max_batch,
                 max_wait_ms, max_users, max_queue, request_timeout_s)
        try:
            yield
        finally:
            await batcher.stop()
            log.info("genattn serve: queue drained, stopped")

    app = _App(title="genattn recommender", version=str(meta.get("genattn") or "0"), lifespan=lifespan)
    app.state.recommender, app.state.batcher, app.state.metrics = recommender, batcher, metrics

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return exc.response()

    async def answer(body: bytes) -> dict:
        """One /recommend call from its raw body to the JSON answer (HTTPError otherwise)."""
        payload = _parse(body)
        single = "history" in payload
        histories = payload["history"] if single else payload["histories"]
        if not single and not isinstance(histories, list):
            raise HTTPError(422, "invalid_input",
                            f"'histories' must be a list of lists, got {type(histories).__name__}")
        if not single and len(histories) > max_users:  # before any per-user work in the event loop
            raise HTTPError(413, "too_many_users", f"{len(histories)} histories in one request; the limit is "
                            f"{max_users} per request (max_users): split the request", max_users=max_users)
        if not single and histories and not all(isinstance(h, list) for h in histories):
            bad = next(i for i, h in enumerate(histories) if not isinstance(h, list))
            raise HTTPError(422, "invalid_input", f"histories[{bad}] must be a list of item ids")
        if single and isinstance(histories, list) and histories and all(isinstance(h, list) for h in histories):
            raise HTTPError(422, "invalid_input", "'history' is one user's list of ids; send a batch as 'histories'")
        try:
            if not single and not histories:
                recommender.check_k(payload.get("k", 10))
                return {"results": []}
            prep = recommender.prepare(histories, k=payload.get("k", 10),
                                       exclude_seen=payload.get("exclude_seen", True), seed=payload.get("seed"),
                                       diversity=payload.get("diversity"), aggregate=payload.get("aggregate"),
                                       times=payload.get("times"))
        except UnknownItemError as e:
            raise HTTPError(400, "unknown_items", str(e), unknown_items=e.unknown) from None
        except InputError as e:
            raise HTTPError(422, "invalid_input", str(e)) from None
        result = await batcher.submit(prep, timeout=request_timeout_s)
        if single:
            metrics.user(result.fallback)
            return result.to_dict()
        for r in result:
            metrics.user(r.fallback)
        return {"results": [r.to_dict() for r in result]}

    # The route documents the endpoint in /openapi.json; POST /recommend itself is answered by
    # app.fast (_App), with the same `answer`.
    @app.post("/recommend", openapi_extra=_REQUEST_SCHEMA)
    async def recommend(request: Request):
        return JSONResponse(await answer(await _read_body(request, max_body_bytes, body_timeout_s)))

    @app.get("/healthz")
    async def healthz():
        if batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ok", "backend": recommender.backend}

    @app.get("/metadata")
    async def metadata():
        return meta

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_GuardMiddleware, metrics=metrics)
    app.fast = _GuardMiddleware(_RecommendRoute(answer, max_body_bytes, body_timeout_s), metrics)
    return app


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, max_batch: int = MAX_BATCH,
          max_wait_ms: float = MAX_WAIT_MS, max_body_bytes: int = MAX_BODY_BYTES, log_level: str = "info",
          access_log: bool = False, graceful_timeout_s: float = 30.0, max_users: int = MAX_USERS,
          max_queue: int = MAX_QUEUE, request_timeout_s: float = REQUEST_TIMEOUT_S,
          body_timeout_s: float = BODY_TIMEOUT_S, keep_alive_s: float = KEEP_ALIVE_S) -> None:
    """Run the app under uvicorn (one process, one event loop; blocks until SIGINT / SIGTERM).
    keep_alive_s: how long an idle connection is kept open between requests (KEEP_ALIVE_S)."""
    import uvicorn

    app = create_app(recommender, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes,
                     max_users=max_users, max_queue=max_queue, request_timeout_s=request_timeout_s,
                     body_timeout_s=body_timeout_s)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=graceful_timeout_s, timeout_keep_alive=keep_alive_s, lifespan="on")


if __name__ == "__main__":  # python -m genattn_runtime.service BUNDLE --port 8000
    # The same as `python -m genattn_runtime serve BUNDLE ...`: the package's entry point holds the
    # command line, so this module never imports the CLI (which imports it).
    import runpy
    import sys

    sys.argv[1:1] = ["serve"]
    runpy.run_module("genattn_runtime", run_name="__main__")
