"""Recommender: raw item ids in, raw item ids and scores out. Torch-free.

    rec = Recommender.load("bundle/")                # verifies hashes, picks a backend (create_backend)
    rec = Recommender.load("bundle/", BackendOptions(backend="cpu"), threads=2)   # options + overrides
    rec.recommend([12, 7, 33], k=10)                 # one history -> Recommendation
    rec.recommend([[12, 7], ["a"], []], k=5)         # a batch -> [Recommendation, ...]
    rec.recommend_indices(item_seq, k=10)            # (B, max_len) int64 -> (items, scores)
    rec.recommend([12, 7, 33], times=[t0, t1, t2])   # a bundle over time gaps: each event's time (seconds)

Pipeline of one call: `prepare` (validate, map ids to indices, keep the newest
max_len, build the exclusion, noise and event-age inputs) -> `run_prepared` (one session run for
any number of prepared calls: the HTTP micro-batcher groups requests here) -> decode
(post-filter, indices back to raw ids).

Lifecycle: `close()` releases the backend once no call is running on it (calls hold a
reference count); any call after `close()` raises RecommenderClosedError.
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, BackendOptions, create_backend
from .bundle import (AGGREGATE_OUTPUTS, INPUT_AGES, INPUT_EXCLUDE, INPUT_NOISE, INPUT_SEQ, OUTPUT_CONFIDENCE,
                     OUTPUT_ITEMS, OUTPUT_SCORES, ItemTable, Manifest, check_files, read_manifest, verify_files)
from .errors import (BundleError, GenattnRuntimeError, InferenceError, InputError, RecommenderClosedError,
                     UnknownItemError)

log = logging.getLogger("genattn_runtime")

UNKNOWN_POLICIES = ("skip", "error")
AGGREGATES = tuple(AGGREGATE_OUTPUTS)  # "mean", "interleave", "vote"
MAX_DIVERSITY = 10.0   # prior temperature cap: far past where lists stop being relevant
MAX_ERROR_IDS = 10
# Integer catalogs up to this many ids encode int histories through a dict {id: index} (one C-level
# map of dict.get: the cheapest at batch 1, ~70 bytes per id); larger ones through a numpy lookup
# table (8 bytes per id up to the largest id, no dict to build at load).
INT_DICT_MAX_IDS = 1 << 16


@dataclass
class Recommendation:
    """Top-k for one user, best first, in the catalog's own id type."""
    items: list                                        # raw item ids
    scores: list[float]                                # model scores (popularity counts when fallback is set)
    fallback: str | None = None                        # "popularity": no known history, most popular items
    unknown_items: list = field(default_factory=list)  # ids skipped because the catalog does not know them
    truncated: bool = False                            # history longer than max_len: only the newest were used
    partial: bool = False                              # fewer than k items: the rest were seen or masked
    confidence: float | None = None                    # S >= 2 sample bundles: how much the samples agree

    def to_dict(self) -> dict:
        out = {"items": list(self.items), "scores": list(self.scores), "fallback": self.fallback,
               "unknown_items": list(self.unknown_items), "truncated": self.truncated, "partial": self.partial}
        if self.confidence is not None:  # absent, not null, where the bundle has no samples to compare
            out["confidence"] = self.confidence
        return out


@dataclass
class _Row:
    unknown: list
    truncated: bool
    fallback: str | None
    post_exclude: frozenset | None  # seen indices the graph could not mask (older than the window)


@dataclass
class PreparedRequest:
    """One validated call, ready to run alone or batched with others (`run_prepared`)."""
    rows: list[_Row]
    k: int
    single: bool
    seq: np.ndarray                  # (m, max_len) int64: rows that go through the model
    exclude: np.ndarray | None       # (m, max_len) int64 when the graph has exclude_items (ANN: wider, all seen)
    noise: np.ndarray | None         # (m, noise_size) float32 when the graph has noise
    aggregate: str = "mean"          # which of the graph's lists to read (AGGREGATE_OUTPUTS)
    ages: np.ndarray | None = None   # (m, max_len) float32 when the graph takes item_ages

    @property
    def n_model_rows(self) -> int:
        return len(self.seq)


def _id_key(x) -> str | None:
    """The catalog index's key for one item id: its str() form ("12" finds 12); None for a value
    no id can be (a boolean, a float, ...)."""
    t = type(x)
    if t is str:
        return x
    if t is int:
        return str(x)
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, str):
        return str(x)
    return None


def _bad(where: str, what: str) -> InputError:
    return InputError(f"{where}: {what}")


def _bad_times(a: np.ndarray, where: str):
    """Raise the InputError naming the first time that is not finite, or the first that decreases."""
    if not np.isfinite(a).all():
        raise _bad(where, f"time {int(np.argmin(np.isfinite(a)))} is not a finite number")
    j = int(np.flatnonzero(a[1:] < a[:-1])[0]) + 1
    raise _bad(where, f"times must not decrease (histories are oldest first): time {j} ({a[j]:g}) "
                      f"is before time {j - 1} ({a[j - 1]:g})")


def _float32(x: float) -> float:
    """x as the graph's float32 holds it (inf past its range, without numpy's overflow warning)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _describe(x: Any) -> str:
    r = repr(x)
    return f"{type(x).__name__} {r if len(r) <= 40 else r[:37] + '...'}"


class Recommender:
    """A loaded bundle. Thread-safe: many threads may call `recommend` on one instance, and
    `close()` may race them (it waits for running calls; later calls raise RecommenderClosedError)."""

    def __init__(self, manifest: Manifest, items: ItemTable, backend: Backend, unknown_items: str = "skip"):
        if unknown_items not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_POLICIES}, got {unknown_items!r}")
        self.manifest, self.items, self._backend = manifest, items, backend
        self.unknown_items = unknown_items
        self.signed_by: str | None = None  # key id that verified the bundle (load with trusted_keys)
        # Lifecycle: calls on the backend are counted under this condition; close() waits for zero.
        self._lock = threading.Lock()  # taken directly on the hot path (a Condition's own enter is slower)
        self._cv = threading.Condition(self._lock)
        self._active = 0
        self._closed = False
        self._released = False
        self.max_len, self.n_items, self.k_max = manifest.max_len, manifest.n_items, manifest.k
        self.noise_size = manifest.noise_size
        self.time_buckets = manifest.time_buckets  # > 0: the graph attends over the time between events
        # Seen items are removed before top-K: by the graph's exclude_items input, or by the ANN search
        # (which takes the same input and over-fetches).
        self.exclude_in_graph = manifest.exclude_in_graph or manifest.ann is not None
        # internal index -> raw id (index 0 = padding); object array so one gather decodes a row
        self._raw = np.array([None, *items.item_ids], dtype=object)
        # Integer catalogs (the common case) encode plain-int histories without a str() per id:
        # small ones through `_int_index` (built here, not at the first call), large ones through
        # a lookup table (one numpy gather instead of a dict lookup per id).
        self._lut = None
        ids = items.item_ids
        if ids and all(type(x) is int and x >= 0 for x in ids):
            if len(ids) <= INT_DICT_MAX_IDS:
                _ = self._int_index  # the cached dict, built at load rather than at the first call
            elif max(ids) < 50_000_000:
                # Padded with a trailing 0, so `take(id, mode="clip")` maps too-large ids to 0 (unknown)
                # without a separate range check; negative ids never reach it (see _encode_fast).
                self._lut = np.zeros(max(ids) + 2, dtype=np.int64)
                self._lut[np.asarray(ids, dtype=np.int64)] = np.arange(1, len(ids) + 1)
        pop = np.asarray(items.popularity, dtype=np.int64)
        self._pop_order = (np.argsort(-pop[1:], kind="stable") + 1)[: self.k_max]
        self._pop_scores = pop[self._pop_order].astype(np.float64)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, bundle: str | Path, options: BackendOptions | None = None, *, unknown_items: str = "skip",
             verify: bool = True, trusted_keys: Iterable[str | Path | bytes] | None = None,
             **option_overrides: Any) -> "Recommender":
        """Read, verify and open a bundle.

        options: how to run it (BackendOptions: backend, strict, precision, threads, device,
        CUDA graphs, TensorRT, ANN search breadth...); option_overrides: any of its fields by
        keyword, applied over `options` (`Recommender.load(b, backend="cpu", threads=1)`); a
        keyword that is no field raises TypeError, a bad value ValueError naming the field.
        `recommender.backend` says what actually runs. verify: check every file's sha256 (the
        manifest's schema and digest, file sizes, the graph's I/O against the manifest and a
        probe run are checked either way). trusted_keys: Ed25519 public keys (PEM paths or
        bytes); only a bundle signed by one of them loads (SignatureError otherwise).
        """
        if options is not None and not isinstance(options, BackendOptions):
            raise TypeError(f"options must be a BackendOptions, got {type(options).__name__} {options!r:.40} "
                            "(name a backend by keyword: backend=...)")
        opts = (options if options is not None else BackendOptions()).with_overrides(**option_overrides)
        if unknown_items not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_POLICIES}, got {unknown_items!r}")
        if trusted_keys is not None:
            if isinstance(trusted_keys, (str, bytes, Path)):
                trusted_keys = [trusted_keys]  # one key given bare, not a sequence of characters
            trusted_keys = list(trusted_keys)
            if not verify:
                raise ValueError("verify=False cannot be combined with trusted_keys: a signature covers the "
                                 "files only through their hashes")
        manifest = read_manifest(bundle)
        signed_by = None
        if trusted_keys is not None:
            from .signing import verify_signature

            signed_by = verify_signature(manifest, trusted_keys)
        check_files(manifest)  # cheap: a missing or resized file fails before any work
        manifest.verify_reads = verify
        be = None
        try:
            items = cls._read_items(manifest)
            be = create_backend(manifest, opts)  # reads (and hashes) the graph it runs, once
            if verify:  # the files not opened above, hashed from disk: the whole bundle is checked
                verify_files(manifest, skip=manifest.read_names)
        except BaseException:
            if be is not None:
                be.close()
            raise
        finally:
            manifest.release()
        try:
            rec = cls(manifest, items, be, unknown_items=unknown_items)
            rec.signed_by = signed_by
            rec._probe()
        except BaseException:
            be.close()
            raise
        return rec

    @staticmethod
    def _read_items(manifest: Manifest) -> ItemTable:
        items = ItemTable.load(manifest.file("items.json"), manifest.read("items.json"))
        n = manifest.n_items
        if len(items.item_ids) != n or len(items.popularity) != n + 1:
            raise BundleError(f"bundle {manifest.path}: items.json has {len(items.item_ids)} ids and "
                              f"{len(items.popularity)} popularity counts, manifest says {n} items")
        if len(items.index) != n:
            raise BundleError(f"bundle {manifest.path}: items.json holds ids that are equal as strings")
        return items

    def _probe(self) -> None:
        """One run on two rows (all padding; the highest indices) before serving: a graph whose
        actual output shapes, dtypes or index range differ from the manifest's, or that fails to
        run on valid input (a swapped model of another catalog), is refused at load."""
        L, N = self.max_len, self.n_items
        seq = np.zeros((2, L), dtype=np.int64)
        seq[1] = np.arange(N - L + 1, N + 1).clip(0)
        feeds = {INPUT_SEQ: seq}
        if self.exclude_in_graph:
            feeds[INPUT_EXCLUDE] = np.zeros_like(seq)
        if self.noise_size:
            feeds[INPUT_NOISE] = np.zeros((2, self.noise_size), dtype=np.float32)
        if self.time_buckets:
            feeds[INPUT_AGES] = np.zeros((2, L), dtype=np.float32)
        where = f"bundle {self.manifest.path}: the graph ({self.backend})"
        try:
            out = self._run_backend(feeds)
        except InferenceError as e:
            raise BundleError(f"{where} fails on valid input: {e}") from e
        for name in (OUTPUT_ITEMS, OUTPUT_SCORES):
            if name not in out:
                raise BundleError(f"{where} returns no {name} (it returns {sorted(out)})")
        for name, a in out.items():
            if not isinstance(a, np.ndarray) or a.ndim != 2 or len(a) != 2:
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise BundleError(f"{where} returns {name} {got} for 2 rows")
        items, scores = out[OUTPUT_ITEMS], out[OUTPUT_SCORES]
        for name, a, dtype in ((OUTPUT_ITEMS, items, np.int64), (OUTPUT_SCORES, scores, np.float32)):
            if a.shape != (2, self.k_max) or a.dtype != dtype:
                raise BundleError(f"{where} returns {name} {a.dtype} {a.shape}, the manifest says {np.dtype(dtype)} "
                                  f"(batch, {self.k_max})")
        if items.size and (items.min() < 0 or items.max() > N):
            raise BundleError(f"{where} returns item indices {int(items.min())}..{int(items.max())}, outside "
                              f"the catalog's 0..{N}")

    @property
    def backend(self) -> str:
        """The backend that actually runs ("cpu", "cuda", "tensorrt-ep", "tensorrt")."""
        return self._backend.name

    @property
    def providers(self) -> list[str]:
        return list(self._backend.providers)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse new calls, wait for the running ones, then release the backend. Idempotent."""
        with self._cv:
            if self._closed:
                self._cv.wait_for(lambda: self._released)
                return
            self._closed = True
            self._cv.wait_for(lambda: self._active == 0)
            try:
                self._backend.close()
            finally:
                self._released = True
                self._cv.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise RecommenderClosedError("this Recommender was closed; load the bundle again")

    def _run_backend(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        """The one place the backend runs: counted for close(), failures typed. need: how many of the
        K slots the caller will read (an ANN search fetches only those; an exact graph ignores it).
        Returns the backend's outputs by name (top_items int64, top_scores float32, and the rest)."""
        with self._lock:
            self._check_open()
            self._active += 1
        try:
            return self._backend.run(feeds, need)
        except GenattnRuntimeError:
            raise
        except Exception as e:  # ONNX Runtime / TensorRT raise their own types; inputs were validated before
            raise InferenceError(f"backend {self.backend} failed to run the graph ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from e
        finally:
            with self._lock:
                self._active -= 1
                if self._closed and not self._active:
                    self._cv.notify_all()

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def metadata(self) -> dict:
        """Summary of the bundle and the backend (served as GET /metadata)."""
        raw = self.manifest.raw
        sampler = {k: v for k, v in raw["sampler"].items() if k != "scheduler"}
        return {"attention": self.manifest.attention, "sampler": sampler,
                "deterministic": self.noise_size == 0, "k": self.k_max, "max_len": self.max_len,
                "time_buckets": self.time_buckets,
                "n_items": self.n_items, "backend": self.backend, "providers": self.providers,
                "exclude_in_graph": self.exclude_in_graph, "unknown_items": self.unknown_items,
                "format_version": raw["format_version"], "created": raw.get("created"),
                "genattn": raw["tools"].get("genattn"), "signed_by": self.signed_by,
                "ann": ({"library": raw["ann"]["library"], "search": self._backend.describe().get("ann"),
                         "export_recall_at_10": raw["ann"]["recall"]["recall_at_10"]} if raw.get("ann") else None)}

    # ------------------------------------------------------------------ high level
    def recommend(self, histories, k: int = 10, exclude_seen: bool = True, seed: int | None = None,
                  unknown_items: str | None = None, diversity: float | None = None, aggregate: str | None = None,
                  times=None):
        """Top-k raw item ids with scores.

        histories: one history (a list of ids, oldest first) -> Recommendation, or a
        batch (a list of such lists) -> list[Recommendation]. `[]` is one empty history.
        Ids may be ints or strings in either form ("12" finds 12). seed: noise of a
        stochastic bundle (None = fresh entropy; ignored by deterministic bundles).
        diversity: the prior's sampling temperature tau of a stochastic bundle (its noise
        is drawn from N(0, tau^2)): 0 = the deterministic mode (vae: prior mean; diffusion:
        zero start), 1 = the trained prior (the default), larger = more varied lists at
        some cost in accuracy (measured in benchmarks/results/frontier_*.md).
        aggregate: how a bundle exported with S >= 2 samples builds the list from them —
        "mean" (None: the top of the mean scores), "interleave" (each sample's best in turn:
        more of the user's interests) or "vote" (items most samples list first). Such a
        bundle also sets `Recommendation.confidence`: the samples' top-10 overlap in [0, 1].
        times: when each history event happened, in seconds on any one clock (Unix time, as the
        training data's timestamps), shaped like `histories` (a list per history), oldest first and
        never decreasing. A bundle over time gaps (`time_buckets` > 0 in `metadata()`) needs them
        for every non-empty history; other bundles check and ignore them, so one client can call both.
        """
        prep = self.prepare(histories, k=k, exclude_seen=exclude_seen, seed=seed, unknown_items=unknown_items,
                            diversity=diversity, aggregate=aggregate, times=times)
        return self.run_prepared([prep])[0]

    def recommend_batch(self, histories, k: int = 10, exclude_seen: bool = True, seed: int | None = None,
                        unknown_items: str | None = None, diversity: float | None = None,
                        aggregate: str | None = None, times=None) -> list[Recommendation]:
        """Like `recommend` but `histories` is always a batch (so `[]` is zero users)."""
        if isinstance(histories, (list, tuple)) and len(histories) == 0:
            self._check_open()
            self.check_k(k)
            return []
        if not isinstance(histories, (list, tuple)) or not all(isinstance(h, (list, tuple)) for h in histories):
            raise InputError("histories: expected a list of histories (lists of item ids)")
        return self.recommend(histories, k, exclude_seen, seed, unknown_items, diversity, aggregate, times)

    # ------------------------------------------------------------------ stages
    def check_diversity(self, diversity) -> float:
        """The noise scale for `diversity` (None = 1.0), or InputError: a number in
        [0, MAX_DIVERSITY], and only for stochastic bundles (a deterministic graph takes
        no noise, so the knob would silently do nothing)."""
        if diversity is None:
            return 1.0
        if isinstance(diversity, bool) or not isinstance(diversity, numbers.Real) or not math.isfinite(diversity) \
                or not 0.0 <= diversity <= MAX_DIVERSITY:
            raise InputError(f"diversity must be a number in [0, {MAX_DIVERSITY}] or null, got {_describe(diversity)}")
        if not self.noise_size:
            raise InputError("diversity: this bundle is deterministic (it takes no noise); export it with a "
                             "stochastic sampling (e.g. --vae-mode sample, or --start noise) to use diversity")
        return float(diversity)

    def check_aggregate(self, aggregate) -> str:
        """`aggregate` (None = "mean"), or InputError: one of AGGREGATES, and anything but "mean" only
        for a bundle whose graph has the sample outputs (exported with S >= 2 stochastic samples)."""
        if aggregate is None:
            return "mean"
        if not isinstance(aggregate, str) or aggregate not in AGGREGATES:
            raise InputError(f"aggregate must be one of {list(AGGREGATES)} or null, got {_describe(aggregate)}")
        if aggregate != "mean" and self.manifest.aggregate is None:
            why = ("it is deterministic" if not self.noise_size else
                   "it was exported without them (--samples 1, or --no-sample-outputs)")
            raise InputError(f"aggregate {aggregate!r}: this bundle has no per-sample lists ({why}); export it with "
                             "a stochastic sampling and --samples >= 2 (e.g. --vae-mode sample --samples 16)")
        return aggregate

    def check_k(self, k) -> int:
        """k as an int, or InputError unless 1 <= k <= the bundle's K."""
        if type(k) is int and 1 <= k <= self.k_max:  # the common case, without the ABC isinstance below
            return k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise InputError(f"k must be a positive integer, got {_describe(k)}")
        if not 1 <= int(k) <= self.k_max:
            raise InputError(f"k must be in 1..{self.k_max} (the bundle's K), got {int(k)}")
        return int(k)

    def _split_histories(self, histories) -> tuple[list, bool]:
        if histories is None:
            raise InputError("history: expected a list of item ids (or a list of such lists), got None")
        if isinstance(histories, (str, bytes)):
            raise InputError(f"history: expected a list of item ids, got a string {histories[:40]!r}; "
                             "split it into ids first")
        if isinstance(histories, np.ndarray):
            histories = histories.tolist()
        if not isinstance(histories, (list, tuple)):
            raise InputError("history: expected a list of item ids (or a list of such lists), "
                             f"got {_describe(histories)}")
        if len(histories) == 0:
            return [histories], True
        seq_types = (list, tuple, np.ndarray)
        if not isinstance(histories[0], seq_types):
            return [histories], True  # one history; a list further on is reported by _encode
        nested = [isinstance(h, seq_types) for h in histories]
        if all(nested):
            return list(histories), False
        if any(nested):
            i = nested.index(True)
            raise InputError(f"history: element {i} is a list but element {nested.index(False)} is an item id; "
                             "pass one history (a list of ids) or a batch (a list of lists)")
        return [histories], True

    def _encode_fast(self, hist) -> tuple[list[int], list] | None:
        """Lookup-table path for plain-int histories on integer catalogs (the caller checks that
        the table exists); None = use the general path."""
        lut = self._lut
        # A negative id (never in such a catalog) takes the general path, which reports it unknown:
        # cheaper than shifting every id into a table with a slot for negatives.
        if not hist or set(map(type, hist)) != {int} or min(hist) < 0:
            return None
        try:
            arr = np.array(hist, dtype=np.int64)
        except OverflowError:
            return None
        idx = lut.take(arr, mode="clip").tolist()
        if 0 not in idx:
            return idx, []
        unknown = list(dict.fromkeys(x for x, i in zip(hist, idx) if i == 0))
        return [i for i in idx if i], unknown

    def _encode_plain(self, hist) -> tuple[list[int], list] | None:
        """All-str or all-int histories on any catalog: the dict lookups as one C-level map; ints
        through a dict keyed by int (no str() per id: 2-4x faster at 187 ids on a 1M catalog).
        None = mixed or other types: the general path."""
        types = set(map(type, hist))
        if types == {str}:
            index = self.items.index
        elif types == {int} and self._lut is None:  # a large integer catalog's table took them, unless
            index = self._int_index                  # they overflow or are negative
        else:
            return None
        try:  # every id known (the common case): no second pass over the result looking for misses
            return list(map(index.__getitem__, hist)), []
        except KeyError:
            got = list(map(index.get, hist))
        # one type, so raw id <-> key is one-to-one: dedupe the unknown raw ids in first-seen order
        return [i for i in got if i is not None], list(dict.fromkeys(x for x, i in zip(hist, got) if i is None))

    @functools.cached_property
    def _int_index(self) -> dict:
        """int -> internal index for every catalog id an int finds (its str() is the id): built once,
        at load for a small integer catalog, else at the first int history (a 1M-id catalog takes a
        fraction of a second)."""
        d = {}
        for i, x in enumerate(self.items.item_ids, 1):
            if type(x) is int:
                d[x] = i
            elif isinstance(x, str) and x.isascii() and (x[1:] if x[:1] == "-" else x).isdigit():
                v = int(x)
                if str(v) == x:  # "007" or "-0" are not what str() of an int gives
                    d[v] = i
        return d

    def _encode(self, hist, where: str) -> tuple[list[int], list]:
        if isinstance(hist, np.ndarray):
            hist = hist.tolist()
        fast = None if self._lut is None else self._encode_fast(hist)
        if fast is None:
            fast = self._encode_plain(hist)
        if fast is not None:
            return fast
        index = self.items.index
        idx, unknown, seen_unknown = [], [], set()
        for j, x in enumerate(hist):
            key = _id_key(x)
            if key is None:
                if isinstance(x, (bool, np.bool_)):
                    raise _bad(where, f"item {j} is a boolean ({x!r}); item ids are ints or strings")
                raise _bad(where, f"item {j} is a {_describe(x)}; item ids are ints or strings")
            i = index.get(key)
            if i is None:
                if key not in seen_unknown:
                    seen_unknown.add(key)
                    unknown.append(x)
            else:
                idx.append(i)
        return idx, unknown

    def prepare(self, histories, k: int = 10, exclude_seen: bool = True, seed: int | None = None,
                unknown_items: str | None = None, diversity: float | None = None,
                aggregate: str | None = None, times=None) -> PreparedRequest:
        """Validate and encode one call (raises InputError / UnknownItemError)."""
        self._check_open()
        k = self.check_k(k)
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise InputError(f"exclude_seen must be true or false, got {_describe(exclude_seen)}")
        if seed is not None and not (type(seed) is int and seed >= 0) and (  # a plain int skips the ABC check
                isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise InputError(f"seed must be a non-negative integer or null, got {_describe(seed)}")
        scale = self.check_diversity(diversity)
        aggregate = self.check_aggregate(aggregate)
        policy = unknown_items or self.unknown_items
        if policy not in UNKNOWN_POLICIES:
            raise InputError(f"unknown_items must be one of {UNKNOWN_POLICIES}, got {policy!r}")
        hists, single = self._split_histories(histories)
        stamps = self._split_times(times, hists, single)
        L = self.max_len
        # An ANN search takes the seen items older than the window with the window's (exclude wider
        # than max_len), so it neither over-fetches for them nor leaves them to decoding.
        ann = self.manifest.ann is not None
        rows, windows, model_rows, all_unknown, older, ages = [], [], [], [], [], []
        for b, h in enumerate(hists):
            where = "history" if single else f"histories[{b}]"
            idx, unknown = self._encode(h, where)
            if unknown:
                all_unknown.append((b, unknown))
            window = idx[-L:]
            truncated = len(idx) > L
            post = None
            if exclude_seen and idx:
                if not self.exclude_in_graph:
                    post = frozenset(idx)
                elif truncated:
                    post = frozenset(idx[:-L]) - frozenset(window) or None
                    if post and ann:
                        older.append((len(windows), post))
                        post = None
            rows.append(_Row(unknown=unknown, truncated=truncated, fallback=None if idx else "popularity",
                             post_exclude=post))
            if idx:
                model_rows.append(b)
                windows.append(window)
                if self.time_buckets:
                    t = stamps[b] if not unknown else stamps[b][self._known(h)]
                    ages.append(t[-1] - t[-L:])  # seconds before the newest event, as training computes them
        if all_unknown and policy == "error":
            ids = [x for _, u in all_unknown for x in u]
            where = ("" if single else
                     f" in histories {[b for b, _ in all_unknown][:MAX_ERROR_IDS]}")
            shown = ", ".join(repr(x) for x in ids[:MAX_ERROR_IDS]) + (" …" if len(ids) > MAX_ERROR_IDS else "")
            raise UnknownItemError(ids, f"unknown item id(s){where}: {shown} (the catalog has {self.n_items} items)")
        m = len(windows)
        # Left-padded rows built as lists and converted in one call (cheaper at batch 1 than
        # filling a zeros array row by row).
        seq = (np.array([[0] * (L - len(w)) + w for w in windows], dtype=np.int64) if m else
               np.zeros((0, L), dtype=np.int64))
        exclude = None
        if self.exclude_in_graph:
            exclude = seq.copy() if exclude_seen else np.zeros_like(seq)
            if older:
                wide = np.zeros((m, L + max(len(o) for _, o in older)), dtype=np.int64)
                wide[:, :L] = exclude
                exclude = wide
                for r, o in older:
                    exclude[r, L:L + len(o)] = np.fromiter(o, dtype=np.int64, count=len(o))
        noise = None
        if self.noise_size and m:
            # Row b always gets draws b*noise_size.. of the seed's stream: a user's noise does not
            # depend on which other users share the call (or the micro-batch).
            rng = np.random.default_rng(None if seed is None else int(seed))
            noise = rng.standard_normal((len(hists), self.noise_size), dtype=np.float32)[model_rows]
            if scale != 1.0:
                noise *= np.float32(scale)
        age = None
        if self.time_buckets:
            age = np.zeros((m, L), dtype=np.float32)
            for r, a in enumerate(ages):
                age[r, L - len(a):] = a
        return PreparedRequest(rows=rows, k=k, single=single, seq=seq, exclude=exclude, noise=noise,
                               aggregate=aggregate, ages=age)

    def _split_times(self, times, hists: list, single: bool) -> list[np.ndarray] | None:
        """`times` checked against the histories: one float64 array per history, or None where the
        bundle takes no times and none were given (InputError names what is wrong)."""
        if times is None:
            if self.time_buckets and any(len(h) for h in hists):
                raise InputError(f"times: this bundle attends over the time between events (time_buckets="
                                 f"{self.time_buckets}); pass `times`, when each history event happened (seconds)")
            return None
        if isinstance(times, np.ndarray):
            times = times.tolist()
        rows = [times] if single else times
        if not isinstance(rows, (list, tuple)) or (not single and len(rows) != len(hists)):
            got = f"{len(rows)} lists" if isinstance(rows, (list, tuple)) else _describe(rows)
            raise InputError(f"times: expected one list of times per history ({len(hists)}), got {got}")
        out = []
        for b, (t, h) in enumerate(zip(rows, hists)):
            where = "times" if single else f"times[{b}]"
            if isinstance(t, (str, bytes)) or not isinstance(t, (list, tuple, np.ndarray)):
                raise _bad(where, f"expected a list of numbers (seconds), got {_describe(t)}")
            try:
                a = np.asarray(t)
            except ValueError:
                raise _bad(where, "expected a flat list of numbers (seconds)") from None
            if a.size and (a.ndim != 1 or a.dtype.kind not in "iuf"):
                raise _bad(where, f"expected a flat list of numbers (seconds), got {a.dtype.name} values "
                                  f"of shape {a.shape}")
            a = a.astype(np.float64, copy=False).reshape(-1)
            if len(a) != len(h):
                raise _bad(where, f"{len(a)} times for {len(h)} history items; give one time per item")
            if not (np.isfinite(a).all() and (a[1:] >= a[:-1]).all()):  # one pass each on the hot path
                _bad_times(a, where)
            if len(a) and not math.isfinite(_float32(a[-1] - a[0])):  # the graph's ages are float32
                raise _bad(where, f"the times span {a[-1] - a[0]:.3g} s, more than the model's float32 ages hold")
            out.append(a)
        return out

    def _known(self, hist) -> np.ndarray:
        """Which of `hist`'s ids the catalog knows (bool per id): the times of unknown ids go with them.
        Only after `_encode` accepted `hist`; one lookup per id by the key `_encode` uses."""
        if isinstance(hist, np.ndarray):
            hist = hist.tolist()
        index = self.items.index
        return np.fromiter((index.get(_id_key(x)) is not None for x in hist), dtype=bool, count=len(hist))

    def _feeds(self, preps: list[PreparedRequest]) -> dict[str, np.ndarray]:
        parts = [p for p in preps if p.n_model_rows]
        if len(parts) == 1:
            p = parts[0]
            feeds = {INPUT_SEQ: p.seq}
            if p.exclude is not None:
                feeds[INPUT_EXCLUDE] = p.exclude
            if p.noise is not None:
                feeds[INPUT_NOISE] = p.noise
            if p.ages is not None:
                feeds[INPUT_AGES] = p.ages
            return feeds
        feeds = {INPUT_SEQ: np.concatenate([p.seq for p in parts])}
        if self.exclude_in_graph:  # an ANN bundle's exclude may be wider than max_len: padded to the widest
            w = max(p.exclude.shape[1] for p in parts)
            feeds[INPUT_EXCLUDE] = np.concatenate([p.exclude if p.exclude.shape[1] == w else
                                                   np.pad(p.exclude, ((0, 0), (0, w - p.exclude.shape[1])))
                                                   for p in parts])
        if self.noise_size:
            feeds[INPUT_NOISE] = np.concatenate([p.noise for p in parts])
        if self.time_buckets:
            feeds[INPUT_AGES] = np.concatenate([p.ages for p in parts])
        return feeds

    def _infer(self, preps: list[PreparedRequest]) -> dict[str, np.ndarray] | None:
        rows = sum(p.n_model_rows for p in preps)
        if not rows:
            self._check_open()  # fallback-only calls never touch the backend, but a closed Recommender is closed
            return None
        # Slots read per row: k, plus the seen items older than the window that decoding drops.
        need = max(p.k + max((len(r.post_exclude or ()) for r in p.rows), default=0) for p in preps)
        out = self._run_backend(self._feeds(preps), min(need, self.k_max))
        for how in {p.aggregate for p in preps}:
            items, scores = (out[n] for n in AGGREGATE_OUTPUTS[how])
            if items.shape != (rows, self.k_max) or scores.shape != (rows, self.k_max):
                raise BundleError(f"bundle {self.manifest.path}: the graph returned {items.shape} / {scores.shape} "
                                  f"for {rows} rows, the manifest says K = {self.k_max}")
        return out

    def run_prepared(self, preps: list[PreparedRequest]) -> list:
        """Run any number of prepared calls in ONE session run; one result per call."""
        out = self._infer(preps)
        results, offset = [], 0
        for p in preps:
            part = self._rows_of(p, out, offset)
            offset += p.n_model_rows
            try:
                results.append(self._decode(p, part))
            except IndexError:  # only a graph that breaks its contract returns indices past the catalog
                raise BundleError(f"bundle {self.manifest.path}: the graph returned item indices outside "
                                  f"0..{self.n_items}") from None
        return results

    @staticmethod
    def _rows_of(p: PreparedRequest, out: dict | None, offset: int) -> tuple | None:
        """The call's rows of a joint run: (items, scores) of its aggregate, and the confidence or None."""
        m = p.n_model_rows
        if not m:
            return None
        items, scores = AGGREGATE_OUTPUTS[p.aggregate]  # names; no generator on the batch-1 hot path
        end, conf = offset + m, out.get(OUTPUT_CONFIDENCE)
        return out[items][offset:end], out[scores][offset:end], None if conf is None else conf[offset:end, 0]

    def _decode(self, p: PreparedRequest, out) -> Recommendation | list[Recommendation]:
        k, raw, recs, r = p.k, self._raw, [], 0
        for row in p.rows:
            if row.fallback:
                recs.append(Recommendation(items=raw[self._pop_order[:k]].tolist(),
                                           scores=self._pop_scores[:k].tolist(), fallback=row.fallback,
                                           unknown_items=row.unknown, truncated=row.truncated))
                continue
            items, scores = out[0][r], out[1][r]
            confidence = None if out[2] is None else float(out[2][r])
            r += 1
            top = scores[:k].tolist()
            # The finiteness check on the k Python floats the answer holds anyway: cheaper than a
            # numpy isfinite + all (two ufunc calls) at batch 1.
            if row.post_exclude is None and all(map(math.isfinite, top)):
                recs.append(Recommendation(items=raw[items[:k]].tolist(), scores=top,
                                           unknown_items=row.unknown, truncated=row.truncated,
                                           confidence=confidence))
                continue
            # Drop masked (-inf) entries, padding and seen items older than the window.
            post = row.post_exclude or ()
            kept = [(i, s) for i, s in zip(items.tolist(), scores.tolist())
                    if i > 0 and math.isfinite(s) and i not in post][:k]
            idx, sc = [i for i, _ in kept], [s for _, s in kept]
            recs.append(Recommendation(items=raw[idx].tolist(), scores=sc, unknown_items=row.unknown,
                                       truncated=row.truncated, partial=len(idx) < k, confidence=confidence))
        return recs[0] if p.single else recs

    # ------------------------------------------------------------------ low level
    def recommend_indices(self, item_seq: np.ndarray, k: int | None = None, exclude: np.ndarray | None = None,
                          noise: np.ndarray | None = None, seed: int | None = None,
                          ages: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For callers who batch themselves: internal indices in, internal indices out.

        item_seq: int (B, max_len), left-padded with 0, values in 0..n_items.
        exclude: int (B, max_len) indices to mask (0 = none); None = mask nothing.
        noise: float32 (B, noise_size) for stochastic bundles; None = drawn from `seed`.
        ages: float (B, max_len), bundles over time gaps only: each event's seconds before the
        row's newest event (0 there and at padding), laid out as item_seq.
        Returns items int64 (B, k) and scores float32 (B, k), best first; k defaults to K.
        A masked position shows as index 0 with score -inf.
        """
        k = self.k_max if k is None else self.check_k(k)
        seq = self._check_matrix(item_seq, "item_seq")
        B = len(seq)
        if exclude is not None:
            exclude = self._check_matrix(exclude, "exclude")
            if len(exclude) != B:
                raise InputError(f"exclude has {len(exclude)} rows, item_seq {B}")
        feeds = {INPUT_SEQ: seq}
        if self.exclude_in_graph:
            feeds[INPUT_EXCLUDE] = exclude if exclude is not None else np.zeros_like(seq)
        if self.noise_size:
            if noise is None:
                noise = np.random.default_rng(seed).standard_normal((B, self.noise_size), dtype=np.float32)
            noise = np.asarray(noise)
            if noise.shape != (B, self.noise_size) or not np.issubdtype(noise.dtype, np.floating):
                raise InputError(f"noise must be float32 ({B}, {self.noise_size}), got {noise.dtype} {noise.shape}")
            feeds[INPUT_NOISE] = np.ascontiguousarray(noise, dtype=np.float32)
        elif noise is not None:
            raise InputError("this bundle is deterministic: it takes no noise")
        if self.time_buckets:
            if ages is None:
                raise InputError(f"ages: this bundle attends over time gaps (time_buckets={self.time_buckets}); "
                                 f"pass float ({B}, {self.max_len}) event ages")
            ages = np.asarray(ages)
            if ages.shape != seq.shape or ages.dtype.kind not in "iuf":
                raise InputError(f"ages must be float ({B}, {self.max_len}), got {ages.dtype} {ages.shape}")
            with np.errstate(over="ignore"):  # too large for float32 is refused just below, not warned about
                ages = np.ascontiguousarray(ages, dtype=np.float32)  # checked as the graph gets them
            if not (np.isfinite(ages).all() and (ages >= 0).all()):
                raise InputError("ages must be seconds >= 0 that float32 holds (each event's time before the "
                                 "row's newest)")
            feeds[INPUT_AGES] = ages
        elif ages is not None:
            raise InputError("this bundle does not attend over time gaps: it takes no ages")
        if B == 0:
            self._check_open()
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        out = self._run_backend(feeds, k)
        items, scores = out[OUTPUT_ITEMS], out[OUTPUT_SCORES]
        if exclude is not None and not self.exclude_in_graph:
            hit = (items[:, :, None] == exclude[:, None, :]).any(-1) & (items > 0)
            scores = np.where(hit, -np.inf, scores).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")
            items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        items = np.where(np.isneginf(scores), 0, items)
        return np.ascontiguousarray(items[:, :k]), np.ascontiguousarray(scores[:, :k])

    def _check_matrix(self, a, name: str) -> np.ndarray:
        if not isinstance(a, np.ndarray):
            raise InputError(f"{name} must be a numpy array, got {_describe(a)}")
        if a.ndim != 2 or a.shape[1] != self.max_len:
            raise InputError(f"{name} must have shape (batch, {self.max_len}), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name} must hold integers, got {a.dtype}")
        if a.size and (a.min() < 0 or a.max() > self.n_items):
            raise InputError(f"{name} values must be in 0..{self.n_items} (0 = padding), "
                             f"got {int(a.min())}..{int(a.max())}")
        return np.ascontiguousarray(a, dtype=np.int64)

    # ------------------------------------------------------------------ timing
    def measure_overhead(self, history=None, k: int = 10, repeats: int = 300, warmup: int = 30) -> dict:
        """Where a batch-1 `recommend` spends its time, in microseconds (medians and p90).

        prepare: validation, id mapping, input arrays; session: the backend run alone;
        decode: post-filter and ids back; python_overhead = prepare + decode.
        """
        if history is None:
            history = list(self.items.item_ids[: self.max_len])
        t = {"prepare": [], "session": [], "decode": [], "total": []}
        for n in range(warmup + repeats):
            t0 = time.perf_counter()
            p = self.prepare(history, k=k, seed=n)
            t1 = time.perf_counter()
            out = self._infer([p])
            t2 = time.perf_counter()
            self._decode(p, self._rows_of(p, out, 0))
            t3 = time.perf_counter()
            if n >= warmup:
                for key, v in (("prepare", t1 - t0), ("session", t2 - t1), ("decode", t3 - t2), ("total", t3 - t0)):
                    t[key].append(v * 1e6)
        res = {"backend": self.backend, "batch": 1, "k": k, "history_len": len(history), "repeats": repeats}
        for key, v in t.items():
            res[f"{key}_us_p50"] = float(np.median(v))
            res[f"{key}_us_p90"] = float(np.percentile(v, 90))
        res["python_overhead_us_p50"] = res["prepare_us_p50"] + res["decode_us_p50"]
        res["python_overhead_share"] = res["python_overhead_us_p50"] / res["total_us_p50"]
        return res
