"""The ANN bundle's backend: the state graph on an OrtBackend, then the index search.

An ANN bundle's graph outputs the user state; the top-K comes from searching the bundle's
faiss index with it (`runtime/ann.py`). The result has the same keys as a top-K graph's
(top_items int64 (B, K), top_scores float32 (B, K)) next to the state graph's own outputs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..ann import AnnIndex, top_k_excluding
from ..bundle import INPUT_EXCLUDE, OUTPUT_ITEMS, OUTPUT_SCORES, OUTPUT_STATE, Manifest
from ..errors import BackendUnavailableError
from .base import TOP_K_DTYPES, Backend, BackendOptions, physical_cores
from .ort import OrtBackend, without_graphs

log = logging.getLogger("genattn_runtime")

# Where the state graph runs, per requested backend. The search runs on the CPU (faiss-cpu);
# auto keeps the state graph there too (a GPU placement of it has not been measured), and
# tensorrt-ep runs it on the CUDA EP (no engine profile for the state graph is built).
_STATE_ON = {"auto": "cpu", "cpu": "cpu", "cuda": "cuda", "tensorrt-ep": "cuda", "tensorrt": "cpu"}


class AnnBackend(Backend):
    """The state graph + the index: feeds in, the top-K outputs out, like an exact graph's backend.
    The feeds' exclude_items never reach the graph (the state does not depend on them): the
    search removes them."""

    def __init__(self, state: OrtBackend, index: AnnIndex, manifest: Manifest):
        self.state, self.index, self.k = state, index, manifest.k
        self.name, self.providers = state.name + "+ann", state.providers
        self.output_dtypes = {**TOP_K_DTYPES, **state.output_dtypes}
        self.search_params = {"kind": index.kind, **index.params}

    @classmethod
    def open(cls, manifest: Manifest, model_path: Path, opts: BackendOptions) -> "AnnBackend":
        """Load the index (with opts.ef_search / nprobe), then the state graph through OrtBackend."""
        meta = manifest.ann
        # The bytes the loader read and hashed (Manifest.read), as for the graph: what is searched is
        # what was verified, and a modified index is refused by its hash before faiss parses it.
        # The search takes the state graph's thread count (ONNX Runtime's rule: 0 = physical cores).
        index = AnnIndex.load(manifest.file(meta["file"]), meta, manifest.n_items, meta["dim"],
                              ef_search=opts.ef_search, nprobe=opts.nprobe,
                              threads=opts.threads if opts.threads > 0 else physical_cores(),
                              data=manifest.read(meta["file"]))
        if opts.backend == "tensorrt" or opts.cuda_graph_batch:
            msg = (f"backend {opts.backend!r}{' with CUDA graphs' if opts.cuda_graph_batch else ''} serves top-K "
                   "graphs; an ANN bundle's state graph runs on ONNX Runtime")
            if opts.strict:
                raise BackendUnavailableError(msg)
            log.warning("%s; using ONNX Runtime", msg)
        # No CUDA graphs: capture of the state graph has never been tried on a GPU.
        state = OrtBackend(model_path, manifest, _STATE_ON[opts.backend], without_graphs(opts), strict=opts.strict)
        return cls(state, index, manifest)

    def states(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.state.run({n: a for n, a in feeds.items() if n != INPUT_EXCLUDE})[OUTPUT_STATE]

    def _run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        """(B, K) like a top-K graph; with `need`, only the first `need` slots are searched for (the
        rest hold item 0, score -inf): a search for 10 costs less than one for K = 100."""
        out = self.state.run({n: a for n, a in feeds.items() if n != INPUT_EXCLUDE})
        k = self.k if need is None else max(1, min(need, self.k))
        items, scores = top_k_excluding(self.index, out[OUTPUT_STATE], k, feeds.get(INPUT_EXCLUDE))
        if k < self.k:  # (np.pad costs ~20 us a call here, a third of the search's own Python)
            full_items, full_scores = np.zeros((len(items), self.k), np.int64), np.full((len(items), self.k), -np.inf,
                                                                                      np.float32)
            full_items[:, :k], full_scores[:, :k] = items, scores
            items, scores = full_items, full_scores
        return {OUTPUT_ITEMS: items, OUTPUT_SCORES: scores, **out}

    def describe(self) -> dict:
        return {**super().describe(), "ann": dict(self.search_params)}

    def close(self) -> None:
        self.state.close()
        self.index = None
