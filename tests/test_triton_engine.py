"""The Triton engine: a real tritonserver (from nvidia-pytriton) started by `genattn serve --engine triton`,
queried over HTTP and gRPC with tritonclient; the request logic also in process (no server).

nvidia-pytriton pins numpy<2, so the engine has its own venv (`make triton-env`, .venv-triton) and the
default one has numpy 2 and no pytriton. The live-server tests start the server with the interpreter
GENATTN_TRITON_PYTHON names, else with .venv-triton's when it exists, else with this one; bundles,
clients and the in-process tests stay in this environment. Without a usable engine the live-server
tests skip, saying why."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import K, bundle, bundle_root, ids, rec  # noqa: F401 (fixtures)

from genattn_runtime import Recommender
from genattn_runtime.errors import InferenceError, InputError
from genattn_runtime.triton_engine import (IN_IDS, IN_KEYS, IN_LEN, IN_TIMES, MODEL_NAME, EngineConfig,
                                           RequestHandler, TritonEngineError, check_available, model_config,
                                           parse_parameters)

pytestmark = pytest.mark.slow

MAX_USERS, MAX_WAIT_MS, MAX_BODY = 16, 20, 4096


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The interpreter that runs the server: GENATTN_TRITON_PYTHON, else the Triton venv's, else this one.
_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-triton" / "bin" / "python"
TRITON_PYTHON = os.environ.get("GENATTN_TRITON_PYTHON") or (str(_VENV_PYTHON) if _VENV_PYTHON.is_file()
                                                            else sys.executable)


def _engine_ready() -> str | None:
    """None when TRITON_PYTHON can run the engine, else why not."""
    if TRITON_PYTHON == sys.executable:
        try:
            check_available()
        except TritonEngineError as e:
            return f"{e} (the engine has its own venv: make triton-env, then these tests use it)"
        return None
    probe = "from genattn_runtime.triton_engine import check_available; check_available()"
    try:
        out = subprocess.run([TRITON_PYTHON, "-c", probe], capture_output=True, text=True, timeout=120)
    except OSError as e:
        return f"the server interpreter {TRITON_PYTHON} cannot run: {e}"
    lines = out.stderr.strip().splitlines()
    return f"the server interpreter {TRITON_PYTHON}: {lines[-1] if lines else 'failed'}" if out.returncode else None


@pytest.fixture(scope="module")
def server(bundle_root):
    """One `genattn serve --engine triton` process for the module (softmax bundle, ONNX Runtime CPU)."""
    why = _engine_ready()
    if why:
        pytest.skip(f"tritonserver cannot run here: {why}")
    import tritonclient.http as httpclient

    ports = [_free_port() for _ in range(3)]
    cmd = [TRITON_PYTHON, "-m", "genattn_runtime.cli", "serve", str(bundle(bundle_root, "softmax")),
           "--engine", "triton", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
           "--metrics-port", str(ports[2]), "--backend", "cpu", "--threads", "1", "--max-users", str(MAX_USERS),
           "--max-wait-ms", str(MAX_WAIT_MS), "--max-body-bytes", str(MAX_BODY)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()  # never block on a full pipe
    url = f"127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 120
    c = httpclient.InferenceServerClient(url)
    try:
        while True:
            try:
                if c.is_model_ready(MODEL_NAME):
                    break
            except Exception:  # not listening yet
                pass
            assert proc.poll() is None, "".join(out)[-3000:]
            assert time.monotonic() < deadline, "the Triton engine was not ready in 120 s:\n" + "".join(out)[-3000:]
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        c.close()
    srv = {"proc": proc, "http": url, "grpc": f"127.0.0.1:{ports[1]}", "metrics": ports[2], "out": out}
    yield srv
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def http(server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server["http"], concurrency=8)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server["grpc"])
    yield c
    c.close()


def _inputs(mod, hists: list[list], as_keys: bool = False, lengths: bool = True):
    """Right-padded [B, W] history (INT64 or BYTES) plus history_len."""
    B, W = len(hists), max([len(h) for h in hists] + [1])
    if as_keys:
        arr = np.full((B, W), b"", dtype=object)
        for b, h in enumerate(hists):
            arr[b, :len(h)] = [str(x).encode() for x in h]
        t = mod.InferInput(IN_KEYS, [B, W], "BYTES")
    else:
        arr = np.zeros((B, W), dtype=np.int64)
        for b, h in enumerate(hists):
            arr[b, :len(h)] = h
        t = mod.InferInput(IN_IDS, [B, W], "INT64")
    t.set_data_from_numpy(arr)
    out = [t]
    if lengths:
        n = mod.InferInput(IN_LEN, [B, 1], "INT32")
        n.set_data_from_numpy(np.array([[len(h)] for h in hists], dtype=np.int32))
        out.append(n)
    return out


def _check(result, expected, k: int) -> None:
    items, scores = result.as_numpy("items"), result.as_numpy("scores")
    count, info = result.as_numpy("count"), result.as_numpy("info")
    assert items.shape == scores.shape == (len(expected), k)
    for b, e in enumerate(expected):
        m = int(count[b, 0])
        assert m == len(e.items)
        assert items[b, :m].tolist() == e.items
        np.testing.assert_allclose(scores[b, :m], e.scores, rtol=1e-5, atol=1e-6)
        assert (items[b, m:] == -1).all() and np.isneginf(scores[b, m:]).all()
        meta = json.loads(info[b, 0])
        assert meta == {"fallback": e.fallback, "unknown_items": e.unknown_items, "truncated": e.truncated,
                        "partial": e.partial}


def _histories(ids, rec) -> list[list]:
    rng = np.random.default_rng(0)
    hists = [[ids[j] for j in rng.integers(0, len(ids), size=int(rng.integers(1, 10)))] for _ in range(6)]
    hists.append([])                                    # no history: popularity fallback
    hists.append([ids[3], 10**9, ids[5]])               # an unknown id is skipped and reported
    hists.append([ids[j % len(ids)] for j in range(rec.max_len + 5)])  # longer than max_len: truncated
    return hists


# ---------------------------------------------------------------- the live server

def test_http_equals_recommender(http, rec, ids):
    import tritonclient.http as httpclient

    hists = _histories(ids, rec)
    res = http.infer(MODEL_NAME, _inputs(httpclient, hists), parameters={"k": 5})
    _check(res, rec.recommend_batch(hists, k=5), 5)
    # defaults: k = 10, seen items excluded; without history_len every entry of a row counts
    res = http.infer(MODEL_NAME, _inputs(httpclient, [ids[:4]], lengths=False))
    _check(res, [rec.recommend(ids[:4], k=10)], 10)
    res = http.infer(MODEL_NAME, _inputs(httpclient, [ids[:4]]), parameters={"k": 3, "exclude_seen": False})
    _check(res, [rec.recommend(ids[:4], k=3, exclude_seen=False)], 3)


def test_history_times_reach_the_model(http, rec, ids):
    """Event times travel as FP64 beside the ids (cut by history_len); this bundle has no time gaps,
    so it checks them (the bad cases below) and answers as without them."""
    import tritonclient.http as httpclient

    hists = [ids[:4], ids[2:5]]
    times = _raw_input(httpclient, IN_TIMES, np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 0.0]]), "FP64")
    res = http.infer(MODEL_NAME, _inputs(httpclient, hists) + [times], parameters={"k": 5})
    _check(res, rec.recommend_batch(hists, k=5, times=[[1, 2, 3, 4], [5, 6, 7]]), 5)


def test_grpc_string_keys_equal_recommender(grpc, rec, ids):
    import tritonclient.grpc as grpcclient

    hists = _histories(ids, rec)
    res = grpc.infer(MODEL_NAME, _inputs(grpcclient, hists, as_keys=True), parameters={"k": K})
    _check(res, rec.recommend_batch([[str(x) for x in h] for h in hists], k=K), K)


def test_model_config_served(http):
    cfg = http.get_model_config(MODEL_NAME)
    assert cfg["max_batch_size"] == MAX_USERS
    assert cfg["backend"] == "python"
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == MAX_WAIT_MS * 1000
    assert not cfg["dynamic_batching"].get("default_queue_policy")  # keeps the batcher's prefetching
    assert {i["name"] for i in cfg["input"]} == {IN_IDS, IN_KEYS, IN_LEN, IN_TIMES}
    assert {o["name"] for o in cfg["output"]} == {"items", "scores", "count", "info"}


def test_admin_endpoints_are_closed(http):
    """Clients cannot unload the model or read statistics (pytriton's token-protected endpoints)."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException):
        http.unload_model(MODEL_NAME)
    with pytest.raises(InferenceServerException):
        http.get_inference_statistics(MODEL_NAME)
    assert http.is_model_ready(MODEL_NAME)


def _raw_input(mod, name, arr, dtype):
    t = mod.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


BAD = {
    # case: (inputs builder, parameters, message pattern)
    "k zero": (lambda m, ids: _inputs(m, [ids[:3]]), {"k": 0}, r"k must be in 1\.\.20"),
    "k too large": (lambda m, ids: _inputs(m, [ids[:3]]), {"k": K + 1}, r"k must be in 1\.\.20 .*got 21"),
    "k a string": (lambda m, ids: _inputs(m, [ids[:3]]), {"k": "ten"}, r"k must be a positive integer"),
    "unknown parameter": (lambda m, ids: _inputs(m, [ids[:3]]), {"topk": 3}, r"unknown request parameter.*topk"),
    "negative seed": (lambda m, ids: _inputs(m, [ids[:3]]), {"seed": -1}, r"seed must be a non-negative"),
    "diversity on a deterministic bundle": (lambda m, ids: _inputs(m, [ids[:3]]), {"diversity": 1.5},
                                            r"diversity: this bundle is deterministic"),
    "no history": (lambda m, ids: _inputs(m, [ids[:3]])[1:], {}, r"exactly one of the inputs 'history'"),
    "two histories": (lambda m, ids: _inputs(m, [ids[:3]]) + _inputs(m, [ids[:3]], as_keys=True, lengths=False),
                      {}, r"exactly one of the inputs"),
    "length past the width": (lambda m, ids: [_inputs(m, [ids[:3]])[0],
                                              _raw_input(m, IN_LEN, np.array([[4]], np.int32), "INT32")],
                              {}, r"'history_len'\[0\] = 4 is outside 0\.\.3"),
    "negative length": (lambda m, ids: [_inputs(m, [ids[:3]])[0],
                                        _raw_input(m, IN_LEN, np.array([[-1]], np.int32), "INT32")],
                        {}, r"'history_len'\[0\] = -1"),
    "oversized history": (lambda m, ids: _inputs(m, [list(range(1, MAX_BODY // 8 + 2))]), {},
                          r"holds 4104 bytes; the limit is 4096"),
    "not UTF-8": (lambda m, ids: [_raw_input(m, IN_KEYS, np.array([[b"\xff\xfe"]], dtype=object), "BYTES")],
                  {}, r"not UTF-8"),
    "decreasing times": (lambda m, ids: _inputs(m, [ids[:3]]) + [_raw_input(m, IN_TIMES, np.array([[5.0, 4.0, 6.0]]),
                                                                             "FP64")],
                         {}, r"times must not decrease"),
    "times of another width": (lambda m, ids: _inputs(m, [ids[:3]]) + [_raw_input(m, IN_TIMES, np.ones((1, 2)),
                                                                                   "FP64")],
                               {}, r"'history_times' must have the history's shape \[1, 3\]"),
    # refused by Triton itself, before the model
    "too many users": (lambda m, ids: _inputs(m, [ids[:2]] * (MAX_USERS + 1)), {}, r"batch.size|max_batch_size"),
    "wrong dtype": (lambda m, ids: [_raw_input(m, IN_IDS, np.ones((1, 3), np.float32), "FP32")], {},
                    r"data-type|datatype|FP32"),
    "undeclared input": (lambda m, ids: _inputs(m, [ids[:3]]) + [_raw_input(m, "user", np.ones((1, 1), np.int64),
                                                                             "INT64")], {}, r"user"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error(http, grpc, ids, case):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    build, params, pattern = BAD[case]
    for client, mod in ((http, httpclient), (grpc, grpcclient)):
        with pytest.raises(InferenceServerException) as exc:
            client.infer(MODEL_NAME, build(mod, ids), parameters=params or None)
        assert re.search(pattern, exc.value.message()), exc.value.message()
        if mod is httpclient:
            assert exc.value.status() == "400"
        else:
            assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert http.is_server_live() and http.is_model_ready(MODEL_NAME)  # never a crash


def _metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf'^{re.escape(name)}{{[^}}]*model="{MODEL_NAME}"[^}}]*}} ([0-9.e+]+)$',
                                               text, re.M))


def test_bad_request_does_not_fail_its_batch(server, rec, ids):
    """Concurrent good and bad requests share dynamic batches; every good one is answered correctly."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    execs0 = _metric(server["metrics"], "nv_inference_exec_count")
    n = 24
    hists = [ids[i:i + 4] for i in range(n)]
    barrier = threading.Barrier(n)

    def one(i):
        c = httpclient.InferenceServerClient(server["http"])  # one client per thread: it is not thread-safe
        try:
            inputs = _inputs(httpclient, [hists[i]])
            params = {"k": 0} if i % 3 == 0 else {"k": 4}  # every third request is bad
            barrier.wait()
            return c.infer(MODEL_NAME, inputs, parameters=params)
        except InferenceServerException as e:
            return e
        finally:
            c.close()

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    for i, r in enumerate(results):
        if i % 3 == 0:
            assert isinstance(r, InferenceServerException) and "k must be in" in r.message()
        else:
            assert not isinstance(r, Exception), r
            _check(r, [rec.recommend(hists[i], k=4)], 4)
    execs = _metric(server["metrics"], "nv_inference_exec_count") - execs0
    assert execs < n  # requests were grouped: fewer model executions than requests


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_no_half_second_stalls_on_busy_cores(server, ids):
    """4 closed-loop clients while 2 processes spin on the cores: with a queue policy Triton's batcher
    missed wake-ups and every client stalled ~505 ms, dozens of times in a few seconds."""
    import http.client
    from concurrent.futures import ProcessPoolExecutor

    host, port = server["http"].split(":")
    body = json.dumps({"inputs": [{"name": IN_IDS, "shape": [1, 6], "datatype": "INT64",
                                   "data": [int(x) for x in ids[:6]]}], "parameters": {"k": 10}})
    seconds = 4.0

    def client() -> list[float]:
        c, lat = http.client.HTTPConnection(host, int(port), timeout=30), []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            a = time.monotonic()
            c.request("POST", f"/v2/models/{MODEL_NAME}/infer", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            assert r.status == 200
            lat.append(time.monotonic() - a)
        c.close()
        return lat

    with ProcessPoolExecutor(2) as hogs, ThreadPoolExecutor(4) as pool:
        spinning = [hogs.submit(_spin, seconds + 1) for _ in range(2)]
        lat = [x for f in [pool.submit(client) for _ in range(4)] for x in f.result()]
        [f.result() for f in spinning]
    slow = sorted(x for x in lat if x > 0.45)
    assert len(lat) > 40 and not slow, f"{len(slow)} of {len(lat)} requests took {slow[:5]} s"


def test_clean_shutdown(server):
    """SIGTERM: the server stops, exits 0, frees its ports and removes its model repository."""
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(server["out"])[-3000:]
    time.sleep(0.5)  # the reader thread takes the last lines
    text = "".join(server["out"])
    assert "Traceback" not in text
    # the engine's own line, not Triton's startup table (whose lines other output may interleave)
    repos = re.findall(r"genattn serve --engine triton: model .*; repository (\S+)", text)
    assert repos and not os.path.exists(repos[0])
    for port in (int(server["http"].rsplit(":", 1)[1]), server["metrics"]):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger in TIME_WAIT
            s.bind(("127.0.0.1", port))  # free again


# ---------------------------------------------------------------- in process (no server)

def test_model_config_text_parses():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from genattn_runtime.triton_config import render_config

    cfg = EngineConfig(bundle="/b", max_users=32, max_wait_ms=1.5, max_queue=7, request_timeout_s=2.0, instances=2)
    msg = text_format.Parse(render_config(model_config(cfg, string_ids=True)), model_config_pb2.ModelConfig())
    assert msg.max_batch_size == 32 and msg.backend == "python"
    assert msg.dynamic_batching.max_queue_delay_microseconds == 1500
    # no queue policy by default: any policy turns off the batcher's prefetching (~0.5 s stalls)
    assert not msg.dynamic_batching.HasField("default_queue_policy")
    bounded = dataclasses.replace(cfg, queue_policy=True)
    q = text_format.Parse(render_config(model_config(bounded, string_ids=True)), model_config_pb2.ModelConfig())
    assert q.dynamic_batching.default_queue_policy.max_queue_size == 7
    assert q.dynamic_batching.default_queue_policy.default_timeout_microseconds == 2_000_000
    assert msg.instance_group[0].count == 2
    assert {o.name: o.data_type for o in msg.output}["items"] == model_config_pb2.TYPE_STRING
    assert all(i.optional and i.allow_ragged_batch for i in msg.input)
    assert EngineConfig(**json.loads(msg.parameters["genattn"].string_value)) == cfg


def _req(hists, params=None, keys=False):
    W = max([len(h) for h in hists] + [1])
    arr = np.zeros((len(hists), W), dtype=object if keys else np.int64)
    if keys:
        arr[:] = b""
    for b, h in enumerate(hists):
        arr[b, :len(h)] = [str(x).encode() for x in h] if keys else h
    lengths = np.array([[len(h)] for h in hists], dtype=np.int32)
    return (None, arr, lengths, json.dumps(params or {})) if keys else (arr, None, lengths, json.dumps(params or {}))


def test_handler_seed_and_diversity(bundle_root, ids):
    with Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1) as r:
        h = RequestHandler(r, EngineConfig(bundle="unused"))
        hists = [ids[:5], ids[7:9]]
        out = h.handle([_req(hists, {"k": 5, "seed": 3, "diversity": 2.0}), _req(hists, {"k": 5, "seed": 3})])
        want = r.recommend_batch(hists, k=5, seed=3, diversity=2.0)
        assert out[0]["items"].tolist() == [w.items for w in want]
        assert out[1]["items"].tolist() == [w.items for w in r.recommend_batch(hists, k=5, seed=3)]
        assert parse_parameters('{"diversity": "0.5", "seed": 4.0}')["diversity"] == 0.5


def test_handler_string_catalog(bundle_root):
    from runtime_fixtures import string_id_bundle

    with Recommender.load(string_id_bundle(bundle_root), backend="cpu", threads=1) as r:
        keys = list(r.items.item_ids)
        h = RequestHandler(r, EngineConfig(bundle="unused"))
        assert h.string_ids
        out = h.handle([_req([keys[:3], []], {"k": 4}, keys=True)])[0]
        want = r.recommend_batch([keys[:3], []], k=4)
        assert [[x.decode() for x in row] for row in out["items"].tolist()] == [w.items for w in want]
        assert json.loads(out["info"][1, 0])["fallback"] == "popularity"


class _Poisoned:
    """A Recommender whose backend fails on any run that holds `poison`."""

    def __init__(self, rec, poison_index):
        self.rec, self.poison, self.calls = rec, poison_index, []
        self.items, self.prepare, self.manifest = rec.items, rec.prepare, rec.manifest

    def run_prepared(self, preps):
        self.calls.append(len(preps))
        if any((p.seq == self.poison).any() for p in preps):
            raise RuntimeError("injected backend failure")
        return self.rec.run_prepared(preps)


def test_handler_isolates_backend_failure(rec, ids):
    fake = _Poisoned(rec, rec.items.index[str(ids[40])])
    h = RequestHandler(fake, EngineConfig(bundle="unused"))
    hists = [ids[0:3], ids[3:6], [ids[1], ids[40]], ids[6:8]]
    out = h.handle([_req([x], {"k": 5}) for x in hists] + [_req([ids[:2]], {"k": 99})])
    assert fake.calls == [4, 1, 1, 1, 1]  # the batch failed, then each valid request alone
    for x, o in zip(hists[:2] + hists[3:], out[:2] + out[3:4]):
        assert o["items"][0].tolist() == rec.recommend(x, k=5).items
    assert isinstance(out[2], InferenceError) and "server log" in str(out[2])
    assert isinstance(out[4], InputError) and "k must be in" in str(out[4])


def test_engine_refuses_numpy2_or_missing_pytriton(monkeypatch):
    import genattn_runtime.triton_engine as te

    import types

    # a stand-in pytriton: the numpy check is tested where pytriton is not installed (the default venv)
    monkeypatch.setitem(sys.modules, "pytriton", types.ModuleType("pytriton"))
    monkeypatch.setitem(sys.modules, "pytriton.triton", types.ModuleType("pytriton.triton"))
    monkeypatch.setattr(te.np, "__version__", "2.1.0")
    with pytest.raises(TritonEngineError, match=r"needs numpy<2 \(found 2\.1\.0\)"):
        te.check_available()
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    with pytest.raises(TritonEngineError, match=r"needs nvidia-pytriton: pip install 'genattn\[triton\]'"):
        te.check_available()


def test_cli_refuses_shared_ports(bundle_root):
    from click.testing import CliRunner

    from genattn_runtime.cli import serve_cmd

    r = CliRunner().invoke(serve_cmd, [str(bundle(bundle_root, "softmax")), "--engine", "triton",
                                       "--http-port", "9100", "--grpc-port", "9100"])
    assert r.exit_code == 2 and "three different ports" in r.output
