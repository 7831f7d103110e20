"""Approximate top-K over the item table: the bundle's ANN index, searched after the graph.

An ANN bundle's graph outputs the user state (the final hidden state the exact graph
multiplies by the item table); this module searches the bundle's faiss index with it
(inner product, the same score as exact scoring) and removes seen items: it asks for
k plus a small margin and drops the seen ones; a row that comes back short is searched
again with its seen items filtered inside the index (a faiss IDSelector), for k.

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
# First search: k + min(seen, SEEN_MARGIN) neighbours. A search's cost grows with the number
# asked for (IVF-PQ re-ranks k_factor times as many): asking for every seen item (k + 150 for
# a long history) cost ~4x a search for k at 1M items. Rows whose seen items crowd their top
# come back short and are searched again with the seen items filtered in the index.
SEEN_MARGIN = 10


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
    # faiss OpenMP threads of a search of several rows (0: faiss's own setting, untouched). A
    # one-row search always runs on one: faiss spreads a search over its rows, and a team of
    # threads for one row only waits on its barrier (1M items, IVF-PQ, 2 busy cores: 8 ms at 2
    # threads against 0.32 ms at 1). OpenMP keeps the setting per calling thread, hence per search.
    threads: int = 0

    @classmethod
    def load(cls, path: Path, meta: dict, n_items: int, dim: int, *, ef_search: int | None = None,
             nprobe: int | None = None, threads: int = 0, data: bytes | None = None) -> "AnnIndex":
        """Read the index; check it is what the manifest says (kind, size, width) before serving.
        data: the file's bytes as the loader read (and hashed) them (`Manifest.read`): faiss then
        parses what was verified, never the file again (`path` only names it in errors)."""
        faiss = import_faiss()
        ef_search, nprobe = check_search_param("ef_search", ef_search), check_search_param("nprobe", nprobe)
        kind = meta["kind"]
        try:
            index = (faiss.read_index(str(path)) if data is None
                     else faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))
        except Exception as e:  # faiss raises RuntimeError with its C++ message
            raise BundleError(f"{path}: not a readable faiss index ({type(e).__name__}: {str(e)[:200]})") from e
        if index.ntotal != n_items or index.d != dim:
            raise BundleError(f"{path}: the index holds {index.ntotal} vectors of width {index.d}, the manifest "
                              f"says {n_items} items of width {dim}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(f"{path}: the index does not rank by inner product (the model's score)")
        out = cls(index=index, kind=kind, n_items=n_items, dim=dim, params={}, threads=threads)
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

    def search(self, states: np.ndarray, n: int, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (B, n), internal items int64 (B, n)); missing neighbours are item 0, score -inf.

        exclude: internal items (> 0) the index skips while searching (one set for every row):
        exact, but every scanned candidate is checked (IVF-PQ at 1M items: ~1.5x the plain search)."""
        n = min(n, self.n_items)
        states = np.ascontiguousarray(states, dtype=np.float32)
        if self.threads:
            import_faiss().omp_set_num_threads(1 if len(states) == 1 else self.threads)
        if exclude is None or not len(exclude):
            scores, labels = self.index.search(states, n)
        else:
            faiss = import_faiss()
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(exclude, dtype=np.int64) - ID_OFFSET))
            params, keep = self._search_params(sel)  # `keep`: the SWIG objects `params` points into
            scores, labels = self.index.search(states, n, params=params)
            del keep
        missing = labels < 0
        items = labels + ID_OFFSET
        if missing.any():
            items[missing] = 0
            scores[missing] = -np.inf
        return scores, items

    def _search_params(self, sel) -> tuple[Any, list]:
        """faiss SearchParameters with the selector and this index's own breadth (parameters passed to
        search replace the index's settings: faiss's defaults would be nprobe 1, efSearch 16)."""
        faiss = import_faiss()
        if self.kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch, p.sel = self.params["ef_search"], sel
            return p, [sel]
        if self.kind == "ivfpq":
            base = faiss.SearchParametersIVF()
            base.nprobe, base.sel = self.params["nprobe"], sel
            if "k_factor" not in self.params:
                return base, [sel]
            p = faiss.IndexRefineSearchParameters()
            p.k_factor, p.base_index_params = self.params["k_factor"], base
            return p, [sel, base]
        p = faiss.SearchParameters()
        p.sel = sel
        return p, [sel]


def top_k_excluding(index: AnnIndex, states: np.ndarray, k: int, exclude: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row without the row's excluded items (and without padding), best first.

    First every row is searched for k + min(its number of distinct excluded items, SEEN_MARGIN)
    and the excluded ones are dropped. A row that keeps fewer than k is searched again alone
    with its excluded items filtered inside the index, for k, then twice as many while an
    approximate index still returns too few, up to the whole catalog. For an exact index the
    answer is the same as one search for k + (all excluded) filtered afterwards. Short rows are
    padded with item 0, score -inf.
    """
    B = len(states)
    out_items = np.zeros((B, k), dtype=np.int64)
    out_scores = np.full((B, k), -np.inf, dtype=np.float32)
    excl = [frozenset()] * B
    if exclude is not None:
        excl = [frozenset(r[r > 0].tolist()) for r in exclude]
    fetch = k + min(max((len(e) for e in excl), default=0), SEEN_MARGIN)
    scores, items = index.search(states, fetch)
    short = []
    for r in range(B):
        e = excl[r]
        keep = [j for j, i in enumerate(items[r].tolist()) if i > 0 and i not in e][:k]
        if len(keep) < k and fetch < index.n_items:
            short.append(r)
            continue
        out_items[r, :len(keep)], out_scores[r, :len(keep)] = items[r, keep], scores[r, keep]
    for r in short:  # rare: seen items crowd the top, or the index returned too few
        e = np.fromiter(excl[r], dtype=np.int64, count=len(excl[r]))
        n = k if len(e) else 2 * fetch  # filtered in the index, k is enough for an exact one
        while True:
            s, it = index.search(states[r:r + 1], n, exclude=e)
            keep = np.flatnonzero((it[0] > 0) & ~np.isin(it[0], e))[:k]
            if len(keep) >= k or n >= index.n_items:
                break
            n = min(2 * n, index.n_items)
        out_items[r, :len(keep)], out_scores[r, :len(keep)] = it[0, keep], s[0, keep]
    return out_items, out_scores
