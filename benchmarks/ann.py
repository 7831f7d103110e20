"""Top-K retrieval over a large catalog at batch 1: ANN indexes against exact scoring.

    python -m benchmarks.ann [--quick] [--n-items 1000000] [--checkpoint CKPT] [--libraries]
    python -m benchmarks.ann --end-to-end      # real bundles over the expanded catalog, Recommender.recommend

Item vectors (model-like, not uniform random): the item embeddings of a trained
checkpoint (default: the ML-1M softmax model of the accuracy suite when present,
else a small model trained here on synthetic data) expanded to --n-items with
clustered perturbations: every new item is `(1 - u)·e_b + u·e_c + 0.5·sd·z`, with base
items b, c drawn uniformly from the trained ones, u ~ U(0, 0.5), z ~ N(0, I) and sd the
trained table's per-dimension standard deviation. The trained items are kept as they
are. Queries: user states of the checkpoint's own users (test-split histories through
the model), so the score distribution is the model's.

Timed: one query at a time (batch 1), the search alone (state in, top-10 out), single
threaded; p50 over the queries after a warm-up. Recall@10: |top-10 ∩ exact fp32
top-10| / 10, averaged over the queries. Rows:

    exact fp32 / fp16 / int8   full scan through ONNX Runtime (MatMul [MatMulInteger for int8,
                               per-row scales] + TopK), and faiss flat scans (IndexFlatIP,
                               scalar-quantized fp16 / 8-bit tables)
    hnsw, ivfpq                faiss, as `genattn export --ann` builds them (the runtime's search code),
                               over a sweep of ef_search / nprobe
    hnswlib, usearch           the other HNSW libraries compared (--libraries)

Results: section "ann" of benchmarks/results/serving_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import REPO, machine_info, repo_path
from .serving_scale import write_section

log = logging.getLogger("benchmarks.ann")

DEFAULT_CHECKPOINT = REPO / "runs" / "accuracy" / "ml-1m" / "softmax_seed0"
CACHE = REPO / "runs" / "ann_cache"
K = 10
TARGET_MS, TARGET_RECALL = 1.0, 0.95


# ---------------------------------------------------------------- vectors and queries

def expand_items(base: np.ndarray, n: int, seed: int = 0, mix: float = 0.5, noise: float = 0.5) -> np.ndarray:
    """`base` (trained item vectors) followed by n - len(base) clustered perturbations of them."""
    rng = np.random.default_rng(seed)
    nb, d = base.shape
    if n <= nb:
        return np.ascontiguousarray(base[:n])
    out = np.empty((n, d), dtype=np.float32)
    out[:nb] = base
    sd = base.std(0, keepdims=True).astype(np.float32)
    for start in range(nb, n, 1 << 18):  # in chunks: 1M x 64 temporaries stay small
        m = min(1 << 18, n - start)
        b, c = rng.integers(0, nb, m), rng.integers(0, nb, m)
        u = rng.uniform(0, mix, (m, 1)).astype(np.float32)
        out[start:start + m] = ((1 - u) * base[b] + u * base[c]
                                + noise * sd * rng.standard_normal((m, d), dtype=np.float32))
    return out


def _small_checkpoint() -> Path:
    """A small softmax model trained here on synthetic data (seconds), for machines without the
    accuracy suite's checkpoints and for --quick."""
    ck = CACHE / "synthetic-softmax"
    if not (ck / "model.safetensors").exists():
        from genattn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from genattn.training import train

        run = RunConfig(model=ModelConfig(max_len=20, d_model=32, attention="softmax"),
                        train=TrainConfig(epochs=2, batch_size=64, device="cpu", threads=1),
                        data=DataConfig(source="synthetic", synthetic_users=300, synthetic_items=200))
        train(run, ck, progress=False)
    return ck


def model_vectors(checkpoint: Path, n_items: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(items (n_items, D), user states (n_queries, D), description) from a trained checkpoint."""
    import torch

    from genattn.checkpoint import checkpoint_data, load_checkpoint
    from genattn.data import leave_one_out, pad_left

    torch.set_num_threads(1)
    ck = load_checkpoint(checkpoint)
    model = ck.model.eval()
    base = model.item_emb.weight.detach()[1:].float().numpy()
    ds = checkpoint_data(ck)
    seqs = leave_one_out(ds).test_inputs
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(seqs), size=min(n_queries, len(seqs)), replace=False)
    seqs = pad_left([seqs[i] for i in pick], ck.run.model.max_len)
    with torch.no_grad():
        states = model.user_state(torch.from_numpy(seqs)).float().numpy()
    items = expand_items(base, n_items, seed)
    desc = {"checkpoint": repo_path(checkpoint), "attention": ck.run.model.attention,
            "data": ck.run.data.source, "trained_items": int(len(base)), "dim": int(base.shape[1]),
            "queries": f"{len(states)} user states of the checkpoint's test-split users",
            "expansion": "(1-u)*e_b + u*e_c + 0.5*sd*z, b,c uniform over trained items, u~U(0,0.5), z~N(0,I), "
                         "sd = per-dim std of the trained table; trained items kept"}
    return items, np.ascontiguousarray(states, dtype=np.float32), desc


def exact_top(states: np.ndarray, items: np.ndarray, k: int = K) -> np.ndarray:
    from genattn_export.ann import exact_top as top

    return top(states, items, k) - 1  # row numbers of `items`


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(got, truth)]))


def timed(search, states: np.ndarray, warmup: int = 20) -> tuple[np.ndarray, float, float]:
    """Batch-1 search of every state: (top-k rows, p50 ms, p90 ms)."""
    for q in states[:warmup]:
        search(q[None])
    got, ts = [], []
    for q in states:
        t = time.perf_counter()
        rows = search(q[None])
        ts.append(time.perf_counter() - t)
        got.append(rows[0][:K])
    ms = np.asarray(ts) * 1e3
    return np.asarray(got), float(np.percentile(ms, 50)), float(np.percentile(ms, 90))


# ---------------------------------------------------------------- exact scans

def _ort_scan(items: np.ndarray, table: str, threads: int):
    """ONNX Runtime graph: state (1, D) -> top-K rows of state . table^T, table as an initializer."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    d = items.shape[1]
    nodes, inits = [], [numpy_helper.from_array(np.array([K], dtype=np.int64), "k")]
    if table == "fp32":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(items.T), "table"))
        nodes.append(helper.make_node("MatMul", ["state", "table"], ["scores"]))
    elif table == "fp16":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(items.T.astype(np.float16)), "table"))
        nodes += [helper.make_node("Cast", ["state"], ["state16"], to=TensorProto.FLOAT16),
                  helper.make_node("MatMul", ["state16", "table"], ["scores16"]),
                  helper.make_node("Cast", ["scores16"], ["scores"], to=TensorProto.FLOAT)]
    else:  # int8 rows with one scale per row; the state quantized per call (u8 x s8 kernels)
        scale = np.abs(items).max(1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(items / scale[:, None]), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(np.ascontiguousarray(q.T), "table"),
                  numpy_helper.from_array(scale.astype(np.float32)[None, :], "row_scale")]
        nodes += [helper.make_node("DynamicQuantizeLinear", ["state"], ["qs", "s_scale", "s_zero"]),
                  helper.make_node("MatMulInteger", ["qs", "table", "s_zero"], ["acc"]),
                  helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["row_scale", "s_scale"], ["rs"]),
                  helper.make_node("Mul", ["accf", "rs"], ["scores"])]
    nodes.append(helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_rows"]))
    graph = helper.make_graph(nodes, f"scan_{table}", [helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info("top_rows", TensorProto.INT64, [1, K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:  # ORT reads the file at session creation
        path = Path(tmp) / f"scan_{table}.onnx"
        onnx.save(model, str(path), save_as_external_data=True)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda q: sess.run(["top_rows"], {"state": q})[0]


def _faiss_flat(items: np.ndarray, kind: str):
    import faiss

    d = items.shape[1]
    if kind == "fp32":
        index = faiss.IndexFlatIP(d)
    else:
        qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "int8": faiss.ScalarQuantizer.QT_8bit}[kind]
        index = faiss.IndexScalarQuantizer(d, qt, faiss.METRIC_INNER_PRODUCT)
        index.train(items)
    index.add(items)
    return lambda q: index.search(q, K)[1]


# ---------------------------------------------------------------- benchmark

class Runner:
    def __init__(self, items, states, truth, desc, args, command):
        self.items, self.states, self.truth, self.desc, self.args = items, states, truth, desc, args
        self.command = command
        self.rows: list[dict] = []
        self.library_rows: list[dict] = []  # the library comparison, on its own (smaller) catalog

    def add(self, variant: str, library: str, params: str, search, build_s: float | None = None,
            bytes_: int | None = None, note: str = "", truth: np.ndarray | None = None,
            dest: list | None = None) -> dict:
        got, p50, p90 = timed(search, self.states)
        truth = self.truth if truth is None else truth
        row = {"variant": variant, "library": library, "params": params, "recall@10": recall(got, truth),
               "p50_ms": p50, "p90_ms": p90}
        if build_s is not None:
            row["build_s"] = round(build_s, 1)
        if bytes_ is not None:
            row["mb"] = round(bytes_ / 2**20, 1)
        if note:
            row["note"] = note
        (self.rows if dest is None else dest).append(row)
        log.info("%s", row)
        self.write()
        return row

    def best(self) -> dict | None:
        ok = [r for r in self.rows if r["recall@10"] >= TARGET_RECALL and not r["variant"].startswith("exact")]
        return min(ok, key=lambda r: r["p50_ms"]) if ok else None

    def write(self) -> None:
        best = self.best()
        exact = [r for r in self.rows if r["variant"] == "exact fp32" and r["library"] == "onnxruntime"]
        doc = {"n_items": int(len(self.items)), "queries": int(len(self.states)), "k": K,
               "threads": self.args.threads, "timed": "one query at a time (batch 1), search only: user state in, "
                                                      "top-10 rows out",
               "index": f"{best['library']} {best['variant']} ({best['params']})" if best else None,
               "recall@10": best["recall@10"] if best else None, "p50_ms": best["p50_ms"] if best else None,
               "exact_p50_ms": exact[0]["p50_ms"] if exact else None,
               "target": f"p50 < {TARGET_MS} ms at recall@10 >= {TARGET_RECALL}",
               "target_met": bool(best and best["p50_ms"] < TARGET_MS),
               "vectors": self.desc, "machine": machine_info(), "command": self.command, "rows": self.rows,
               # other jobs share this machine's cores: the 1-minute load average says how much
               "load_average_1m": round(os.getloadavg()[0], 2)}
        if self.library_rows:
            doc["library_comparison"] = self.library_rows
            doc["library_comparison_n_items"] = self.args.libraries_n_items
        write_section("ann", doc, results_dir=self.args.results_dir)


def run(args) -> dict:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    from genattn_export.ann import AnnOptions, build_index
    from genattn_runtime.ann import AnnIndex

    ck = Path(args.checkpoint) if args.checkpoint else (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists()
                                                       and not args.quick else _small_checkpoint())
    items, states, desc = model_vectors(ck, args.n_items, args.queries)
    truth = exact_top(states, items)
    cmd = "python -m benchmarks.ann " + " ".join(sys.argv[1:])
    r = Runner(items, states, truth, desc, args, cmd.strip())
    n, d = items.shape

    for table in ("fp32", "fp16", "int8"):
        try:
            r.add(f"exact {table}", "onnxruntime", "MatMul+TopK" if table != "int8" else "MatMulInteger+TopK",
                  _ort_scan(items, table, args.threads), bytes_=n * d * {"fp32": 4, "fp16": 2, "int8": 1}[table])
        except Exception as e:  # an operator this onnxruntime lacks for the type: recorded, not fatal
            r.rows.append({"variant": f"exact {table}", "library": "onnxruntime", "params": "n/a",
                           "note": f"not runnable: {type(e).__name__}: {str(e)[:120]}"})
        r.add(f"exact {table}", "faiss", {"fp32": "IndexFlatIP", "fp16": "SQfp16 (= --ann flat-fp16)", "int8": "SQ8 (per-dim)"}[table],
              _faiss_flat(items, table), bytes_=n * d * {"fp32": 4, "fp16": 2, "int8": 1}[table])

    for kind, sweep in (("hnsw", args.ef_search), ("ivfpq", args.nprobe)):
        opts = AnnOptions(kind=kind, threads=args.threads, m=args.m, ef_construction=args.ef_construction)
        t = time.perf_counter()
        index, params = build_index(items, opts)
        build_s = time.perf_counter() - t
        searcher = AnnIndex(index=index, kind=kind, n_items=n, dim=d, params={})
        for v in sweep:
            p = {**params, "ef_search": v} if kind == "hnsw" else {**params, "nprobe": v}
            searcher.configure(p)
            shown = ", ".join(f"{a}={b}" for a, b in searcher.params.items())
            if kind == "hnsw":
                shown = f"M={params['m']}, efC={params['ef_construction']}, " + shown
            else:
                shown = f"PQ{params['pq_m']}x{params['pq_bits']}, " + shown
            r.add(kind, "faiss", shown, lambda q: searcher.search(q, K)[1] - 1, build_s)
        del index, searcher

    if args.libraries:
        _other_libraries(r, items, args)
    return {"rows": r.rows, "best": r.best()}


def _other_libraries(r: Runner, items: np.ndarray, args) -> None:
    """faiss, hnswlib and usearch HNSW with the same settings (M, efConstruction) and ef sweep, on the
    first --libraries-n-items items (a 1M build takes minutes per library on one thread)."""
    items = np.ascontiguousarray(items[:args.libraries_n_items])
    n, d = items.shape
    truth = exact_top(r.states, items)
    import faiss

    t = time.perf_counter()
    f = faiss.IndexHNSWFlat(d, args.m, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = args.ef_construction
    f.add(items)
    build_s = time.perf_counter() - t
    for ef in args.ef_search:
        f.hnsw.efSearch = ef
        r.add("hnsw", "faiss", f"M={args.m}, efC={args.ef_construction}, ef={ef}",
              lambda q: f.search(q, K)[1], build_s, truth=truth, dest=r.library_rows)
    del f
    try:
        import hnswlib
    except ImportError:
        log.warning("hnswlib not installed: skipped")
    else:
        t = time.perf_counter()
        h = hnswlib.Index("ip", d)
        h.init_index(n, M=args.m, ef_construction=args.ef_construction)
        h.set_num_threads(args.threads)
        h.add_items(items, num_threads=args.threads)
        build_s = time.perf_counter() - t
        for ef in args.ef_search:
            h.set_ef(ef)
            r.add("hnsw", "hnswlib", f"M={args.m}, efC={args.ef_construction}, ef={ef}",
                  lambda q: h.knn_query(q, K, num_threads=1)[0], build_s, truth=truth, dest=r.library_rows)
        del h
    try:
        from usearch.index import Index
    except ImportError:
        log.warning("usearch not installed: skipped")
    else:
        t = time.perf_counter()
        u = Index(ndim=d, metric="ip", dtype="f32", connectivity=args.m, expansion_add=args.ef_construction)
        u.add(np.arange(n), items, threads=args.threads)
        build_s = time.perf_counter() - t
        for ef in args.ef_search:
            u.expansion_search = ef
            r.add("hnsw", "usearch", f"M={args.m}, efC={args.ef_construction}, ef={ef}",
                  lambda q: u.search(q[0], K, threads=1).keys[None], build_s, truth=truth, dest=r.library_rows)


E2E_NAME = "ann_end_to_end"
# Runtime internals timed per request by wrapping them (the same wrappers in every runtime
# compared): id encoding, the state graph, the index search with seen items removed.
PARTS = ("encode", "state", "search")


def _worker() -> int:
    """One Recommender in its own process, driven by JSON lines on stdin (--worker). The runtime is
    whichever `genattn_runtime` this interpreter imports: PYTHONPATH decides (--before)."""
    import json

    import genattn_runtime.backends.ann as ann_backend
    from genattn_runtime import Recommender

    clock = dict.fromkeys(PARTS, 0.0)

    def timed(part, fn):
        def call(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                clock[part] += time.perf_counter() - t
        return call

    ann_backend.top_k_excluding = timed("search", ann_backend.top_k_excluding)
    rec = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "load":
            if rec is not None:
                rec.close()
            rec = Recommender.load(cmd["bundle"], backend="cpu", threads=cmd["threads"], **cmd.get("load", {}))
            if hasattr(rec._backend, "state"):
                rec._backend.state.run = timed("state", rec._backend.state.run)
            rec._encode = timed("encode", rec._encode)
            out = {"ann": rec.metadata().get("ann")}
        else:
            hists = json.loads(Path(cmd["histories"]).read_text())
            for h in hists[:cmd["warmup"]]:
                rec.recommend(h, k=cmd["k"])
            rows, items = [], []
            for h in hists:
                for part in PARTS:
                    clock[part] = 0.0
                t = time.perf_counter()
                r = rec.recommend(h, k=cmd["k"])
                rows.append([time.perf_counter() - t, *(clock[p] for p in PARTS)])
                items.append(r.items)
            out = {"rows": rows, "items": items}
        print(json.dumps(out), flush=True)
    return 0


class _Worker:
    def __init__(self, name: str, pythonpath: str | None, threads: int, load: dict | None = None):
        """load: Recommender.load options of this worker's ANN bundle (e.g. another nprobe)."""
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        self.name, self.load = name, load or {}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.ann", "--worker"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **cmd) -> dict:
        import json

        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.name!r} exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _runtime_at(rev: str, into: Path) -> str:
    """A PYTHONPATH entry whose `genattn_runtime` is the repository's runtime/ at git revision `rev`."""
    import subprocess
    import tarfile

    tar = into / "runtime.tar"
    subprocess.run(["git", "archive", "-o", str(tar), rev, "runtime"], cwd=REPO, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "tree", filter="data")
    (into / "path").mkdir()
    (into / "path" / "genattn_runtime").symlink_to(into / "tree" / "runtime")
    return str(into / "path")


def _stats(ms: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def end_to_end(args) -> dict:
    """`Recommender.recommend` at batch 1 on real bundles over the expanded catalog: the checkpoint's
    model with its item table replaced by the --n-items expanded one, exported exact and with
    `--ann ivfpq` at the export defaults (the recall gate runs on synthetic users, since the
    checkpoint's data no longer matches the catalog; export tunes the search breadth to the floor),
    timed on real users' raw-id histories. With --before REV the same ANN bundle is also served
    by the runtime of git revision REV: the two run in separate processes, one round of every
    history each, alternating (before, after, before, ...), so both see the same machine load.
    Results: benchmarks/results/ann_end_to_end.{json,md}."""
    import dataclasses
    import json

    import torch

    from genattn.checkpoint import checkpoint_data, load_checkpoint, save_checkpoint
    from genattn.data import leave_one_out
    from genattn.models import SASRec
    from genattn_export import ExportOptions, export_bundle
    from genattn_export.ann import AnnOptions, AnnRecallError

    from .machine import git_commit
    from .record import update_results
    from .serving_scale import RESULTS

    torch.set_num_threads(args.threads)
    src = Path(args.checkpoint) if args.checkpoint else (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists()
                                                        and not args.quick else _small_checkpoint())
    ck = load_checkpoint(src)
    trained = list(ck.item_ids)
    users = leave_one_out(checkpoint_data(ck)).test_inputs
    hists = [[(str if args.string_ids else lambda x: x)(trained[i - 1]) for i in u] for u in users[:args.queries]]
    cache = Path(args.cache_dir or CACHE) / f"e2e-{Path(src).name}-{args.n_items}"
    bundles = {"exact": cache / "exact", "ivfpq": cache / "ivfpq"}
    exports: dict = {}
    if not (args.reuse_bundles and all((b / "manifest.json").exists() for b in bundles.values())):
        base = ck.model.item_emb.weight.detach()[1:].float().numpy()
        items = expand_items(base, args.n_items)
        cfg = dataclasses.replace(ck.run.model, n_items=args.n_items)
        model = SASRec(cfg)
        model.load_state_dict({k: v for k, v in ck.model.state_dict().items() if k != "item_emb.weight"}, strict=False)
        with torch.no_grad():
            model.item_emb.weight.copy_(torch.from_numpy(np.concatenate([np.zeros((1, cfg.d_model), np.float32),
                                                                         items])))
        del items
        ids = trained + [f"expanded-{i}" for i in range(args.n_items - len(trained))]
        pop = np.concatenate([ck.popularity, np.zeros(args.n_items - len(trained), dtype=np.int64)])
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        save_checkpoint(cache / "ck", model, dataclasses.replace(ck.run, model=cfg), item_ids=ids, popularity=pop,
                        n_users=ck.n_users)
        del model
        for name, ann in (("exact", None), ("ivfpq", AnnOptions(kind="ivfpq", threads=args.threads))):
            t = time.perf_counter()
            try:
                export_bundle(cache / "ck", bundles[name], ExportOptions(k=100, verify_users=0, ann=ann))
            except AnnRecallError as e:
                exports[name] = {"refused": str(e)[:400]}
                continue
            exports[name] = {"export_s": round(time.perf_counter() - t, 1)}
            log.info("exported %s in %.0f s", name, exports[name]["export_s"])
    manifest = json.loads((bundles["ivfpq"] / "manifest.json").read_text())["ann"]

    out_dir = Path(args.results_dir) if args.results_dir else RESULTS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "hists.json").write_text(json.dumps(hists))
        workers = [("after", None, None)]
        if args.before:
            (tmp / "before").mkdir()
            workers.insert(0, (f"before ({args.before})", _runtime_at(args.before, tmp / "before"), None))
        start = (manifest.get("tuning") or {}).get("start", {})
        if start.get("nprobe") not in (None, manifest["params"]["nprobe"]):  # what tuning saved, in the same run
            workers.append((f"after, nprobe {start['nprobe']} (the tuning's start)", None, {"nprobe": start["nprobe"]}))
        procs = [_Worker(name, path, args.threads, load) for name, path, load in workers]
        try:
            # the exact bundle once, in the current runtime (context, and the reference lists)
            procs[-1].ask(cmd="load", bundle=str(bundles["exact"]), threads=args.threads)
            exact = procs[-1].ask(cmd="time", histories=str(tmp / "hists.json"), k=K, warmup=20)
            for w in procs:
                w.ask(cmd="load", bundle=str(bundles["ivfpq"]), threads=args.threads, load=w.load)
            runs = {w.name: [] for w in procs}
            items = {}
            for _ in range(args.rounds):  # alternating, so both see the same load
                for w in procs:
                    got = w.ask(cmd="time", histories=str(tmp / "hists.json"), k=K, warmup=20)
                    runs[w.name] += got["rows"]
                    items[w.name] = got["items"]
        finally:
            for w in procs:
                w.close()

    def overlap(lists) -> float:
        return round(float(np.mean([len(set(a) & set(b)) / K for a, b in zip(lists, exact["items"])])), 4)

    rows = [{"bundle": "exact fp32 (ONNX graph scores all items, K=100)", "runtime": "after", "requests": len(hists),
             **_stats(np.asarray(exact["rows"])[:, 0] * 1e3),
             "encode_p50_ms": round(float(np.median(np.asarray(exact["rows"])[:, 1])) * 1e3, 4)}]
    for name, r in runs.items():
        a = np.asarray(r) * 1e3
        row = {"bundle": "ivfpq (export defaults, tuned)", "runtime": name, "requests": len(a), **_stats(a[:, 0])}
        for j, part in enumerate(PARTS, 1):
            row[f"{part}_p50_ms"] = round(float(np.median(a[:, j])), 4)
        row["search_p99_ms"] = round(float(np.percentile(a[:, 3], 99)), 4)
        row["rest_p50_ms"] = round(float(np.median(a[:, 0] - a[:, 1:].sum(1))), 4)
        row["top10_overlap_with_exact"] = overlap(items[name])
        rows.append(row)
        log.info("%s", row)
    seen = [len(set(h)) for h in hists]
    doc = {"n_items": args.n_items, "k": K, "threads": args.threads, "rounds": args.rounds,
           "histories": f"{len(hists)} real users' raw-id histories of {repo_path(src)}'s data "
                        f"({'as strings' if args.string_ids else 'as the catalog has them'}; distinct items per "
                        "history: median "
                        f"{int(np.median(seen))}, mean {np.mean(seen):.0f}, max {max(seen)}), newest max_len "
                        "used, seen items excluded",
           "timed": "Recommender.recommend(history, k=10) at batch 1, wall clock per call; encode / state / "
                    "search: the runtime's id encoding, state graph and index search (seen items removed) "
                    "inside it; rest: validation, inputs, decoding",
           "catalog": "the checkpoint's items followed by expanded ones (expand_items), ids 'expanded-<n>'",
           "ann_params": manifest["params"], "export_recall": manifest["recall"],
           "tuning": manifest.get("tuning"), "exports": exports or "reused from an earlier run (--reuse-bundles)",
           "rows": rows, "command": "python -m benchmarks.ann " + " ".join(sys.argv[1:]),
           "commit": git_commit(), "machine": machine_info(),
           "faiss": __import__("faiss").__version__, "load_average_1m_end": round(os.getloadavg()[0], 2)}
    key = f"n{args.n_items}" + ("-string-ids" if args.string_ids else "")
    update_results(out_dir / f"{E2E_NAME}.json", lambda d: d.__setitem__(key, doc), _render_e2e)
    return {"rows": rows}


def tuning(args) -> dict:
    """Export's widening (`tune_search`) timed at the --end-to-end catalog: its expanded checkpoint
    and ivfpq index (run --end-to-end first), the synthetic users export measures recall on at
    that catalog, and start settings / floors the index misses. Merged into
    ann_end_to_end.json as "tuning-n<items>"."""
    import json

    import faiss
    import torch

    from genattn.checkpoint import load_checkpoint
    from genattn_export import ExportOptions
    from genattn_export.ann import RECALL_K, exact_top, item_vectors, recall_queries, torch_states, tune_search
    from genattn_export.graph import GraphSpec, StateGraph
    from genattn_runtime.ann import AnnIndex

    from .machine import git_commit
    from .record import update_results
    from .serving_scale import RESULTS

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    src = Path(args.checkpoint) if args.checkpoint else (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists()
                                                        and not args.quick else _small_checkpoint())
    cache = Path(args.cache_dir or CACHE) / f"e2e-{Path(src).name}-{args.n_items}"
    if not (cache / "ivfpq" / "manifest.json").exists():
        raise SystemExit(f"--tuning needs the bundles of --end-to-end at {args.n_items} items: run that first")
    model = load_checkpoint(cache / "ck").model.eval()
    noise = 0  # the expanded checkpoints are softmax models: no noise input
    spec = GraphSpec.build_state(model, noise_size=noise)
    graph = StateGraph(model, ExportOptions().sampling(model.cfg.attention), False)
    vectors = item_vectors(model)
    queries, source = recall_queries(spec, len(vectors), None, min(args.queries, 1000), noise)
    states = torch_states(graph, queries)
    t = time.perf_counter()
    exact = exact_top(states, vectors, RECALL_K)
    exact_s = time.perf_counter() - t
    meta = json.loads((cache / "ivfpq" / "manifest.json").read_text())["ann"]
    searcher = AnnIndex(index=faiss.read_index(str(cache / "ivfpq" / meta["file"])), kind="ivfpq",
                        n_items=len(vectors), dim=vectors.shape[1], params={})
    runs = []
    for start, floor in (({"nprobe": 16, "k_factor": 4.0}, 0.95), ({"nprobe": 32, "k_factor": 16.0}, 0.95),
                         ({"nprobe": 64, "k_factor": 16.0}, 0.99)):
        chosen, recall, record = tune_search(searcher, {**meta["params"], **start}, states, exact, floor,
                                             budget_s=300.0)
        runs.append({"floor": floor, "recall_at_10": recall, **record})
        log.info("tuning from %s to %s: %s in %.1f s", start, floor, record["chosen"], record["seconds"])
    doc = {"n_items": args.n_items, "users": f"{len(states)} {source} users (export's recall users at this catalog)",
           "index": meta["params"], "exact_top10_seconds": round(exact_s, 1), "runs": runs,
           "timed": "tune_search alone: recall@10 measurements of the batched search; the exact top-10 they are "
                    "compared with is computed once before (exact_top10_seconds), as export does for its gate",
           "command": "python -m benchmarks.ann " + " ".join(sys.argv[1:]), "commit": git_commit(),
           "machine": machine_info(), "faiss": faiss.__version__, "threads": args.threads,
           "load_average_1m_end": round(os.getloadavg()[0], 2)}
    out_dir = Path(args.results_dir) if args.results_dir else RESULTS
    update_results(out_dir / f"{E2E_NAME}.json", lambda d: d.__setitem__(f"tuning-n{args.n_items}", doc), _render_e2e)
    return doc


def _render_tuning(d: dict) -> list[str]:
    lines = [f"## Export tuning at {d['n_items']:,} items", "", f"Command: `{d['command']}`  ",
             f"Commit: {d['commit']}  ", f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores; faiss "
             f"{d['faiss']}; {d['threads']} thread(s)  ", f"Users: {d['users']}  ", f"Index: {d['index']}  ",
             f"Timed: {d['timed']}; exact top-10: {d['exact_top10_seconds']} s", "",
             "| start | floor | chosen | recall@10 | trials | seconds |", "|---|---|---|---|---|---|"]
    for r in d["runs"]:
        lines.append(f"| {r['start']} | {r['floor']} | {r['chosen']} | {r['recall_at_10']:.4f} | "
                     f"{len(r['trials'])} | {r['seconds']} |")
    lines.append("")
    if d.get("notes"):
        lines += [d["notes"], ""]
    return lines


def _render_e2e(doc: dict) -> str:
    lines = ["# ANN bundles end to end", "",
             "Written by `python -m benchmarks.ann --end-to-end` (benchmarks/ann.py, `end_to_end`).", ""]
    for key, d in sorted(doc.items()):
        if key.startswith("tuning"):
            lines += _render_tuning(d)
            continue
        lines += [f"## {d['n_items']:,} items{', string ids' if key.endswith('string-ids') else ''}", "",
                  f"Command: `{d['command']}`  ", f"Commit: {d['commit']}  ",
                  f"Machine: {d['machine']['cpu']}, {d['machine']['cores']} cores; faiss {d['faiss']}, "
                  f"onnxruntime {d['machine']['versions'].get('onnxruntime')}; {d['threads']} thread(s)  ",
                  f"Timed: {d['timed']}  ", f"Histories: {d['histories']}  ", f"Catalog: {d['catalog']}  ",
                  f"Index: {d['ann_params']}; export recall@10 {d['export_recall']['recall_at_10']:.4f} on "
                  f"{d['export_recall']['queries']} {d['export_recall']['source']} users", ""]
        if d.get("tuning"):
            t = d["tuning"]
            lines += [f"Export tuning: start {t['start']}, chosen {t['chosen']}, {len(t['trials'])} trial(s) in "
                      f"{t['seconds']} s", ""]
        if isinstance(d.get("exports"), dict):
            lines += ["Exports: " + ", ".join(f"{k} {v}" for k, v in d["exports"].items()), ""]
        cols = ["bundle", "runtime", "p50_ms", "p90_ms", "p99_ms", "encode_p50_ms", "state_p50_ms", "search_p50_ms",
                "search_p99_ms", "rest_p50_ms", "top10_overlap_with_exact", "requests"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in d["rows"]:
            lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
        lines.append("")
        if d.get("notes"):
            lines += [d["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ann", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Small catalog and few queries (seconds): a smoke run.")
    ap.add_argument("--n-items", type=int, default=None, help="Catalog size [1000000; --quick: 5000].")
    ap.add_argument("--queries", type=int, default=None, help="User states timed [1000; --quick: 50].")
    ap.add_argument("--checkpoint", help="Trained checkpoint whose item table and users are expanded.")
    ap.add_argument("--threads", type=int, default=1, help="Threads for every library [1].")
    ap.add_argument("--m", type=int, default=32, help="HNSW links per node [32].")
    ap.add_argument("--ef-construction", type=int, default=200, help="HNSW build breadth [200].")
    ap.add_argument("--ef-search", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="HNSW search breadths swept [32,64,128,256].")
    ap.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="IVF lists probed, swept [16,32,64,128,256].")
    ap.add_argument("--libraries", action="store_true",
                    help="Also compare faiss, hnswlib and usearch HNSW (when installed) on --libraries-n-items.")
    ap.add_argument("--libraries-n-items", type=int, default=200_000, help="Catalog of the comparison [200000].")
    ap.add_argument("--results-dir", type=Path, default=None, help="Where serving_scale.{json,md} go.")
    ap.add_argument("--end-to-end", action="store_true",
                    help="Instead: export exact and ivfpq bundles over the expanded catalog and time "
                         "Recommender.recommend at batch 1 (benchmarks/results/ann_end_to_end.{json,md}).")
    ap.add_argument("--before", metavar="REV",
                    help="--end-to-end: also serve the ANN bundle with the runtime of git revision REV, "
                         "interleaved with the current one.")
    ap.add_argument("--rounds", type=int, default=5, help="--end-to-end: rounds over the histories [5].")
    ap.add_argument("--string-ids", action="store_true",
                    help="--end-to-end: histories send the item ids as strings (\"12\" for 12).")
    ap.add_argument("--reuse-bundles", action="store_true",
                    help="--end-to-end: reuse the bundles an earlier run exported (runs/ann_cache).")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="--end-to-end: where the exported bundles are kept [runs/ann_cache].")
    ap.add_argument("--tuning", action="store_true",
                    help="Instead: time export's search widening on the --end-to-end catalog (run that first).")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker()
    args.n_items = args.n_items or (5000 if args.quick else 1_000_000)
    args.queries = args.queries or (50 if args.quick else 1000)
    args.ef_search = args.ef_search or ([64] if args.quick else [32, 64, 128, 256])
    args.nprobe = args.nprobe or ([16] if args.quick else [16, 32, 64, 128, 256])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.end_to_end:
        end_to_end(args)
        return 0
    if args.tuning:
        tuning(args)
        return 0
    out = run(args)
    best = out["best"]
    print(f"best: {best}" if best else f"no index reached recall@10 {TARGET_RECALL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
