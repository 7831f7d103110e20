"""HTTP service: FastAPI app around one Recommender, with a micro-batching queue.

    POST /recommend   {"history": [...], "k": 10, "exclude_seen": true, "seed": null}
                      {"histories": [[...], ...], "k": 10, ...}
    GET  /healthz     {"status": "ok"} (503 while shutting down)
    GET  /metadata    bundle summary and backend
    GET  /metrics     Prometheus text format

Concurrent requests are validated in the event loop, queued, and grouped by one
worker into a single session run (at most `max_batch` rows, waiting at most
`max_wait_ms` after the first); the run happens in a worker thread so the loop keeps
accepting. On shutdown the queue is drained before the app exits. User input never
causes a 500: malformed JSON -> 400, wrong fields / types / k -> 422, unknown ids under
policy "error" -> 400 naming them, a body over `max_body_bytes` -> 413.

Run with `genattn serve BUNDLE` or `python -m genattn_runtime.service BUNDLE`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import InputError, UnknownItemError
from .recommender import PreparedRequest, Recommender

log = logging.getLogger("genattn_runtime.service")

ENDPOINTS = ("/recommend", "/healthz", "/metadata", "/metrics")
REQUEST_FIELDS = {"history", "histories", "k", "exclude_seen", "seed"}
LATENCY_BUCKETS = (.0005, .001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str, **extra):
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail, **self.extra}, status_code=self.status)


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


class MicroBatcher:
    """asyncio queue + one worker: concurrent requests share one session run."""

    def __init__(self, rec: Recommender, max_batch: int, max_wait_ms: float, metrics: Metrics):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.rec, self.max_batch, self.max_wait = rec, int(max_batch), max_wait_ms / 1000.0
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.closing = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genattn-infer")

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.closing = False
        self.task = asyncio.create_task(self._worker(), name="genattn-microbatcher")

    async def submit(self, prep: PreparedRequest):
        if self.closing or self.queue is None:
            raise HTTPError(503, "shutting_down", "the server is shutting down")
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((prep, fut, time.perf_counter()))
        self.metrics.queue_depth.set(self.queue.qsize())
        return await fut

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
        stop = False
        while not stop:
            first = await q.get()
            if first is None:
                break
            batch, rows = [first], max(1, first[0].n_model_rows)
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                try:
                    nxt = q.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(q.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if nxt is None:
                    stop = True  # drain: run what we hold, then exit (the sentinel is last in the queue)
                    break
                batch.append(nxt)
                rows += max(1, nxt[0].n_model_rows)
            self.metrics.queue_depth.set(q.qsize())
            try:
                await self._run(loop, batch)
            except Exception:  # keep serving: a dead worker would hang every later request
                log.exception("micro-batch worker error")
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("internal error in the micro-batcher"))

    async def _run(self, loop, batch) -> None:
        now = time.perf_counter()
        for _, _, t in batch:
            self.metrics.queue_wait.observe(now - t)
        preps = [p for p, _, _ in batch]
        n_rows = sum(p.n_model_rows for p in preps)
        if n_rows:
            self.metrics.batch_rows.observe(n_rows)
            self.metrics.batch_requests.observe(len(preps))
        try:
            results = await loop.run_in_executor(self.executor, self.rec.run_prepared, preps)
        except Exception as e:  # a backend failure, never user input (validated before queueing)
            log.exception("inference failed for a micro-batch of %d requests", len(batch))
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.metrics.inference.observe(time.perf_counter() - now)
        for (_, fut, _), res in zip(batch, results):
            if not fut.done():  # the client may have gone away
                fut.set_result(res)


class _MetricsMiddleware:
    """Pure ASGI middleware: request count by endpoint and status, latency histogram."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


async def _read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise HTTPError(400, "bad_request", f"invalid Content-Length {cl!r}") from None
        if n > limit:
            raise HTTPError(413, "payload_too_large", f"request body of {n} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds chunked bodies without a Content-Length
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
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
        }}}}},
}


def create_app(recommender: Recommender, max_batch: int = 64, max_wait_ms: float = 2.0,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """The ASGI app. The micro-batcher starts and drains with the app's lifespan."""
    metrics = Metrics()
    batcher = MicroBatcher(recommender, max_batch, max_wait_ms, metrics)
    meta = {**recommender.metadata(), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
            "max_body_bytes": max_body_bytes}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("genattn serve: %s bundle, backend %s, micro-batch <= %d rows / %.1f ms",
                 meta["attention"], meta["backend"], max_batch, max_wait_ms)
        try:
            yield
        finally:
            await batcher.stop()
            log.info("genattn serve: queue drained, stopped")

    app = FastAPI(title="genattn recommender", version=str(meta.get("genattn") or "0"), lifespan=lifespan)
    app.state.recommender, app.state.batcher, app.state.metrics = recommender, batcher, metrics

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return exc.response()

    @app.post("/recommend", openapi_extra=_REQUEST_SCHEMA)
    async def recommend(request: Request):
        payload = _parse(await _read_body(request, max_body_bytes))
        single = "history" in payload
        histories = payload["history"] if single else payload["histories"]
        if not single and not isinstance(histories, list):
            raise HTTPError(422, "invalid_input",
                            f"'histories' must be a list of lists, got {type(histories).__name__}")
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
                                       exclude_seen=payload.get("exclude_seen", True), seed=payload.get("seed"))
        except UnknownItemError as e:
            raise HTTPError(400, "unknown_items", str(e), unknown_items=e.unknown) from None
        except InputError as e:
            raise HTTPError(422, "invalid_input", str(e)) from None
        result = await batcher.submit(prep)
        if single:
            metrics.users.labels(result.fallback or "model").inc()
            return JSONResponse(result.to_dict())
        for r in result:
            metrics.users.labels(r.fallback or "model").inc()
        return JSONResponse({"results": [r.to_dict() for r in result]})

    @app.get("/healthz")
    async def healthz():
        if batcher.closing:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return {"status": "ok", "backend": recommender.backend}

    @app.get("/metadata")
    async def metadata():
        return meta

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 64,
          max_wait_ms: float = 2.0, max_body_bytes: int = 1 << 20, log_level: str = "info",
          access_log: bool = False, graceful_timeout_s: float = 30.0) -> None:
    """Run the app under uvicorn (one process, one event loop; blocks until SIGINT / SIGTERM)."""
    import uvicorn

    app = create_app(recommender, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=graceful_timeout_s, lifespan="on")


if __name__ == "__main__":  # python -m genattn_runtime.service BUNDLE --port 8000
    from genattn_runtime.cli import serve_cmd

    serve_cmd(prog_name="python -m genattn_runtime.service")
