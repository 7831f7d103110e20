"""The serving limits' defaults, in one place: the FastAPI engine (service.py), the Triton
engine's EngineConfig and `genattn serve` take them from here (this module imports nothing, so
the CLI reads them without importing either engine; docs/runtime.md states them)."""

MAX_BATCH = 64              # rows per session run of the micro-batcher
# 0: a batch is whatever queued while the backend ran the previous one, so an idle server runs a
# request at once and a busy one batches by itself. A window only delayed: under wrk on 2 cores,
# 0 against 2 ms served 3.8x the requests at 1 connection (1 ms p50 instead of 4) and 1.28x at 32
# (docs/runtime.md, Micro-batching). A GPU backend with a high per-run cost may want 1-2 ms.
MAX_WAIT_MS = 0.0           # longest wait for more requests after the first of a batch
MAX_BODY_BYTES = 1 << 20    # request body size
MAX_USERS = 256             # histories in one request
MAX_QUEUE = 256             # requests waiting for the micro-batcher
REQUEST_TIMEOUT_S = 10.0    # from queueing to the answer
BODY_TIMEOUT_S = 10.0       # to receive the whole body once the headers are in
RETRY_AFTER_S = 1           # Retry-After of a 503
# An idle kept-alive connection is closed by uvicorn after this long. It must outlast the
# idle expiry of the clients' pools (httpx 5 s, aiohttp 15 s, nginx upstream and AWS ALB
# 60 s): at uvicorn's default of 5 s, equal to httpx's, a client could send on a connection
# in the instant the server closed it, and the request failed with a reset (ReadError).
KEEP_ALIVE_S = 75.0
