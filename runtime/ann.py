"""Approximate top-K over the item table: the bundle's ANN index, searched after the graph.

An ANN bundle's graph outputs the user state (the final hidden state the exact graph
multiplies by the item table); this module searches the bundle's faiss index with it
(inner product, the same score as exact scoring) and removes seen items by
over-fetching: it asks for k + (number excluded) neighbours and, when the index still
returns too few usable ones, asks again for twice as many.

    AnnIndex.load(path, meta, ef_search=..., nprobe=...)   # the index file + its manifest entry
    AnnBackend(...)                                        # the state graph + the index, as a Backend

faiss is imported lazily (`pip install 'genattn[ann]'`); without it, loading an ANN
bundle raises AnnUnavailableError. Torch-free: numpy, the standard library, onnxruntime, faiss.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, BackendOptions, _import_ort, make_session_options
from .bundle import INPUT_EXCLUDE, ORT_DTYPES, OUTPUT_STATE, Manifest, check_graph_io
from .errors import BackendUnavailableError, BundleError, InputError

log = logging.getLogger("genattn_runtime")

ID_OFFSET = 1            # index row r holds internal item r + 1 (0 is the padding item, never indexed)
MAX_SEARCH_PARAM = 1 << 16


class AnnUnavailableError(BackendUnavailableError):
    """The bundle carries an ANN index, but the index library (faiss) is not installed."""


def import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise AnnUnavailableError("this bundle searches an ANN index, which needs faiss: "
                                  "pip install 'genattn[ann]' (faiss-cpu)") from e
    return faiss


def _check_param(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= int(v) <= MAX_SEARCH_PARAM:
        raise InputError(f"{name} must be an integer in 1..{MAX_SEARCH_PARAM}, got {v!r:.40}")
    return int(v)


@dataclass
class AnnIndex:
    """A loaded faiss index over items 1..N with its search parameters set."""
    index: Any
    kind: str
    n_items: int
    dim: int
    params: dict  # the search parameters in force (ef_search, or nprobe and k_factor)

    @classmethod
    def load(cls, path: Path, meta: dict, n_items: int, dim: int, *, ef_search: int | None = None,
             nprobe: int | None = None) -> "AnnIndex":
        """Read the index; check it is what the manifest says (kind, size, width) before serving."""
        faiss = import_faiss()
        ef_search, nprobe = _check_param("ef_search", ef_search), _check_param("nprobe", nprobe)
        kind = meta["kind"]
        try:
            index = faiss.read_index(str(path))
        except Exception as e:  # faiss raises RuntimeError with its C++ message
            raise BundleError(f"{path}: not a readable faiss index ({type(e).__name__}: {str(e)[:200]})") from e
        if index.ntotal != n_items or index.d != dim:
            raise BundleError(f"{path}: the index holds {index.ntotal} vectors of width {index.d}, the manifest "
                              f"says {n_items} items of width {dim}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(f"{path}: the index does not rank by inner product (the model's score)")
        out = cls(index=index, kind=kind, n_items=n_items, dim=dim, params={})
        out.configure(meta["params"], ef_search=ef_search, nprobe=nprobe)
        return out

    def configure(self, built: dict, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Search parameters: the export's unless overridden; a parameter of the other kind is an error."""
        faiss = import_faiss()
        if self.kind == "flat-fp16":  # a full scan: nothing to tune
            if ef_search is not None or nprobe is not None:
                raise InputError("ef_search / nprobe do not apply to a flat-fp16 index (it scans every item)")
            self.params = {}
        elif self.kind == "hnsw":
            if nprobe is not None:
                raise InputError("nprobe applies to ivfpq indexes; this bundle's index is hnsw (use ef_search)")
            hnsw = faiss.downcast_index(self.index)
            if not hasattr(hnsw, "hnsw"):
                raise BundleError("the index file is not an HNSW index, the manifest says hnsw")
            hnsw.hnsw.efSearch = ef_search or built["ef_search"]
            self.params = {"ef_search": int(hnsw.hnsw.efSearch)}
        else:
            if ef_search is not None:
                raise InputError("ef_search applies to hnsw indexes; this bundle's index is ivfpq (use nprobe)")
            try:
                ivf = faiss.extract_index_ivf(self.index)
            except RuntimeError as e:
                raise BundleError("the index file is not an IVF index, the manifest says ivfpq") from e
            ivf.nprobe = min(nprobe or built["nprobe"], ivf.nlist)
            self.params = {"nprobe": int(ivf.nprobe), "nlist": int(ivf.nlist)}
            refine = faiss.downcast_index(self.index)
            if hasattr(refine, "k_factor"):
                refine.k_factor = float(built.get("k_factor", 1.0))
                self.params["k_factor"] = float(refine.k_factor)

    def search(self, states: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (B, n), internal items int64 (B, n)); missing neighbours are item 0, score -inf."""
        n = min(n, self.n_items)
        scores, labels = self.index.search(np.ascontiguousarray(states, dtype=np.float32), n)
        missing = labels < 0
        items = labels + ID_OFFSET
        if missing.any():
            items[missing] = 0
            scores[missing] = -np.inf
        return scores, items


def top_k_excluding(index: AnnIndex, states: np.ndarray, k: int, exclude: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row without the row's excluded items (and without padding), best first.

    Over-fetch: k + the row's number of distinct excluded items; rows that still come back
    short (an approximate index may return fewer usable neighbours) are searched again with
    twice as many, up to the whole catalog. Short rows are padded with item 0, score -inf.
    """
    B = len(states)
    out_items = np.zeros((B, k), dtype=np.int64)
    out_scores = np.full((B, k), -np.inf, dtype=np.float32)
    excl = [frozenset()] * B
    if exclude is not None:
        excl = [frozenset(r[r > 0].tolist()) for r in exclude]
    fetch = k + max((len(e) for e in excl), default=0)
    todo = np.arange(B)
    while len(todo):
        scores, items = index.search(states[todo], fetch)
        short = []
        for r, s, it in zip(todo, scores, items):
            keep = [(i, v) for i, v in zip(it.tolist(), s.tolist()) if i > 0 and i not in excl[r]][:k]
            if len(keep) < k and fetch < index.n_items:
                short.append(r)
                continue
            if keep:
                out_items[r, :len(keep)] = [i for i, _ in keep]
                out_scores[r, :len(keep)] = [v for _, v in keep]
        todo = np.asarray(short, dtype=np.int64)
        fetch = min(2 * fetch, index.n_items)
    return out_items, out_scores


class AnnBackend(Backend):
    """The state graph on ONNX Runtime + the index: feeds in, (top_items, top_scores) (B, K) out,
    like the exact graph's backends. The feeds' exclude_items never reach the graph (the state
    does not depend on them): the search removes them."""

    def __init__(self, manifest: Manifest, model_path: Path, index: AnnIndex, requested: str, opts: BackendOptions,
                 strict: bool = False):
        ort = _import_ort()
        if requested in ("tensorrt",) or opts.cuda_graph_batch:
            msg = (f"backend {requested!r}{' with CUDA graphs' if opts.cuda_graph_batch else ''} serves top-K "
                   "graphs; an ANN bundle's state graph runs on ONNX Runtime")
            if strict:
                raise BackendUnavailableError(msg)
            log.warning("%s; using ONNX Runtime", msg)
        want = {"cuda": "CUDAExecutionProvider", "tensorrt-ep": "CUDAExecutionProvider"}.get(requested)
        providers = ["CPUExecutionProvider"]
        if want and want in ort.get_available_providers():
            providers.insert(0, want)
        elif want and strict:
            raise BackendUnavailableError(f"backend {requested!r} needs {want}, which this onnxruntime lacks")
        try:
            self.session = ort.InferenceSession(str(model_path), make_session_options(opts), providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise BundleError(f"bundle {manifest.path}: ONNX Runtime cannot load {model_path.name} "
                              f"({type(e).__name__}: {str(e)[:300]})") from e
        io = lambda args: [(a.name, ORT_DTYPES.get(a.type, a.type), a.shape) for a in args]  # noqa: E731
        check_graph_io(manifest, io(self.session.get_inputs()), io(self.session.get_outputs()), model_path.name)
        self.providers = self.session.get_providers()
        self.name = {"CUDAExecutionProvider": "cuda"}.get(self.providers[0], "cpu") + "+ann"
        self.index, self.k = index, manifest.k
        self.search_params = {"kind": index.kind, **index.params}

    def states(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        graph_feeds = {n: a for n, a in feeds.items() if n != INPUT_EXCLUDE}
        (state,) = self.session.run([OUTPUT_STATE], graph_feeds)
        return state

    def run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) like a top-K graph; with `need`, only the first `need` slots are searched for (the
        rest hold item 0, score -inf): a search for 10 costs less than one for K = 100."""
        k = self.k if need is None else max(1, min(need, self.k))
        items, scores = top_k_excluding(self.index, self.states(feeds), k, feeds.get(INPUT_EXCLUDE))
        if k < self.k:
            items = np.pad(items, ((0, 0), (0, self.k - k)))
            scores = np.pad(scores, ((0, 0), (0, self.k - k)), constant_values=-np.inf)
        return items, scores

    def describe(self) -> dict:
        return {**super().describe(), "ann": dict(self.search_params)}

    def close(self) -> None:
        self.session = None
        self.index = None
