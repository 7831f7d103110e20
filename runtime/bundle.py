"""The bundle contract shared by the exporter (writer) and the runtime (reader).

A bundle is a folder:

    manifest.json   this schema (FORMAT_VERSION), size and sha256 of every file the bundle needs
    manifest.sig    optional DSSE signature envelope over the canonical manifest (signing.py)
    model.onnx      the serving graph (see docs/export.md)
    items.json      {"item_ids": [raw id of internal index 1..N], "popularity": [N + 1 counts]}
    model.*.engine  optional TensorRT engine (manifest "tensorrt" says which file, GPU and version)
    items.*.faiss   optional ANN index over the item table (format version 3, manifest "ann"; ann.py)

Nothing in the manifest is trusted as written: `read_manifest` validates every field
the runtime, the service and `genattn inspect` read (type, range, and the facts the
manifest states twice), checks `manifest_digest` against the canonical form of the
rest, and refuses file names that are not plain names inside the bundle. The graph's
own I/O is cross-checked against the manifest when a backend opens it
(`check_graph_io`).

Torch-free and independent of the training package: numpy and the standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "genattn-bundle"
FORMAT_VERSION = 2  # 2: manifest_digest required, every needed file must be listed
ANN_FORMAT_VERSION = 3  # 3: version 2 + an "ann" section; the graph outputs the user state (written only
                        # for ANN bundles, so a runtime without ANN support refuses them by version)
SAMPLES_FORMAT_VERSION = 4  # 4: version 2 + the sample outputs below and "sampler.aggregate" (written only
                            # for stochastic bundles of S >= 2 samples; older runtimes refuse them by version)
TIME_FORMAT_VERSION = 5  # 5: version 2, 3 or 4 + the item_ages input, for models that attend over the time
                         # between events (model.time_buckets > 0); the "ann" and "sampler.aggregate" sections
                         # may appear as in 3 / 4. Written only for such models; older runtimes refuse them by version
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION, ANN_FORMAT_VERSION, SAMPLES_FORMAT_VERSION, TIME_FORMAT_VERSION)

MANIFEST_FILE = "manifest.json"
DIGEST_FIELD = "manifest_digest"
MAX_MANIFEST_BYTES = 16 << 20  # real manifests are a few KB; a bound keeps a hostile one from eating memory

# Graph tensor names (one place; the exporter and the runtime both use these).
INPUT_SEQ = "item_seq"            # int64 [batch, max_len], left-padded internal indices
INPUT_EXCLUDE = "exclude_items"   # int64 [batch, max_len], indices scored -inf (0 = none)
INPUT_NOISE = "noise"             # float32 [batch, noise_size], standard normal; stochastic bundles only
INPUT_AGES = "item_ages"          # float32 [batch, max_len], seconds of each event before the row's newest
                                  # (0 for padding), laid out as item_seq; time-gap bundles only (version 5)
OUTPUT_ITEMS = "top_items"        # int64 [batch, K], internal indices, best first
OUTPUT_SCORES = "top_scores"      # float32 [batch, K]
OUTPUT_ALL = "scores"             # float32 [batch, n_items + 1]; optional
OUTPUT_STATE = "user_state"       # float32 [batch, d_model]; ANN bundles' only output (scores = state . item)
# What S sampled attention maps give besides their mean (format version 4; models/aggregate.py):
OUTPUT_INTERLEAVE_ITEMS = "interleave_items"    # int64 [batch, K]: the samples' top lists merged round-robin
OUTPUT_INTERLEAVE_SCORES = "interleave_scores"  # float32 [batch, K]: their mean scores, in list order
OUTPUT_VOTE_ITEMS = "vote_items"                # int64 [batch, K]: ranked by how many samples list them
OUTPUT_VOTE_SCORES = "vote_scores"              # float32 [batch, K]
OUTPUT_CONFIDENCE = "confidence"                # float32 [batch, 1]: the samples' top-list overlap, in [0, 1]
SAMPLE_OUTPUTS = ((OUTPUT_INTERLEAVE_ITEMS, "int64"), (OUTPUT_INTERLEAVE_SCORES, "float32"),
                  (OUTPUT_VOTE_ITEMS, "int64"), (OUTPUT_VOTE_SCORES, "float32"), (OUTPUT_CONFIDENCE, "float32"))


def sample_output_specs(k: int) -> list[tuple[str, str, int]]:
    """(name, dtype, width) of the sample outputs of a top-K graph: [batch, K], confidence [batch, 1]."""
    return [(name, dtype, 1 if name == OUTPUT_CONFIDENCE else k) for name, dtype in SAMPLE_OUTPUTS]


# aggregate -> the (items, scores) outputs that hold its list
AGGREGATE_OUTPUTS = {"mean": (OUTPUT_ITEMS, OUTPUT_SCORES),
                     "interleave": (OUTPUT_INTERLEAVE_ITEMS, OUTPUT_INTERLEAVE_SCORES),
                     "vote": (OUTPUT_VOTE_ITEMS, OUTPUT_VOTE_SCORES)}

_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- hashing

def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def canonical_manifest(raw: dict) -> bytes:
    """The bytes the digest and the signature cover: the manifest without its digest field,
    keys sorted, no whitespace, ASCII-only (so no two encoders disagree about escapes)."""
    body = {k: v for k, v in raw.items() if k != DIGEST_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest_digest(raw: dict) -> str:
    return "sha256:" + hashlib.sha256(canonical_manifest(raw)).hexdigest()


def manifest_text(raw: dict) -> str:
    """manifest.json as the exporter writes it: `raw` with its digest set (in place), indented."""
    raw[DIGEST_FIELD] = manifest_digest(raw)
    return json.dumps(raw, indent=2) + "\n"


# ---------------------------------------------------------------- manifest

@dataclass
class Manifest:
    raw: dict[str, Any]
    path: Path
    # What runs is what was verified: the loader reads each file it opens once (`read`), hashes
    # those bytes when verifying, and hands the same bytes to ONNX Runtime / TensorRT / the items
    # reader, so a file swapped on disk after hashing is never the one served.
    verify_reads: bool = field(default=False, repr=False)
    _data: dict = field(default_factory=dict, repr=False, compare=False)

    def read(self, name: str) -> bytes:
        """A listed file's bytes, read once per load (then served from memory until `release`);
        checked for size, and for its sha256 when `verify_reads` is set."""
        data = self._data.get(name)
        if data is not None:
            return data
        path = self.file(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.path}: {name} unreadable ({e.strerror or e})") from e
        meta = self.raw["files"][name]
        if len(data) != meta["bytes"]:
            raise BundleError(f"bundle {self.path}: {name} changed while it was read ({len(data)} bytes, manifest "
                              f"says {meta['bytes']})")
        if self.verify_reads:
            digest = hashlib.sha256(data).hexdigest()
            if digest != meta["sha256"]:
                raise BundleError(f"bundle {self.path}: sha256 of {name} does not match the manifest (got "
                                  f"{digest[:12]}…, expected {meta['sha256'][:12]}…): the bundle was modified")
        self._data[name] = data
        return data

    @property
    def read_names(self) -> set[str]:
        """Files read (and, when verifying, hashed) through `read` since the last `release`."""
        return set(self._data)

    def release(self) -> None:
        """Drop the bytes kept by `read` (the backends hold their own copies once built)."""
        self._data.clear()

    @property
    def max_len(self) -> int:
        return self.raw["max_len"]

    @property
    def n_items(self) -> int:
        return self.raw["n_items"]

    @property
    def k(self) -> int:
        return self.raw["k"]

    @property
    def attention(self) -> str:
        return self.raw["attention"]

    @property
    def noise_size(self) -> int:
        return self.raw["sampler"]["noise_size"]

    @property
    def time_buckets(self) -> int:
        """How many log2-seconds gap buckets the graph attends over; 0 = it takes no event times."""
        return self.raw["model"].get("time_buckets", 0) if INPUT_AGES in self.input_names else 0

    @property
    def inputs(self) -> list[dict]:
        return self.raw["graph"]["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.raw["graph"]["outputs"]

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.outputs]

    @property
    def aggregate(self) -> dict | None:
        """{"samples", "vote_depth", "confidence_k"} when the graph has the sample outputs, else None."""
        return self.raw["sampler"].get("aggregate")

    @property
    def exclude_in_graph(self) -> bool:
        return INPUT_EXCLUDE in self.input_names

    @property
    def fp16_file(self) -> str | None:
        return self.raw["graph"].get("fp16_file")

    @property
    def engine_file(self) -> str | None:
        return (self.raw.get("tensorrt") or {}).get("file")

    @property
    def ann(self) -> dict | None:
        """The ANN index's entry (kind, file, params, measured recall), None for exact-scoring bundles."""
        return self.raw.get("ann")

    @property
    def required_files(self) -> list[str]:
        """Every file the format needs for what this manifest claims; each must be listed and hashed."""
        need = ["model.onnx", "items.json"]
        need += [n for n in (self.fp16_file, self.engine_file, (self.ann or {}).get("file")) if n]
        return need

    def file(self, name: str) -> Path:
        """A listed file's path, after checking it is a regular file inside the bundle of the listed size."""
        return check_member(self, name)


def _fail(f: Path, where: str, what: str) -> BundleError:
    return BundleError(f"{f}: field {where!r} {what}")


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


class _Schema:
    """Field checks that raise a BundleError naming the field (dotted path) and what is wrong."""

    def __init__(self, f: Path):
        self.f = f

    def fail(self, where: str, what: str) -> BundleError:
        return _fail(self.f, where, what)

    def get(self, obj: dict, key: str, where: str, optional: bool = False) -> Any:
        if key not in obj:
            if optional:
                return None
            raise BundleError(f"{self.f}: missing field {where!r}")
        return obj[key]

    def obj(self, obj: dict, key: str, where: str, optional: bool = False) -> dict | None:
        v = self.get(obj, key, where, optional)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            raise self.fail(where, f"must be an object, got {_type_name(v)}")
        return v

    def integer(self, obj: dict, key: str, where: str, lo: int = 0, hi: int | None = None,
            optional: bool = False) -> int | None:
        v = self.get(obj, key, where, optional)
        if v is None and optional:
            return None
        if type(v) is not int:  # bool is an int subclass; true is not a count
            raise self.fail(where, f"must be an integer, got {_type_name(v)} {v!r:.40}")
        if v < lo or (hi is not None and v > hi):
            raise self.fail(where, f"must be in {lo}..{hi if hi is not None else ''}, got {v}")
        return v

    def string(self, obj: dict, key: str, where: str, optional: bool = False) -> str | None:
        v = self.get(obj, key, where, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"must be a non-empty string, got {_type_name(v)} {v!r:.40}")
        return v

    def boolean(self, obj: dict, key: str, where: str, optional: bool = False) -> bool | None:
        v = self.get(obj, key, where, optional)
        if v is None and optional:
            return None
        if not isinstance(v, bool):
            raise self.fail(where, f"must be true or false, got {_type_name(v)}")
        return v

    def number(self, obj: dict, key: str, where: str, lo: float | None = None, hi: float | None = None) -> float:
        v = self.get(obj, key, where)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(where, f"must be a number, got {_type_name(v)}")
        if (lo is not None and not v >= lo) or (hi is not None and not v <= hi):
            raise self.fail(where, f"must be in [{lo}, {hi}], got {v!r:.40}")
        return v


def check_file_name(name: Any, where: str, f: Path) -> str:
    """Only a plain file name: no separators, no '..', nothing absolute or hidden, no control characters."""
    if not isinstance(name, str) or not name:
        raise _fail(f, where, f"must be a file name, got {_type_name(name)}")
    if (name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or ":" in name
            or any(ord(c) < 32 for c in name) or os.path.isabs(name)):
        raise _fail(f, where, f"{name!r} is not a plain file name inside the bundle")
    return name


def _tensor(s: _Schema, t: Any, where: str) -> dict:
    if not isinstance(t, dict):
        raise s.fail(where, f"must be an object, got {_type_name(t)}")
    s.string(t, "name", f"{where}.name")
    s.string(t, "dtype", f"{where}.dtype")
    shape = s.get(t, "shape", f"{where}.shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise s.fail(f"{where}.shape", f"must be [\"batch\", width], got {shape!r:.60}")
    if shape[0] != "batch":
        raise s.fail(f"{where}.shape", f"axis 0 must be the dynamic \"batch\", got {shape[0]!r:.40}")
    if type(shape[1]) is not int or shape[1] < 1:
        raise s.fail(f"{where}.shape", f"axis 1 must be a positive integer, got {shape[1]!r:.40}")
    return t


def _expect_tensors(s: _Schema, got: list[dict], want: list[tuple[str, str, int]], where: str) -> None:
    """The graph spec the manifest claims must be the one its own facts (max_len, K, noise size) imply."""
    names = [t["name"] for t in got]
    if names != [n for n, _, _ in want]:
        raise s.fail(where, f"names {names} do not match what the manifest's other fields imply "
                            f"{[n for n, _, _ in want]}")
    for i, (t, (name, dtype, width)) in enumerate(zip(got, want)):
        if t["dtype"] != dtype:
            raise s.fail(f"{where}[{i}].dtype", f"of {name} must be {dtype}, got {t['dtype']!r:.40}")
        if t["shape"][1] != width:
            raise s.fail(f"{where}[{i}].shape", f"of {name} is [batch, {t['shape'][1]}], but the manifest's "
                                                f"other fields imply [batch, {width}]")


def validate_manifest(raw: Any, f: Path) -> dict:
    """Digest and strict schema of format versions 2-5 (3: ANN, 4: sample outputs, 5: event times); returns
    `raw` or raises a BundleError naming the field."""
    s = _Schema(f)
    if not isinstance(raw, dict):
        raise BundleError(f"{f}: must hold a JSON object, got {_type_name(raw)}")
    fmt = s.get(raw, "format", "format")
    if fmt != FORMAT:
        raise BundleError(f"{f}: format {fmt!r:.60} is not {FORMAT!r}")
    version = s.get(raw, "format_version", "format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS or type(version) is not int:
        raise BundleError(f"{f}: bundle format version {version!r:.40} is not supported by this runtime "
                          f"(supports {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); re-export or upgrade genattn")
    digest = s.string(raw, DIGEST_FIELD, DIGEST_FIELD)
    if not digest.startswith("sha256:") or not _SHA256.fullmatch(digest[7:]):
        raise s.fail(DIGEST_FIELD, f"must be 'sha256:' and 64 hex digits, got {digest!r:.80}")
    # Before the field checks: an edit made by hand is reported as what it is, whatever field it hit.
    if digest != manifest_digest(raw):
        raise BundleError(f"{f}: {DIGEST_FIELD} does not match the manifest's contents: manifest.json was "
                          "edited after export (re-export the bundle)")

    s.string(raw, "attention", "attention")
    s.string(raw, "created", "created", optional=True)
    s.string(raw, "checkpoint", "checkpoint", optional=True)
    max_len = s.integer(raw, "max_len", "max_len", lo=1)
    n_items = s.integer(raw, "n_items", "n_items", lo=1)
    k = s.integer(raw, "k", "k", lo=1, hi=n_items)

    model = s.obj(raw, "model", "model")
    for key in ("n_blocks", "d_model", "n_heads"):
        s.integer(model, key, f"model.{key}", lo=1)
    for key, top in (("max_len", max_len), ("n_items", n_items)):
        if key in model and model[key] != top:
            raise s.fail(f"model.{key}", f"is {model[key]!r:.40}, but the manifest's {key} is {top}")
    if "attention" in model and model["attention"] != raw["attention"]:
        raise s.fail("model.attention", f"is {model['attention']!r:.40}, but the manifest's attention is "
                                        f"{raw['attention']!r}")

    sampler = s.obj(raw, "sampler", "sampler")
    noise_size = s.integer(sampler, "noise_size", "sampler.noise_size")
    deterministic = s.boolean(sampler, "deterministic", "sampler.deterministic")
    if deterministic != (noise_size == 0):
        raise s.fail("sampler.deterministic", f"is {deterministic} but sampler.noise_size is {noise_size}")

    graph = s.obj(raw, "graph", "graph")
    tensors = {}
    for side in ("inputs", "outputs"):
        ts = s.get(graph, side, f"graph.{side}")
        if not isinstance(ts, list) or not ts:
            raise s.fail(f"graph.{side}", f"must be a non-empty array, got {_type_name(ts)}")
        tensors[side] = [_tensor(s, t, f"graph.{side}[{i}]") for i, t in enumerate(ts)]
    ann = _ann_section(s, raw, version, n_items, model)
    names = [t["name"] for t in tensors["inputs"]]
    want_in = [(INPUT_SEQ, "int64", max_len)]
    if INPUT_EXCLUDE in names and ann is None:  # an ANN graph takes no exclusion: the index search does it
        want_in.append((INPUT_EXCLUDE, "int64", max_len))
    if noise_size:
        want_in.append((INPUT_NOISE, "float32", noise_size))
    if _time_buckets(s, model, version):
        want_in.append((INPUT_AGES, "float32", max_len))
    _expect_tensors(s, tensors["inputs"], want_in, "graph.inputs")
    if ann is not None:
        want_out = [(OUTPUT_STATE, "float32", ann["dim"])]
    else:
        want_out = [(OUTPUT_ITEMS, "int64", k), (OUTPUT_SCORES, "float32", k)]
    if _aggregate_section(s, sampler, version, k, noise_size) is not None:
        if ann is not None:
            raise s.fail("sampler.aggregate", "is set on an ANN bundle, whose graph outputs the user state only")
        want_out += sample_output_specs(k)
    if OUTPUT_ALL in [t["name"] for t in tensors["outputs"]] and ann is None:
        want_out.append((OUTPUT_ALL, "float32", n_items + 1))
    _expect_tensors(s, tensors["outputs"], want_out, "graph.outputs")
    s.integer(graph, "opset", "graph.opset", lo=1)
    s.integer(graph, "nodes", "graph.nodes", lo=1)
    s.string(graph, "exporter", "graph.exporter")
    s.obj(graph, "op_counts", "graph.op_counts", optional=True)
    if graph.get("fp16_file") is not None:
        check_file_name(graph["fp16_file"], "graph.fp16_file", f)

    tools = s.obj(raw, "tools", "tools")
    for key, v in tools.items():
        if v is not None and not isinstance(v, str):
            raise s.fail(f"tools.{key}", f"must be a version string, got {_type_name(v)}")
    parity = s.obj(raw, "parity", "parity")
    fp32 = s.obj(parity, "fp32", "parity.fp32")
    s.number(fp32, "max_abs_diff", "parity.fp32.max_abs_diff")
    s.number(fp32, "min_topk_overlap", "parity.fp32.min_topk_overlap")
    s.boolean(parity, "deterministic_bit_identical", "parity.deterministic_bit_identical", optional=True)
    metrics = s.obj(raw, "training_metrics", "training_metrics", optional=True) or {}
    for split, values in metrics.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise s.fail(f"training_metrics.{split}", f"must be an object, got {_type_name(values)}")
        for name in values:
            s.number(values, name, f"training_metrics.{split}.{name}")

    trt = s.obj(raw, "tensorrt", "tensorrt", optional=True)
    if trt is not None:
        check_file_name(s.get(trt, "file", "tensorrt.file"), "tensorrt.file", f)
        s.string(trt, "tensorrt_version", "tensorrt.tensorrt_version", optional=True)
        s.string(trt, "compute_capability", "tensorrt.compute_capability", optional=True)
    s.obj(raw, "tensorrt_graph_check", "tensorrt_graph_check", optional=True)
    s.obj(raw, "triton", "triton", optional=True)

    files = s.obj(raw, "files", "files")
    if not files:
        raise s.fail("files", "is empty: every file of the bundle must be listed with its size and sha256")
    for name, meta in files.items():
        where = f"files.{name}"
        check_file_name(name, f"files key {name!r:.60}", f)
        if not isinstance(meta, dict):
            raise s.fail(where, f"must be an object, got {_type_name(meta)}")
        digest_ = s.get(meta, "sha256", f"{where}.sha256")
        if not isinstance(digest_, str) or not _SHA256.fullmatch(digest_):
            raise s.fail(f"{where}.sha256", f"must be 64 lowercase hex digits, got {digest_!r:.80}")
        s.integer(meta, "bytes", f"{where}.bytes")
    m = Manifest(raw=raw, path=f.parent)
    for name in m.required_files:
        if name not in files:
            raise s.fail("files", f"does not list {name}, which the bundle needs: a file the manifest does "
                                  "not hash is not loaded")
    return raw


ANN_KINDS = ("hnsw", "ivfpq", "flat-fp16")
ANN_PARAMS = {"hnsw": ("m", "ef_construction", "ef_search"), "ivfpq": ("nlist", "nprobe", "pq_m", "pq_bits"),
              "flat-fp16": ()}


def _time_buckets(s: _Schema, model: dict, version: int) -> int:
    """"model.time_buckets": >= 1 exactly in version 5 (whose graph then takes item_ages), else 0 or absent."""
    n = s.integer(model, "time_buckets", "model.time_buckets", optional=version != TIME_FORMAT_VERSION) or 0
    if version == TIME_FORMAT_VERSION and n < 1:
        raise s.fail("model.time_buckets", f"must be >= 1 in format_version {TIME_FORMAT_VERSION} (a graph that "
                                           "attends over time gaps), got 0")
    if version != TIME_FORMAT_VERSION and n:
        raise s.fail("model.time_buckets", f"is {n}: a graph over time gaps needs format_version "
                                           f"{TIME_FORMAT_VERSION}, the manifest says {version}")
    return n


def _section(s: _Schema, obj: dict, key: str, where: str, version: int, own: int) -> dict | None:
    """An optional feature section: required in its own format version, allowed in version 5 (which
    adds event times to any of 2-4), refused in the others."""
    if version == TIME_FORMAT_VERSION:
        return s.obj(obj, key, where, optional=True)
    if version != own:
        if key in obj:
            raise s.fail(where, f"needs format_version {own}, the manifest says {version}")
        return None
    return s.obj(obj, key, where)


def _aggregate_section(s: _Schema, sampler: dict, version: int, k: int, noise_size: int) -> dict | None:
    """"sampler.aggregate": present exactly in version 4 (or 5), on a stochastic graph; its sample count (>= 2),
    the depth of the lists the vote counts and the k of the confidence's overlap (both <= K)."""
    agg = _section(s, sampler, "aggregate", "sampler.aggregate", version, SAMPLES_FORMAT_VERSION)
    if agg is None:
        return None
    if noise_size == 0:
        raise s.fail("sampler.aggregate", "is set but the sampler is deterministic (one sample has nothing to merge)")
    s.integer(agg, "samples", "sampler.aggregate.samples", lo=2)
    s.integer(agg, "vote_depth", "sampler.aggregate.vote_depth", lo=1, hi=k)
    s.integer(agg, "confidence_k", "sampler.aggregate.confidence_k", lo=1, hi=k)
    return agg


def _ann_section(s: _Schema, raw: dict, version: int, n_items: int, model: dict) -> dict | None:
    """The "ann" entry: present exactly in version 3 (or 5); its kind, file, size, width, parameters and the
    recall export measured (the runtime sets the search parameters from it)."""
    ann = _section(s, raw, "ann", "ann", version, ANN_FORMAT_VERSION)
    if ann is None:
        return None
    kind = s.string(ann, "kind", "ann.kind")
    if kind not in ANN_KINDS:
        raise s.fail("ann.kind", f"must be one of {ANN_KINDS}, got {kind!r:.40}")
    check_file_name(s.get(ann, "file", "ann.file"), "ann.file", s.f)
    s.string(ann, "library", "ann.library")
    s.string(ann, "library_version", "ann.library_version", optional=True)
    if s.get(ann, "metric", "ann.metric") != "inner_product":
        raise s.fail("ann.metric", f"must be \"inner_product\" (the model's score), got {ann['metric']!r:.40}")
    dim = s.integer(ann, "dim", "ann.dim", lo=1)
    if dim != model["d_model"]:
        raise s.fail("ann.dim", f"is {dim}, but model.d_model is {model['d_model']}")
    if s.integer(ann, "n_vectors", "ann.n_vectors", lo=1) != n_items:
        raise s.fail("ann.n_vectors", f"is {ann['n_vectors']}, but n_items is {n_items}")
    if s.integer(ann, "id_offset", "ann.id_offset") != 1:
        raise s.fail("ann.id_offset", f"must be 1 (index row r holds internal item r + 1), got {ann['id_offset']}")
    params = s.obj(ann, "params", "ann.params")
    for key in ANN_PARAMS[kind]:
        s.integer(params, key, f"ann.params.{key}", lo=1)
    if kind == "ivfpq":
        s.number(params, "k_factor", "ann.params.k_factor", lo=1.0)
    recall = s.obj(ann, "recall", "ann.recall")
    for key in ("recall_at_10", "min_recall"):
        s.number(recall, key, f"ann.recall.{key}", lo=0.0, hi=1.0)
    s.integer(recall, "queries", "ann.recall.queries", lo=1)
    s.string(recall, "source", "ann.recall.source")
    return ann


def read_manifest(bundle: str | Path) -> Manifest:
    """Parse manifest.json, validate its schema and check its digest (no file hashing)."""
    bundle = Path(bundle)
    f = bundle / MANIFEST_FILE
    if not bundle.is_dir():
        raise BundleError(f"bundle folder not found: {bundle}")
    st = regular_file_inside(bundle, MANIFEST_FILE)
    if st is None:
        raise BundleError(f"{bundle} is not a genattn bundle: {MANIFEST_FILE} missing")
    try:
        size = st.st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{f}: {size} bytes, more than any manifest ({MAX_MANIFEST_BYTES}): refused")
        data = f.read_bytes()
    except OSError as e:
        raise BundleError(f"{f}: unreadable ({e.strerror or e})") from e
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{f}: not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{f}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise BundleError(f"{f}: JSON nested too deeply") from e
    validate_manifest(raw, f)
    return Manifest(raw=raw, path=bundle)


# ---------------------------------------------------------------- files

def regular_file_inside(bundle: Path, name: str) -> os.stat_result | None:
    """stat of bundle/name if it is a regular file inside the bundle (a symbolic link only if it
    resolves inside), None if absent; BundleError otherwise (a FIFO would block a reader forever)."""
    p = bundle / name
    try:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            if bundle.resolve() not in p.resolve().parents:
                raise BundleError(f"bundle {bundle}: {name} is a symbolic link to a file outside the bundle: refused")
            st = os.stat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BundleError(f"bundle {bundle}: {name} unreadable ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"bundle {bundle}: {name} is not a regular file")
    return st


def check_member(manifest: Manifest, name: str) -> Path:
    """`name` from the file table: a regular file inside the bundle (a symlink only if it stays inside),
    of the recorded size. Cheap (no hashing): done on every load, also with verify=False."""
    meta = manifest.raw["files"].get(name)
    if meta is None:
        raise BundleError(f"bundle {manifest.path}: {name} is not listed in the manifest's file table")
    p = manifest.path / name
    st = regular_file_inside(manifest.path, name)
    if st is None:
        raise BundleError(f"bundle {manifest.path}: file {name} listed in the manifest is missing")
    if st.st_size != meta["bytes"]:
        raise BundleError(f"bundle {manifest.path}: {name} has {st.st_size} bytes, manifest says "
                          f"{meta['bytes']}: the bundle was modified or truncated")
    return p


def check_files(manifest: Manifest, skip: set[str] | frozenset = frozenset()) -> None:
    """Every listed file present, regular, inside the bundle and of the recorded size (`skip`:
    files whose bytes the loader already holds, checked when they were read)."""
    for name in manifest.raw["files"]:
        if name not in skip:
            check_member(manifest, name)


def verify_files(manifest: Manifest, skip: set[str] | frozenset = frozenset()) -> None:
    """`check_files`, then the sha256 of every listed file against the manifest (`skip`: files
    already hashed from the bytes the loader uses, `Manifest.read`)."""
    check_files(manifest, skip)
    for name, meta in manifest.raw["files"].items():
        if name in skip:
            continue
        try:
            digest = sha256_file(manifest.path / name)
        except OSError as e:
            raise BundleError(f"bundle {manifest.path}: {name} unreadable ({e.strerror or e})") from e
        if digest != meta["sha256"]:
            raise BundleError(f"bundle {manifest.path}: sha256 of {name} does not match the manifest "
                              f"(got {digest[:12]}…, expected {meta['sha256'][:12]}…): the bundle was modified")


# ---------------------------------------------------------------- the graph against the manifest

# ONNX Runtime's type strings (NodeArg.type) -> the manifest's numpy dtype names
ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
              "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(bool)": "bool"}


def check_graph_io(manifest: Manifest, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]],
                   source: str, half_scores: bool = False) -> None:
    """Cross-check what the opened graph states against the manifest.

    inputs / outputs: (name, numpy dtype name, shape) as the graph declares them; a shape
    entry is an int (static), or a string / None (symbolic). The batch axis must be
    symbolic; every other axis the graph states must equal the manifest's (max_len for
    the sequence inputs, noise_size, K, n_items + 1). A symbolic non-batch output axis is
    left to the probe run at load, which checks the actual output shapes.
    half_scores: the graph is the bundle's FP16 variant, whose float32 score outputs may be
    float16 (the manifest's graph spec is the fp32 graph's; the runtime casts scores to float32).
    """
    where = f"bundle {manifest.path}: {source}"
    for side, got, want in (("inputs", inputs, manifest.inputs), ("outputs", outputs, manifest.outputs)):
        got_names = [n for n, _, _ in got]
        want_names = [t["name"] for t in want]
        if side == "outputs":  # extra graph outputs are harmless; the ones the manifest names must exist
            missing = [n for n in want_names if n not in got_names]
            if missing:
                raise BundleError(f"{where} has outputs {got_names}, the manifest names {want_names}: "
                                  f"{missing} missing")
        elif got_names != want_names:
            raise BundleError(f"{where} has inputs {got_names}, the manifest says {want_names}")
        by_name = {n: (d, sh) for n, d, sh in got}
        for t in want:
            dtype, shape = by_name[t["name"]]
            if dtype != t["dtype"] and not (half_scores and side == "outputs" and (t["dtype"], dtype) ==
                                            ("float32", "float16")):
                raise BundleError(f"{where}: {t['name']} is {dtype}, the manifest says {t['dtype']}")
            shape = list(shape) if shape is not None else []
            if len(shape) != 2:
                raise BundleError(f"{where}: {t['name']} has shape {shape}, the manifest says "
                                  f"[batch, {t['shape'][1]}]")
            if isinstance(shape[0], int):
                raise BundleError(f"{where}: {t['name']} has a fixed batch of {shape[0]}; the contract "
                                  "needs a dynamic batch axis")
            width = shape[1]
            if isinstance(width, int):
                if width != t["shape"][1]:
                    raise BundleError(f"{where}: {t['name']} is [batch, {width}], the manifest says "
                                      f"[batch, {t['shape'][1]}]")
            elif side == "inputs":
                raise BundleError(f"{where}: {t['name']} has no fixed width ({width!r}); the contract "
                                  f"needs [batch, {t['shape'][1]}]")


# ---------------------------------------------------------------- items table

@dataclass
class ItemTable:
    item_ids: list
    popularity: Any  # np.ndarray (n_items + 1,)
    index: dict = field(default_factory=dict)  # str(raw id) -> internal index

    @classmethod
    def load(cls, path: Path, data: bytes | None = None) -> "ItemTable":
        """items.json (its bytes `data` when already read) with its types checked; every failure is
        a BundleError naming the field."""
        import numpy as np

        try:
            raw = json.loads((path.read_bytes() if data is None else data).decode("utf-8"))
        except OSError as e:
            raise BundleError(f"{path}: unreadable ({e.strerror or e})") from e
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise BundleError(f"{path}: not valid UTF-8 JSON ({type(e).__name__}: {e})") from e
        if not isinstance(raw, dict):
            raise BundleError(f"{path}: must hold a JSON object, got {_type_name(raw)}")
        ids, pop = raw.get("item_ids"), raw.get("popularity")
        if not isinstance(ids, list):
            raise _fail(path, "item_ids", f"must be an array of ids, got {_type_name(ids)}")
        for i, x in enumerate(ids):
            if type(x) not in (int, str):
                raise _fail(path, f"item_ids[{i}]", f"must be an integer or a string, got {_type_name(x)}")
        if not isinstance(pop, list) or not all(type(x) is int and x >= 0 for x in pop):
            raise _fail(path, "popularity", "must be an array of non-negative integer counts")
        try:
            popularity = np.asarray(pop, dtype=np.int64)
        except OverflowError:
            raise _fail(path, "popularity", "holds counts too large for int64") from None
        return cls(item_ids=ids, popularity=popularity,
                   index={str(v): i + 1 for i, v in enumerate(ids)})
