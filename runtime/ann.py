"""Approximate top-K over the item table: the bundle's ANN index, searched after the graph.

An ANN bundle's graph outputs the user state (the final hidden state the exact graph
multiplies by the item table); this module searches the bundle's faiss index with it
(inner product, the same score as exact scoring) and removes seen items by
over-fetching: it asks for k + (number excluded) neighbours and, when the index still
returns too few usable ones, asks again for twice as many.

    AnnIndex.load(path, meta, ef_search=..., nprobe=...)   # the index file + its manifest entry
    top_k_excluding(index, states, k, exclude)             # one search, seen items removed

This module is the index; the backend that runs the state graph and then searches it is
`backends/ann.py` (AnnBackend). faiss is imported lazily (`pip install 'genattn[ann]'`);
without it, loading an ANN bundle raises AnnUnavailableError. Torch-free: numpy, the
standard library, faiss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, BundleError, InputError

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


def check_search_param(name: str, v: Any) -> int | None:
    """ef_search / nprobe: None (the export's) or an integer in 1..MAX_SEARCH_PARAM; InputError otherwise."""
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
        ef_search, nprobe = check_search_param("ef_search", ef_search), check_search_param("nprobe", nprobe)
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
