"""Triton engine: `genattn serve BUNDLE --engine triton` runs a real Triton Inference Server.

The server is the `tritonserver` binary that nvidia-pytriton ships (with its Python
backend); pytriton's `Triton` class starts and stops it. The model is a Python-backend
model whose `TritonPythonModel` (below) holds the torch-free `Recommender`: Triton's
dynamic batcher groups concurrent requests, and one `execute` call validates each
request on its own, runs the valid ones in ONE session run (`run_prepared`), and answers
every request separately, so one bad request never fails the others.

Why not `Triton.bind(infer_func)`: pytriton's callable protocol can only fail a whole
batch of requests at once (one error for all of them), which would break that rule.

Model `genattn` (the batch dimension, first, is the users of one request; at most
`max_users` of them):

    inputs   history       INT64 [B, W]  item ids, one row per user, oldest first   } exactly
             history_keys  BYTES [B, W]  the same as UTF-8 strings (string catalogs) } one of them
             history_len   INT32 [B, 1]  optional: ids used per row (the first history_len[b]
                                         of row b; the rest is padding). Absent: whole rows.
             history_times FP64  [B, W]  optional: when each id's event happened (seconds), laid
                                         out as the ids; required by bundles over time gaps
    outputs  items         INT64 [B, k]  raw item ids, best first (BYTES when the catalog's ids
                                         are not all integers); padding after `count`: -1 / ""
             scores        FP32  [B, k]  their scores (padding: -inf)
             count         INT32 [B, 1]  valid entries per row (< k when the row is partial)
             info          BYTES [B, 1]  JSON per row: fallback, unknown_items, truncated, partial
             confidence    FP32  [B, 1]  only for bundles of S >= 2 samples: the samples' top-10
                                         overlap in [0, 1] (NaN for popularity-fallback rows)
    request parameters (all optional): k (int, default 10), exclude_seen (bool, default true),
             seed (int >= 0), diversity (number; stochastic bundles only),
             aggregate ("mean" | "interleave" | "vote"; bundles of S >= 2 samples)

Bad input is answered as a Triton error (HTTP 400 / gRPC INVALID_ARGUMENT) whose message
names what was wrong: a missing or doubled history input, a shape or length out of range,
a request over `max_body_bytes` of history, unknown parameters, k / seed / diversity out
of range, ids that are not UTF-8, unknown ids under `--unknown error`. Triton itself refuses
more than `max_users` users, wrong dtypes and undeclared inputs, per request, before
batching. `max_queue` and `request_timeout_s` become Triton's queue policy only with
`queue_policy=True` (off by default: see `model_config`). A backend failure fails only the
requests it concerns: a failed batch is retried request by request (as the FastAPI engine does).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import limits
from . import triton_config as pbtxt
from .errors import GenattnRuntimeError, InferenceError, InputError

log = logging.getLogger("genattn_runtime.triton")

MODEL_NAME = "genattn"
IN_IDS, IN_KEYS, IN_LEN, IN_TIMES = "history", "history_keys", "history_len", "history_times"
OUT_ITEMS, OUT_SCORES, OUT_COUNT, OUT_INFO, OUT_CONFIDENCE = "items", "scores", "count", "info", "confidence"
PARAMETERS = ("k", "exclude_seen", "seed", "diversity", "aggregate")
DEFAULT_K = 10
# Ports of a stock tritonserver.
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
EXIT_TIMEOUT_S = 10     # tritonserver's wait for in-flight requests on shutdown
START_TIMEOUT_S = 120.0


class TritonEngineError(GenattnRuntimeError):
    """The Triton engine cannot run here (pytriton missing, numpy 2, the server failed to start)."""


def check_available() -> None:
    """Raise TritonEngineError unless pytriton and a numpy its Python backend can use are installed."""
    try:
        import pytriton.triton  # noqa: F401
    except ImportError as e:
        raise TritonEngineError(f"the Triton engine needs nvidia-pytriton: pip install 'genattn[triton]' ({e})") from None
    if int(np.__version__.split(".")[0]) >= 2:
        # The Python backend stub in pytriton 0.7's wheel reads and writes tensors through numpy's 1.x
        # C layout: under numpy 2 every tensor arrives as zeros. pytriton pins numpy<2 for this reason.
        raise TritonEngineError(f"the Triton engine needs numpy<2 (found {np.__version__}): tritonserver's "
                                "Python backend from nvidia-pytriton cannot exchange tensors with numpy 2; "
                                "pip install 'genattn[triton]' resolves a compatible numpy")


@dataclass
class EngineConfig:
    """How the engine loads the bundle and what Triton enforces (defaults: the FastAPI engine's)."""
    bundle: str
    backend: str = "auto"
    strict: bool = False
    unknown_items: str = "skip"
    threads: int = 0
    trusted_keys: list[str] = field(default_factory=list)
    trt_cache_dir: str | None = None
    max_users: int = limits.MAX_USERS  # Triton max_batch_size: users per request and per batch
    max_wait_ms: float = limits.MAX_WAIT_MS  # dynamic batcher: max_queue_delay
    max_queue: int = limits.MAX_QUEUE  # requests waiting; more are refused   } only with
    request_timeout_s: float = limits.REQUEST_TIMEOUT_S  # queued longer: dropped with an error } queue_policy
    queue_policy: bool = False    # Triton enforces the two above (costs ~0.5 s stalls: model_config)
    max_body_bytes: int = limits.MAX_BODY_BYTES  # history tensor bytes per request
    instances: int = 1            # model instances (processes, each with its own Recommender)
    nprobe: int | None = None     # ANN bundles: search breadth instead of the export's
    ef_search: int | None = None

    def load(self):
        from .backends import BackendOptions
        from .recommender import Recommender

        # The fields named like BackendOptions' (backend, strict, threads, trt_cache_dir, nprobe,
        # ef_search) are the backend options; the rest are the engine's own.
        return Recommender.load(self.bundle, BackendOptions.from_flags(asdict(self)),
                                unknown_items=self.unknown_items, trusted_keys=self.trusted_keys or None)


# ---------------------------------------------------------------- model repository

def model_config(cfg: EngineConfig, string_ids: bool, confidence: bool = False):
    """The Python-backend model's ModelConfig message (triton_config renders and writes it).
    confidence: the bundle has sample outputs, so the model declares the `confidence` output."""
    def tensor(name: str, dtype: str, dims: list[int], **flags) -> dict:
        return {"name": name, "data_type": dtype, "dims": dims, **flags}

    ragged = {"optional": True, "allow_ragged_batch": True}  # requests of any history width share a batch
    batching = {"max_queue_delay_microseconds": int(round(cfg.max_wait_ms * 1000))}
    if cfg.queue_policy:
        # Any queue policy (a max_queue_size or a default timeout) turns off the dynamic batcher's
        # prefetching (core PriorityQueue: support_prefetching_). Without it the batcher only forms
        # a batch while the model instance waits for one, and nothing wakes it when the instance
        # comes back: a request that arrives while the instance is finishing is not signalled
        # (Enqueue wakes the batcher only if a consumer waits) and sits until the batcher's fixed
        # 500 ms timed wait (dynamic_batch_scheduler.cc, default_wait_microseconds) ends. On
        # contended cores every closed-loop client then stalls ~505 ms at the same instants
        # (Triton 2.51; unchanged in core's main). With prefetching an enqueue finds room and wakes it.
        batching["default_queue_policy"] = {
            "timeout_action": "REJECT", "default_timeout_microseconds": int(round(cfg.request_timeout_s * 1e6)),
            "max_queue_size": cfg.max_queue}
    return pbtxt.config_message({
        "name": MODEL_NAME,
        "backend": "python",
        "max_batch_size": cfg.max_users,
        "input": [tensor(IN_IDS, "TYPE_INT64", [-1], **ragged), tensor(IN_KEYS, "TYPE_STRING", [-1], **ragged),
                  tensor(IN_LEN, "TYPE_INT32", [1], **ragged), tensor(IN_TIMES, "TYPE_FP64", [-1], **ragged)],
        "output": [tensor(OUT_ITEMS, "TYPE_STRING" if string_ids else "TYPE_INT64", [-1]),
                   tensor(OUT_SCORES, "TYPE_FP32", [-1]), tensor(OUT_COUNT, "TYPE_INT32", [1]),
                   tensor(OUT_INFO, "TYPE_STRING", [1])]
                  + ([tensor(OUT_CONFIDENCE, "TYPE_FP32", [1])] if confidence else []),
        "dynamic_batching": batching,
        "instance_group": [{"kind": "KIND_CPU", "count": cfg.instances}],
        # the model reads its EngineConfig back from here (TritonPythonModel.initialize)
        "parameters": {"genattn": {"string_value": json.dumps(asdict(cfg))}},
    }, source=f"config.pbtxt of Triton model {MODEL_NAME!r}")


# The model file only names the class: its code lives (and is tested) in this module.
MODEL_PY = "from genattn_runtime.triton_engine import TritonPythonModel  # noqa: F401\n"


def write_repository(cfg: EngineConfig, root: Path, string_ids: bool, confidence: bool = False) -> Path:
    """`root/genattn/config.pbtxt` and `root/genattn/1/model.py`, each written under a temporary name
    and renamed; returns root."""
    model = Path(root) / MODEL_NAME
    (model / "1").mkdir(parents=True, exist_ok=True)
    pbtxt.write_config(model / "config.pbtxt", model_config(cfg, string_ids, confidence))
    tmp = model / "1" / ".model.py.tmp"
    tmp.write_text(MODEL_PY)
    os.replace(tmp, model / "1" / "model.py")
    return Path(root)


# ---------------------------------------------------------------- the model (runs in the backend stub)

def _param(params: dict, name: str, default):
    return params[name] if name in params else default


def parse_parameters(raw: str | dict) -> dict:
    """A request's Triton parameters -> prepare() keyword arguments (InputError names what is wrong)."""
    params = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
    extra = sorted(set(params) - set(PARAMETERS))
    if extra:
        raise InputError(f"unknown request parameter(s) {extra}; allowed: {list(PARAMETERS)}")
    diversity = params.get("diversity")
    if isinstance(diversity, str):  # clients without double parameters send a string
        try:
            diversity = float(diversity)
        except ValueError:
            raise InputError(f"diversity must be a number, got the string {diversity[:40]!r}") from None
    seed = params.get("seed")
    if isinstance(seed, numbers.Real) and not isinstance(seed, bool) and not isinstance(seed, numbers.Integral):
        if not (math.isfinite(seed) and seed == int(seed)):
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
    return {"k": _param(params, "k", DEFAULT_K), "exclude_seen": _param(params, "exclude_seen", True),
            "seed": seed, "diversity": diversity, "aggregate": params.get("aggregate")}


def parse_histories(ids: np.ndarray | None, keys: np.ndarray | None, lengths: np.ndarray | None,
                    max_bytes: int) -> list[list]:
    """The history tensors of one request -> one list of raw ids per user (InputError names what is wrong)."""
    if (ids is None) == (keys is None):
        raise InputError(f"give exactly one of the inputs '{IN_IDS}' (INT64 ids) or '{IN_KEYS}' (BYTES ids)")
    arr, name = (ids, IN_IDS) if ids is not None else (keys, IN_KEYS)
    if arr.ndim != 2:
        raise InputError(f"'{name}' must be [users, width], got shape {list(arr.shape)}")
    B, W = arr.shape
    size = arr.nbytes if keys is None else sum(len(x) + 4 for x in arr.ravel().tolist())  # as Triton frames BYTES
    if size > max_bytes:
        raise InputError(f"'{name}' holds {size} bytes; the limit is {max_bytes} per request (max_body_bytes): "
                         "split the request")
    if lengths is None:
        n = [W] * B
    else:
        if lengths.shape != (B, 1):
            raise InputError(f"'{IN_LEN}' must be [users, 1] = [{B}, 1], got {list(lengths.shape)}")
        n = lengths[:, 0].tolist()
        bad = next((b for b, x in enumerate(n) if not 0 <= x <= W), None)
        if bad is not None:
            raise InputError(f"'{IN_LEN}'[{bad}] = {n[bad]} is outside 0..{W} (the width of '{name}')")
    rows = arr.tolist()
    if keys is None:
        return [r[:m] for r, m in zip(rows, n)]
    out = []
    for b, (r, m) in enumerate(zip(rows, n)):
        try:
            out.append([x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in r[:m]])
        except UnicodeDecodeError as e:
            raise InputError(f"'{IN_KEYS}'[{b}] holds an id that is not UTF-8 ({e.reason} at byte {e.start})") from None
    return out


def parse_times(times: np.ndarray | None, hists: list[list], width: int) -> list[list] | None:
    """The optional history_times tensor -> one list of times per user, cut like the histories."""
    if times is None:
        return None
    if times.shape != (len(hists), width):
        raise InputError(f"'{IN_TIMES}' must have the history's shape [{len(hists)}, {width}], "
                         f"got {list(times.shape)}")
    return [row[:len(h)] for row, h in zip(times.tolist(), hists)]


def encode_outputs(recs: list, k: int, string_ids: bool, confidence: bool = False) -> dict[str, np.ndarray]:
    """Recommendations of one request -> the model's output arrays (with `confidence` when the model
    declares it)."""
    B = len(recs)
    scores = np.full((B, k), -np.inf, dtype=np.float32)
    count = np.zeros((B, 1), dtype=np.int32)
    if string_ids:
        items = np.full((B, k), b"", dtype=object)
    else:
        items = np.full((B, k), -1, dtype=np.int64)
    info = np.empty((B, 1), dtype=object)
    for b, r in enumerate(recs):
        m = len(r.items)
        count[b, 0] = m
        if m:
            items[b, :m] = [str(x).encode() for x in r.items] if string_ids else r.items
            scores[b, :m] = r.scores
        info[b, 0] = json.dumps({"fallback": r.fallback, "unknown_items": list(r.unknown_items),
                                 "truncated": r.truncated, "partial": r.partial}).encode()
    out = {OUT_ITEMS: items, OUT_SCORES: scores, OUT_COUNT: count, OUT_INFO: info}
    if confidence:
        out[OUT_CONFIDENCE] = np.array([[np.nan if r.confidence is None else r.confidence] for r in recs],
                                       dtype=np.float32).reshape(B, 1)
    return out


def model_shape(rec) -> tuple[bool, bool]:
    """(string_ids, confidence) of a loaded bundle: BYTES item ids unless every id is an int; a
    confidence output when the graph has sample outputs."""
    return not all(type(x) is int for x in rec.items.item_ids), rec.manifest.aggregate is not None


class RequestHandler:
    """The engine's request logic, apart from Triton's types (so it is testable in process):
    `handle(requests)` -> per request, its output arrays, an InputError (the caller's fault)
    or an InferenceError (the backend's)."""

    def __init__(self, rec, cfg: EngineConfig):
        self.rec, self.cfg = rec, cfg
        self.string_ids, self.confidence = model_shape(rec)

    def handle(self, requests: list[tuple]) -> list:
        """requests: (ids, keys, lengths, parameters[, times]) per request."""
        out: list = [None] * len(requests)
        ready = []  # (position, prepared, k)
        for i, (ids, keys, lengths, params, *times) in enumerate(requests):
            try:
                kw = parse_parameters(params)
                hists = parse_histories(ids, keys, lengths, self.cfg.max_body_bytes)
                width = (ids if ids is not None else keys).shape[1]
                prep = self.rec.prepare(hists, times=parse_times(times[0] if times else None, hists, width), **kw)
            except InputError as e:  # UnknownItemError included
                out[i] = e
            else:
                ready.append((i, prep))
        if ready:
            try:
                results = self.rec.run_prepared([p for _, p in ready])
            except Exception as e:  # a backend failure (input was validated): isolate the requests
                if len(ready) == 1:
                    log.exception("inference failed for a request of %d model rows", ready[0][1].n_model_rows)
                    results = [e]
                else:
                    log.warning("inference failed for a batch of %d requests; retrying each alone", len(ready),
                                exc_info=True)
                    results = [self._run_alone(p) for _, p in ready]
            for (i, p), res in zip(ready, results, strict=True):
                if isinstance(res, Exception):
                    out[i] = InferenceError("the model failed on this request; the server log has the details")
                else:
                    out[i] = encode_outputs(res, p.k, self.string_ids, self.confidence)
        return out

    def _run_alone(self, prep):
        try:
            return self.rec.run_prepared([prep])[0]
        except Exception as e:
            log.exception("inference failed for a request of %d model rows", prep.n_model_rows)
            return e


class TritonPythonModel:
    """The Python-backend model (Triton's interface: initialize / execute / finalize)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only exists inside the backend stub

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        cfg = EngineConfig(**json.loads(config["parameters"]["genattn"]["string_value"]))
        self.rec = cfg.load()
        self.handler = RequestHandler(self.rec, cfg)
        log.info("genattn Triton model: %s bundle, backend %s", self.rec.manifest.attention, self.rec.backend)

    def _tensor(self, request, name: str):
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def execute(self, requests):
        pb = self.pb
        parsed = [(self._tensor(r, IN_IDS), self._tensor(r, IN_KEYS), self._tensor(r, IN_LEN), r.parameters(),
                   self._tensor(r, IN_TIMES)) for r in requests]
        responses = []
        for res in self.handler.handle(parsed):
            if isinstance(res, InputError):
                err = pb.TritonError(str(res), pb.TritonError.INVALID_ARG)
                responses.append(pb.InferenceResponse(error=err))
            elif isinstance(res, Exception):
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(res), pb.TritonError.INTERNAL)))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, a) for n, a in res.items()]))
        return responses

    def finalize(self) -> None:
        rec = getattr(self, "rec", None)
        if rec is not None:
            rec.close()


# ---------------------------------------------------------------- the server (runs in the serving process)

class TritonEngine:
    """Start tritonserver with the genattn model on the given ports; `stop()` drains and stops it.

        with TritonEngine(EngineConfig(bundle), http_port=8000, grpc_port=8001, metrics_port=8002) as eng:
            eng.wait()          # until SIGINT / SIGTERM or the server dies
    """

    def __init__(self, cfg: EngineConfig, host: str = "127.0.0.1", http_port: int = HTTP_PORT,
                 grpc_port: int = GRPC_PORT, metrics_port: int = METRICS_PORT, log_verbose: int = 0,
                 open_statistics: bool = False):
        """open_statistics: clients may read the statistics endpoint (read-only; perf_analyzer needs it),
        which is closed with the other admin endpoints by default."""
        check_available()
        self.cfg = cfg
        self.open_statistics = open_statistics
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.log_verbose = log_verbose
        self._triton = None
        self._released = threading.Event()
        self._dir: str | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "TritonEngine":
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

        # Load once here: a bad bundle, key or backend fails now in one line, not inside the server.
        rec = self.cfg.load()
        try:
            string_ids, confidence = model_shape(rec)
            log.info("genattn serve --engine triton: %s bundle, backend %s", rec.manifest.attention, rec.backend)
            if not self.cfg.queue_policy:
                log.info("genattn serve --engine triton: Triton's queue is unbounded and has no timeout "
                         "(max_queue / request_timeout_s apply with queue_policy=True, which costs ~0.5 s "
                         "stalls under load: docs/runtime.md, Triton engine)")
        finally:
            rec.close()
        self._dir = tempfile.mkdtemp(prefix="genattn-triton-")
        repo = write_repository(self.cfg, Path(self._dir) / "models", string_ids, confidence)
        config = TritonConfig(model_repository=repo, http_address=self.host, http_port=self.http_port,
                              grpc_address=self.host, grpc_port=self.grpc_port, metrics_address=self.host,
                              metrics_port=self.metrics_port, allow_gpu_metrics=False,
                              log_verbose=self.log_verbose, exit_timeout_secs=EXIT_TIMEOUT_S)
        security = (TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS
                                                               if e != "statistics"])
                    if self.open_statistics else None)  # None: pytriton's defaults, all admin endpoints closed
        self._triton = Triton(config=config, workspace=Path(self._dir) / "workspace", security_config=security)
        # Triton.run() waits for readiness without noticing a server that exited: run it aside and watch.
        # That thread lives until stop(): pytriton starts tritonserver with PR_SET_PDEATHSIG, which
        # sends SIGTERM to the server when the *thread* that started it ends.
        failure: list[BaseException] = []
        self._released = threading.Event()

        def run():
            try:
                self._triton.run()
            except BaseException as e:  # noqa: BLE001 (reported below)
                failure.append(e)
            self._released.wait()

        t0 = time.monotonic()
        threading.Thread(target=run, name="genattn-triton", daemon=True).start()
        try:
            while not self._model_ready():
                waited = time.monotonic() - t0
                dead = waited > 1.0 and not self._triton.is_alive()  # the process starts within the first second
                if failure or dead or waited > timeout_s:
                    why = (f"{type(failure[0]).__name__}: {failure[0]}" if failure else
                           "the server exited" if dead else f"not ready within {timeout_s:g} s")
                    raise TritonEngineError(f"tritonserver did not start ({why}); its log ends with: "
                                            f"{self._log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        # The repository folder is named so that an operator (and the shutdown test) can see it go.
        log.info("genattn serve --engine triton: model '%s' on HTTP %s, gRPC %s, metrics %s:%d; repository %s",
                 MODEL_NAME, self.http_url, self.grpc_url, self.host, self.metrics_port, self._dir)
        return self

    def _model_ready(self) -> bool:
        import tritonclient.http as httpclient

        try:
            with contextlib.closing(httpclient.InferenceServerClient(self.http_url, connection_timeout=1.0,
                                                                     network_timeout=1.0)) as c:
                return bool(c.is_model_ready(MODEL_NAME))
        except Exception:  # not listening yet
            return False

    def _log_tail(self, n: int = 600) -> str:
        server = getattr(self._triton, "_triton_server", None)
        text = server.logs() if server is not None else ""
        return " ".join(text[-n:].split()) or "(no output)"

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        """SIGINT to tritonserver: it finishes in-flight requests (up to EXIT_TIMEOUT_S) and exits."""
        if self._triton is not None:
            with contextlib.suppress(Exception):
                self._triton.stop()
            self._triton = None
            self._released.set()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def wait(self) -> None:
        """Block until SIGINT / SIGTERM (then stop) or until the server dies (TritonEngineError)."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not done.wait(1.0):
                if not self.alive():
                    raise TritonEngineError(f"tritonserver exited; its log ends with: {self._log_tail()}")
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        log.info("genattn serve --engine triton: stopping (in-flight requests finish first)")
        self.stop()

    def __enter__(self) -> "TritonEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: EngineConfig, host: str = "127.0.0.1", http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
          metrics_port: int = METRICS_PORT, log_verbose: int = 0) -> None:
    """Run the Triton engine in the foreground until SIGINT / SIGTERM (TritonEngineError if it cannot)."""
    engine = TritonEngine(cfg, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          log_verbose=log_verbose)
    engine.start()  # stops what it started if it fails
    try:
        engine.wait()
    finally:
        engine.stop()


if __name__ == "__main__":  # python -m genattn_runtime.triton_engine BUNDLE --http-port 8000
    # The same as `python -m genattn_runtime serve --engine triton BUNDLE ...`: the package's entry
    # point holds the command line, so this module never imports the CLI (which imports it).
    import runpy

    sys.argv[1:1] = ["serve", "--engine=triton"]
    runpy.run_module("genattn_runtime", run_name="__main__")
