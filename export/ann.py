"""ANN index over the item table, built, measured and written at export (`genattn export --ann`).

The bundle then carries a faiss index over items 1..N (row r = internal item r + 1; the
padding item 0 is never indexed), ranked by inner product, the model's own score. Before
anything is written, export measures the index's recall@10 against exact scoring on user
states of the checkpoint's real users (synthetic histories when its data is not usable
here). `tune_search` then sets the search breadth (hnsw efSearch, ivfpq nprobe and k_factor)
to the narrowest that reaches `min_recall`: it widens the export's settings by doubling when
they fall short and halves them while the floor holds, within `tune_seconds`, and records what
it chose in the manifest; an index still below the floor is refused, as parity refuses a graph.
A breadth given on the command line is kept unless it misses the floor (then only widened).

faiss was chosen by measurement over hnswlib and usearch (docs/export.md,
benchmarks/results/serving_scale.md); the runtime searches with the same code
(`genattn_runtime.ann`) that measures recall here.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genattn_runtime.ann import ID_OFFSET, AnnIndex, import_faiss
from genattn_runtime.bundle import ANN_KINDS, INPUT_NOISE, INPUT_SEQ, OUTPUT_STATE

from .graph import ExportError, GraphSpec, StateGraph, eval_mode, example_inputs
from .verify import ATOL, RTOL, ParityError, ort_session

log = logging.getLogger(__name__)

RECALL_K = 10


class AnnRecallError(ExportError):
    """The index's recall@10 against exact scoring is below the required minimum: nothing was written."""


# Where tuning starts when the breadth is not given: wide enough for recall@10 0.95 on the
# ML-1M and expanded 1M catalogs measured (docs/export.md); tuning narrows from here.
DEFAULT_BREADTH = {"ef_search": 128, "nprobe": 64, "k_factor": 16.0}


@dataclass
class AnnOptions:
    kind: str = "hnsw"              # "hnsw" (graph index) | "ivfpq" (inverted lists of PQ codes + exact re-rank)
                                    # | "flat-fp16" (a full scan of an fp16 copy of the table: near-exact, half the bytes)
    m: int = 32                     # hnsw: links per node
    ef_construction: int = 200      # hnsw: build-time breadth
    # Search breadth (the runtime may override it at load). None: start at the default and let
    # tune_search narrow it to the floor; a value given is kept, only widened if recall misses.
    ef_search: int | None = None    # hnsw: efSearch (default DEFAULT_BREADTH["ef_search"])
    nlist: int | None = None        # ivfpq: inverted lists (default 4·sqrt(N), at least 39 items per list)
    nprobe: int | None = None       # ivfpq: lists searched (default DEFAULT_BREADTH["nprobe"])
    pq_m: int | None = None         # ivfpq: PQ sub-quantizers, must divide d_model (default d_model / 4)
    pq_bits: int = 8                # ivfpq: bits per code (lowered for catalogs too small to train 2^bits centroids)
    k_factor: float | None = None   # ivfpq: re-rank k·k_factor PQ candidates exactly (default 16)
    min_recall: float = 0.95        # refuse the export below this recall@10 against exact scoring
    tune: bool = True               # hnsw / ivfpq: the narrowest search reaching min_recall (tune_search)
    tune_seconds: float = 300.0     # budget of that tuning (recall measurements; the build is not counted)
    recall_users: int = 1000        # user states the recall is measured on
    threads: int = 0                # faiss threads while building (0 = faiss's default: all cores)

    def check(self) -> None:
        if self.kind not in ANN_KINDS:
            raise ExportError(f"--ann must be one of {ANN_KINDS}, got {self.kind!r}")
        for name in ("m", "ef_construction", "recall_users"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ExportError(f"--ann-{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("nlist", "pq_m", "ef_search", "nprobe"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ExportError(f"--ann-{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not 1 <= self.pq_bits <= 16:
            raise ExportError(f"--ann-pq-bits must be in 1..16, got {self.pq_bits}")
        if self.k_factor is not None and not self.k_factor >= 1.0:
            raise ExportError(f"--ann-k-factor must be at least 1, got {self.k_factor}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ExportError(f"--ann-min-recall must be in [0, 1], got {self.min_recall}")
        if not self.tune_seconds >= 0.0:
            raise ExportError(f"tune_seconds must be at least 0, got {self.tune_seconds}")


    def breadth(self, name: str):
        """A search-breadth setting: the value given, else the default tuning starts from."""
        v = getattr(self, name)
        return DEFAULT_BREADTH[name] if v is None else v

    def tuned_down(self) -> tuple[str, ...]:
        """The breadth settings not given, which tuning may narrow below their defaults."""
        return tuple(name for name in DEFAULT_BREADTH if getattr(self, name) is None)

    def params_for(self, n: int, d: int) -> dict:
        """The index parameters for a catalog of n items of width d, as the manifest records them."""
        if self.kind == "hnsw":
            return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.breadth("ef_search")}
        if self.kind == "ivfpq":
            return _ivfpq_params(self, n, d)
        return {}


def item_vectors(model) -> np.ndarray:
    """Items 1..N of the embedding table the graph scores against, float32 (N, D)."""
    return np.ascontiguousarray(model.item_emb.weight.detach()[1:].float().cpu().numpy())


def _ivfpq_params(opts: AnnOptions, n: int, d: int) -> dict:
    nlist = opts.nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
    if nlist > n:
        raise ExportError(f"--ann-nlist {nlist} exceeds the catalog's {n} items")
    pq_m = opts.pq_m or max(1, d // 4)
    if d % pq_m:
        raise ExportError(f"--ann-pq-m {pq_m} must divide d_model {d}")
    bits = min(opts.pq_bits, max(1, int(math.log2(n))))  # k-means needs at least 2^bits training points
    return {"nlist": nlist, "nprobe": min(opts.breadth("nprobe"), nlist), "pq_m": pq_m, "pq_bits": bits,
            "k_factor": float(opts.breadth("k_factor"))}


def build_index(vectors: np.ndarray, opts: AnnOptions) -> tuple[object, dict]:
    """(faiss index over `vectors`, its parameters as the manifest records them)."""
    faiss = import_faiss()
    n, d = vectors.shape
    params = opts.params_for(n, d)
    if opts.threads:
        faiss.omp_set_num_threads(opts.threads)
    if opts.kind == "flat-fp16":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)  # a no-op for fp16 (no ranges to learn), required by the API
    elif opts.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, opts.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts.ef_construction
    else:
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["pq_m"], params["pq_bits"],
                               faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1  # small catalogs: no warnings about few points per list
        ivf.train(vectors)
        index = faiss.IndexRefineFlat(ivf)  # exact re-rank of the PQ candidates (faiss keeps ivf referenced)
    index.add(vectors)
    return index, params


def state_feeds(spec: GraphSpec, inputs: dict[str, np.ndarray], noise_size: int,
                seed: int = 21) -> dict[str, np.ndarray]:
    """The state graph's feeds for `inputs` (item_seq, and item_ages where the graph takes them)."""
    feeds = dict(inputs)
    if noise_size:
        feeds[INPUT_NOISE] = np.random.default_rng(seed).standard_normal((len(inputs[INPUT_SEQ]), noise_size),
                                                                         dtype=np.float32)
    return {n: feeds[n] for n in spec.input_names}


def recall_queries(spec: GraphSpec, n_items: int, real: dict[str, np.ndarray] | None, n: int,
                   noise_size: int) -> tuple[dict[str, np.ndarray], str]:
    """Inputs of the users the recall is measured on: real histories, else synthetic ones."""
    if real is not None and len(real[INPUT_SEQ]):
        return state_feeds(spec, {name: a[:n] for name, a in real.items()}, noise_size), "real"
    ex = example_inputs(spec, n, n_items, seed=31)
    return state_feeds(spec, {name: t.numpy() for name, t in ex.items() if name != INPUT_NOISE}, noise_size), \
        "synthetic"


def torch_states(graph: StateGraph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad(), eval_mode(graph):
        out = graph(**{name: torch.from_numpy(a) for name, a in feeds.items()})
    return out.float().numpy()


def exact_top(states: np.ndarray, vectors: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Exact top-k internal items (1..N) per state, in blocks so that 1M items fit in memory."""
    out = []
    for i in range(0, len(states), block):
        s = states[i:i + block] @ vectors.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.argsort(-s, axis=1)
        out.append(top + ID_OFFSET)
    return np.concatenate(out)


def recall_at_k(index: AnnIndex, states: np.ndarray, vectors: np.ndarray, k: int = RECALL_K,
                exact: np.ndarray | None = None) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over the states (`exact`: exact_top's answer, if known)."""
    k = min(k, len(vectors)) if exact is None else exact.shape[1]
    exact = exact_top(states, vectors, k) if exact is None else exact
    _, got = index.search(states, k)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, exact)]))


def _breadth(p: dict) -> dict:
    """The search-breadth settings among `p` (what tuning changes and records)."""
    return {k: p[k] for k in ("ef_search", "nprobe", "k_factor") if k in p}


# Widening stops here: past these the search costs more than an exact scan would save (ivfpq
# nprobe stops at nlist, every list). Narrowing stops at efSearch 16 (k = 10 needs a few more
# candidates than it returns), nprobe 1 and k_factor 1.
MIN_TUNED = {"ef_search": 16, "nprobe": 1, "k_factor": 1.0}
MAX_TUNED_EF_SEARCH = 4096
MAX_TUNED_K_FACTOR = 256.0


def tune_search(searcher: AnnIndex, params: dict, states: np.ndarray, exact: np.ndarray, floor: float,
                budget_s: float, narrow: tuple[str, ...] = ()) -> tuple[dict, float, dict]:
    """The narrowest search that reaches recall@10 `floor`: (params, recall, the tuning record).

    Starts at `params` (the export's options). Below the floor it widens: hnsw efSearch
    doubles; ivfpq measures both nprobe x2 and k_factor x2 and takes, of those that reach the
    floor, the faster (the time of the batched recall search), else the one with the higher
    recall. At the floor it narrows the knobs named in `narrow` (those the user did not set):
    each step tries every such knob at x0.5, then, if that misses the floor, x0.75 and x0.875,
    and keeps the fastest setting that still reaches the floor and is faster, until none is.
    So the defaults are a starting point, not a fixed cost: a catalog that needs less search
    gets less (at 1M items the defaults sat just above the floor, and both halvings fell below
    it). A step is only started within `budget_s`; a setting is measured once.
    """
    t0 = time.perf_counter()
    seen: dict[tuple, dict] = {}
    trials: list[dict] = []

    def measure(p: dict) -> dict:
        key = tuple(sorted(_breadth(p).items()))
        if key not in seen:
            searcher.configure(p)
            t = time.perf_counter()
            r = recall_at_k(searcher, states, None, exact=exact)
            seen[key] = {**_breadth(searcher.params), "recall_at_10": r,
                         "search_ms_per_user": round((time.perf_counter() - t) * 1e3 / len(states), 4)}
            trials.append(seen[key])
        return seen[key]

    def wider(b: dict) -> list[dict]:
        if searcher.kind == "hnsw":
            return [{**params, "ef_search": b["ef_search"] * 2}] if b["ef_search"] < MAX_TUNED_EF_SEARCH else []
        cur = {**params, "nprobe": b["nprobe"], "k_factor": b["k_factor"]}
        new = {"nprobe": min(b["nprobe"] * 2, searcher.params["nlist"]),
               "k_factor": min(b["k_factor"] * 2, MAX_TUNED_K_FACTOR)}
        return [{**cur, name: v} for name, v in new.items() if v != b[name]]

    def narrower(b: dict, name: str, factor: float) -> dict | None:
        """b with knob `name` scaled by factor (None: not narrowable, or no change left)."""
        if name not in narrow:
            return None
        v = max(MIN_TUNED[name], int(b[name] * factor) if name != "k_factor" else b[name] * factor)
        return {**params, **_breadth(b), name: v} if v < b[name] else None

    def in_budget() -> bool:
        return time.perf_counter() - t0 < budget_s

    best = measure(params)
    while best["recall_at_10"] < floor and in_budget():
        tried = [measure(p) for p in wider(best)]
        if not tried:
            break
        ok = [t for t in tried if t["recall_at_10"] >= floor]
        best = (min(ok, key=lambda t: t["search_ms_per_user"]) if ok
                else max(tried, key=lambda t: (t["recall_at_10"], -t["search_ms_per_user"])))
    while best["recall_at_10"] >= floor and in_budget():
        ok = []
        for name in _breadth(best):
            for factor in (0.5, 0.75, 0.875):  # the first that keeps the floor, per knob
                p = narrower(best, name, factor)
                t = measure(p) if p is not None else None
                if t is not None and t["recall_at_10"] >= floor:
                    if t["search_ms_per_user"] < best["search_ms_per_user"]:
                        ok.append(t)
                    break
        if not ok:
            break
        best = min(ok, key=lambda t: t["search_ms_per_user"])
    chosen = {**params, **_breadth(best)}
    searcher.configure(chosen)
    record = {"start": _breadth(trials[0]), "chosen": _breadth(chosen),
              "trials": trials, "seconds": round(time.perf_counter() - t0, 3), "budget_seconds": budget_s}
    return chosen, best["recall_at_10"], record


def check_state_parity(graph: StateGraph, onnx_path: str, cases: list[dict[str, np.ndarray]],
                       vectors: np.ndarray, k: int) -> dict:
    """ONNX Runtime's user state against torch's within tolerance, and the exact top-K they imply equal."""
    sess = ort_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if names != [OUTPUT_STATE]:
        raise ParityError(f"ORT outputs {names} != [{OUTPUT_STATE!r}]")
    max_diff, overlap = 0.0, 1.0
    for feeds in cases:
        (got,) = sess.run(None, feeds)
        ref = torch_states(graph, feeds)
        if got.shape != ref.shape:
            raise ParityError(f"user_state shape {got.shape} != torch {ref.shape}")
        diff = np.abs(got - ref)
        max_diff = max(max_diff, float(diff.max()) if diff.size else 0.0)
        if not (diff <= ATOL + RTOL * np.abs(ref)).all():
            raise ParityError(f"user_state: ONNX Runtime vs torch max |diff| {max_diff:.3g} "
                              f"(tolerance {ATOL} + {RTOL}·|x|)")
        a, b = exact_top(got, vectors, k), exact_top(ref, vectors, k)
        overlap = min(overlap, float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])))
    return {"atol": ATOL, "rtol": RTOL, "precision": "fp32", "output": OUTPUT_STATE, "max_abs_diff": max_diff,
            "min_topk_overlap": overlap, "cases": len(cases)}


def build_and_check(graph: StateGraph, spec: GraphSpec, vectors: np.ndarray, queries: dict[str, np.ndarray],
                    source: str, opts: AnnOptions, tmp: Path) -> tuple[str, dict]:
    """Build the index, measure recall@10 through the runtime's search, refuse a poor one, write it.

    Returns (file name in `tmp`, the manifest's "ann" entry).
    """
    faiss = import_faiss()
    t0 = time.perf_counter()
    index, params = build_index(vectors, opts)
    build_s = time.perf_counter() - t0
    n, d = vectors.shape
    searcher = AnnIndex(index=index, kind=opts.kind, n_items=n, dim=d, params={})
    searcher.configure(params)
    states = torch_states(graph, queries)
    exact = exact_top(states, vectors, min(RECALL_K, n))
    tuning = None
    if opts.tune and opts.kind != "flat-fp16":  # a full scan has no breadth to widen
        params, recall, tuning = tune_search(searcher, params, states, exact, opts.min_recall, opts.tune_seconds,
                                             narrow=opts.tuned_down())
        if tuning["chosen"] != tuning["start"]:
            log.info("ANN %s: recall@%d %.4f at %s against the floor %.2f; the search was tuned to %s "
                     "(recall %.4f, %d settings measured in %.1f s)", opts.kind, RECALL_K,
                     tuning["trials"][0]["recall_at_10"], tuning["start"], opts.min_recall, tuning["chosen"], recall,
                     len(tuning["trials"]), tuning["seconds"])
    else:
        recall = recall_at_k(searcher, states, vectors, exact=exact)
    log.info("ANN %s over %d items: recall@%d %.4f on %d %s users (built in %.1f s)", opts.kind, n, RECALL_K,
             recall, len(states), source, build_s)
    if recall < opts.min_recall:
        hint = {"hnsw": "raise --ann-ef-search (or --ann-m / --ann-ef-construction)",
                "ivfpq": "raise --ann-nprobe or --ann-k-factor (or --ann-pq-m)",
                "flat-fp16": "fp16 rounding reorders this model's top items: use hnsw or exact scoring"}[opts.kind]
        tried = (f" (widened up to {tuning['chosen']} in {tuning['seconds']:.0f} s of a {opts.tune_seconds:g} s "
                 "budget)" if tuning and len(tuning["trials"]) > 1 else "")
        raise AnnRecallError(f"ANN index ({opts.kind}, {params}) has recall@{RECALL_K} {recall:.4f} against exact "
                             f"scoring on {len(states)} {source} users{tried}, below --ann-min-recall "
                             f"{opts.min_recall}: {hint}; nothing was written")
    name = f"items.{opts.kind}.faiss"
    faiss.write_index(index, str(tmp / name))
    entry = {"kind": opts.kind, "file": name, "library": "faiss", "library_version": faiss.__version__,
             "metric": "inner_product", "dim": d, "n_vectors": n, "id_offset": ID_OFFSET, "params": params,
             "build_seconds": round(build_s, 3),
             "recall": {"recall_at_10": recall, "min_recall": opts.min_recall, "queries": len(states),
                        "source": source}}
    if tuning is not None:
        entry["tuning"] = tuning
    return name, entry
