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


def end_to_end(args) -> dict:
    """`Recommender.recommend` at batch 1 on real bundles over the expanded catalog: the checkpoint's
    model with its item table replaced by the --n-items expanded one, exported exact and with
    `--ann ivfpq` (export defaults; the recall gate runs on synthetic users, since the checkpoint's
    data no longer matches the catalog), timed on real users' raw-id histories. Merged into the
    "ann" section as "end_to_end"."""
    import dataclasses
    import json

    import torch

    from genattn.checkpoint import checkpoint_data, load_checkpoint, save_checkpoint
    from genattn.data import leave_one_out
    from genattn.models import SASRec
    from genattn_export import ExportOptions, export_bundle
    from genattn_export.ann import AnnOptions, AnnRecallError
    from genattn_runtime import Recommender

    from .serving_scale import RESULTS

    torch.set_num_threads(args.threads)
    src = Path(args.checkpoint) if args.checkpoint else (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists()
                                                        and not args.quick else _small_checkpoint())
    ck = load_checkpoint(src)
    base = ck.model.item_emb.weight.detach()[1:].float().numpy()
    items = expand_items(base, args.n_items)
    cfg = dataclasses.replace(ck.run.model, n_items=args.n_items)
    model = SASRec(cfg)
    state = {k: v for k, v in ck.model.state_dict().items() if k != "item_emb.weight"}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(np.concatenate([np.zeros((1, cfg.d_model), np.float32), items])))
    ids = list(ck.item_ids) + [f"expanded-{i}" for i in range(args.n_items - len(ck.item_ids))]
    pop = np.concatenate([ck.popularity, np.zeros(args.n_items - len(ck.item_ids), dtype=np.int64)])
    users = leave_one_out(checkpoint_data(ck)).test_inputs
    hists = [[ck.item_ids[i - 1] for i in u] for u in users[:args.queries]]
    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE.parent if CACHE.parent.exists() else None) as tmp:
        tmp = Path(tmp)
        save_checkpoint(tmp / "ck", model, dataclasses.replace(ck.run, model=cfg), item_ids=ids, popularity=pop,
                        n_users=ck.n_users)
        configs = [("exact fp32 (ONNX graph, K=100)", None),
                   ("ivfpq (export defaults)", AnnOptions(kind="ivfpq", threads=args.threads))]
        while configs:
            name, ann = configs.pop(0)
            out = tmp / ("ann" if ann else "exact")
            t = time.perf_counter()
            try:
                m = export_bundle(tmp / "ck", out, ExportOptions(k=100, verify_users=0, ann=ann))
            except AnnRecallError as e:  # the gate refused the index: recorded, then once with 4x nprobe
                rows.append({"bundle": name, "refused": str(e)[:300]})
                if ann.nprobe == AnnOptions.nprobe:
                    configs.append((f"ivfpq (nprobe {4 * ann.nprobe})",
                                    dataclasses.replace(ann, nprobe=4 * ann.nprobe)))
                continue
            export_s = time.perf_counter() - t
            # an ANN bundle also at the default nprobe set at load (real users' recall at it: the main rows)
            loads = [({}, "")] + ([({"nprobe": AnnOptions.nprobe}, f", loaded with nprobe={AnnOptions.nprobe}")]
                                  if ann and ann.nprobe != AnnOptions.nprobe else [])
            for load_kw, suffix in loads:
                rec = Recommender.load(out, backend="cpu", threads=args.threads, **load_kw)
                for h in hists[:20]:
                    rec.recommend(h, k=10)
                ts = []
                for h in hists:
                    t = time.perf_counter()
                    rec.recommend(h, k=10)
                    ts.append(time.perf_counter() - t)
                ms = np.asarray(ts) * 1e3
                row = {"bundle": name + suffix, "p50_ms": float(np.percentile(ms, 50)),
                       "p90_ms": float(np.percentile(ms, 90)), "export_s": round(export_s, 1)}
                if ann:
                    row["export_recall@10"] = m["ann"]["recall"]["recall_at_10"]
                    row["recall_users"] = m["ann"]["recall"]["source"]
                    row["params"] = json.dumps(m["ann"]["params"])
                rows.append(row)
                log.info("%s", row)
                rec.close()
    results = Path(args.results_dir) if args.results_dir else RESULTS
    path = results / "serving_scale.json"
    doc = json.loads(path.read_text()).get("ann", {}) if path.exists() else {}
    doc["end_to_end"] = rows
    doc["end_to_end_setup"] = (f"Recommender.recommend(history, k=10), batch 1, {len(hists)} real users' raw-id "
                               f"histories of {repo_path(src)}'s data (newest max_len used, seen items excluded), "
                               f"{args.threads} thread(s), catalog {args.n_items} items; command: python -m "
                               f"benchmarks.ann {' '.join(sys.argv[1:])}; 1-minute load average "
                               f"{os.getloadavg()[0]:.2f} at the end")
    write_section("ann", doc, results_dir=args.results_dir)
    return {"rows": rows}


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
                         "Recommender.recommend at batch 1 (merged into the section as end_to_end).")
    args = ap.parse_args(argv)
    args.n_items = args.n_items or (5000 if args.quick else 1_000_000)
    args.queries = args.queries or (50 if args.quick else 1000)
    args.ef_search = args.ef_search or ([64] if args.quick else [32, 64, 128, 256])
    args.nprobe = args.nprobe or ([16] if args.quick else [16, 32, 64, 128, 256])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.end_to_end:
        args.queries = min(args.queries, 300)
        end_to_end(args)
        return 0
    out = run(args)
    best = out["best"]
    print(f"best: {best}" if best else f"no index reached recall@10 {TARGET_RECALL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
