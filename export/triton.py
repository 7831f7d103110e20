"""Triton Inference Server model repository for a bundle.

    <repo>/<name>/config.pbtxt        ONNX Runtime backend
    <repo>/<name>/1/model.onnx
    <repo>/<name>/items.json          the bundle's id map (internal index i is item_ids[i - 1])
    <repo>/<name>/genattn_model.json  which bundle wrote the folder (the overwrite check)
    <repo>/<name>_fp16/...            ONNX Runtime, the bundle's model.fp16.onnx (with --fp16)
    <repo>/<name>_trt/config.pbtxt    TensorRT backend (only with an engine)
    <repo>/<name>_trt/1/model.plan

A model folder is replaced only when it was written from the same bundle folder (or with
force=True); a folder of another bundle, or one without genattn_model.json, is refused
with TritonModelExists, so two bundles cannot overwrite each other's model by sharing a name.

With max_batch_size > 0 Triton owns the batch axis (dimension 0 of every tensor), so the
configs list the graph tensors without it; the dynamic batcher groups requests up to the
preferred sizes within max_queue_delay_microseconds. A TensorRT plan only loads in a Triton
whose TensorRT release and GPU match the engine's (see tensorrt.check_engine_compat).

parse_config validates a config.pbtxt against Triton's ModelConfig schema when tritonclient's
model_config_pb2 is installed (`pip install --no-deps tritonclient` is enough), otherwise with
a small parser of the fields we write.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from genattn.fileio import atomic_dir
from genattn_runtime.bundle import sha256_file

log = logging.getLogger(__name__)

# numpy dtype name -> Triton data type.
DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
TRITON_DTYPES = frozenset(DTYPES.values()) | {"TYPE_STRING"}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx", "pytorch_libtorch", "tensorflow_graphdef",
             "tensorflow_savedmodel", "ensemble")

# Our backends: (config key, its value, model file name in the version folder).
BACKENDS = {
    "onnxruntime": ("backend", "onnxruntime", "model.onnx"),
    "tensorrt": ("platform", "tensorrt_plan", "model.plan"),
}

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_NAME = 200  # a folder name, leaving room for the "_fp16" / "_trt" variants
DEFAULT_NAME = "genattn"

ID_MAP = "items.json"
PROVENANCE = "genattn_model.json"
PROVENANCE_FORMAT = "genattn-triton-model"
# variant -> folder suffix
VARIANTS = {"onnxruntime": "", "fp16": "_fp16", "tensorrt": "_trt"}


class TritonError(ValueError):
    """A Triton model name or repository the export cannot use; the message says which and why."""


class TritonModelExists(TritonError):
    """The repository already holds a different model under the name (pass force to replace it)."""


def check_model_name(name: str) -> str:
    """`name` if it is usable as a Triton model name and folder, else TritonError saying why."""
    if not isinstance(name, str) or not name:
        raise TritonError("Triton model name is empty")
    if len(name) > MAX_NAME:
        raise TritonError(f"Triton model name {name[:40]!r}... is {len(name)} characters long (at most {MAX_NAME})")
    if not _NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.\-]", c)})
        why = (f"characters {bad} are not allowed" if bad
               else "it must not start with '.' or '-'")
        raise TritonError(f"Triton model name {name!r} is invalid: {why} "
                          f"(use letters, digits, '_', '.', '-'; first a letter, digit or '_')")
    return name


def triton_model_name(bundle: str | Path) -> str:
    """The default model name: the bundle folder's name with every character Triton names do not
    take replaced by '_' (and a leading '.' or '-' dropped); "genattn" if nothing is left."""
    raw = Path(bundle).resolve().name
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", raw).lstrip(".-")[:MAX_NAME]
    return check_model_name(name if name.strip("_") else DEFAULT_NAME)


def _owner(folder: Path) -> str | None:
    """The bundle that wrote a model folder, or None when the folder is not one of ours."""
    try:
        info = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != PROVENANCE_FORMAT:
        return None
    return info.get("bundle") if isinstance(info.get("bundle"), str) else None


def check_triton_target(repo: str | Path, name: str, bundle: str | Path, variants: list[str],
                        force: bool = False) -> list[Path]:
    """The model folders an export of `bundle` would write; TritonModelExists if one of them
    holds another bundle's model (or a folder we did not write) and force is off."""
    check_model_name(name)
    repo, bundle = Path(repo), str(Path(bundle).resolve())
    if repo.exists() and not repo.is_dir():
        raise TritonError(f"Triton repository {repo} exists and is not a folder")
    folders = [repo / f"{name}{VARIANTS[v]}" for v in variants]
    if force:
        return folders
    for folder in folders:
        if not folder.exists():
            continue
        owner = _owner(folder)
        if owner != bundle:
            by = f"written from {owner}" if owner else f"not written by genattn export (no valid {PROVENANCE})"
            raise TritonModelExists(f"Triton model {folder.name!r} already exists in {repo}, {by}; choose another "
                                    f"name (--triton-name) or replace it (--triton-force)")
    return folders


@dataclass
class TritonOptions:
    model_name: str = DEFAULT_NAME           # folder and Triton model name (variants add "_fp16", "_trt")
    max_batch_size: int = 256                # largest batch the dynamic batcher forms
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 32, 64])
    max_queue_delay_us: int = 500            # how long a request may wait for a batch to fill
    instance_count: int = 1                  # model instances (parallel executions) per device
    instance_kind: str = "KIND_CPU"          # KIND_CPU | KIND_GPU (the TensorRT model is always GPU)
    backends: tuple = ("onnxruntime",)       # add "tensorrt" when an engine exists

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model_name)
        except TritonError as e:
            raise TritonError(f"model_name: {e}") from None
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (the graph has a batch axis), got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} are outside 1..max_batch_size={self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"instance_kind must be one of {INSTANCE_KINDS}, got {self.instance_kind!r}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise ValueError(f"backends must be a non-empty subset of {tuple(BACKENDS)}, got {self.backends!r}")


# --------------------------------------------------------------------------- writing


def _quote(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ints(values: list[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _tensor_block(t: dict) -> str:
    """One input/output entry; the batch axis (axis 0) is dropped, Triton adds it back."""
    name, dtype, shape = t["name"], t["dtype"], list(t["shape"])
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {dtype!r} has no Triton data type (known: {sorted(DTYPES)})")
    if not shape or not isinstance(shape[0], str):
        raise ValueError(f"tensor {name!r}: shape {shape} has no dynamic batch axis 0, which Triton needs "
                         f"when max_batch_size > 0")
    dims = [-1 if isinstance(d, str) else int(d) for d in shape[1:]]
    lines = [f"    name: {_quote(name)}", f"    data_type: {DTYPES[dtype]}"]
    if dims:
        lines.append(f"    dims: {_ints(dims)}")
    else:  # a per-row scalar: Triton needs a dim, so [1] reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(name: str, backend: str, inputs: list[dict], outputs: list[dict], opts: TritonOptions) -> str:
    """config.pbtxt text for the graph tensors `inputs` / `outputs` (the bundle manifest's)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if not inputs or not outputs:
        raise ValueError("a Triton model needs at least one input and one output")
    key, value, filename = BACKENDS[backend]
    kind = opts.instance_kind
    if backend == "tensorrt" and kind != "KIND_GPU":
        kind = "KIND_GPU"  # a TensorRT plan runs on a GPU only
    parts = [
        "# generated by genattn_export.triton",
        f"name: {_quote(name)}",
        f"{key}: {_quote(value)}",
        f"default_model_filename: {_quote(filename)}",
        f"max_batch_size: {int(opts.max_batch_size)}",
        "input [\n" + ",\n".join(_tensor_block(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t) for t in outputs) + "\n]",
        "dynamic_batching {"
        + (f"\n  preferred_batch_size: {_ints(opts.preferred_batch_sizes)}" if opts.preferred_batch_sizes else "")
        + f"\n  max_queue_delay_microseconds: {int(opts.max_queue_delay_us)}\n}}",
        f"instance_group [\n  {{\n    count: {int(opts.instance_count)}\n    kind: {kind}\n  }}\n]",
    ]
    return "\n".join(parts) + "\n"


def _trt_options(opts: TritonOptions, manifest: dict) -> TritonOptions:
    """The TensorRT model's options: GPU instances, batch sizes within the engine's profile."""
    prof = (manifest.get("tensorrt") or {}).get("profile") or {}
    if int(prof.get("min_batch", 1)) > 1:
        raise ValueError(f"the engine's profile starts at batch {prof['min_batch']}, but Triton's dynamic "
                         f"batcher sends any batch from 1; rebuild the engine with min_batch=1")
    cap = min(opts.max_batch_size, int(prof.get("max_batch", opts.max_batch_size)))
    return replace(opts, max_batch_size=cap, instance_kind="KIND_GPU",
                   preferred_batch_sizes=[b for b in opts.preferred_batch_sizes if b <= cap])


def write_triton_repo(repo: Path, manifest: dict, onnx_path: Path, engine_path: Path | None,
                      opts: TritonOptions, *, fp16_path: Path | None = None, items_path: Path | None = None,
                      bundle: Path | None = None, force: bool = False) -> list[Path]:
    """Write the model folders into `repo` (each replaced whole and atomically); return the configs.

    fp16_path adds the `<name>_fp16` model; items_path (default: items.json beside onnx_path) is
    the id map shipped in every model folder; bundle (default: onnx_path's folder) identifies the
    writer for the overwrite check (check_triton_target). Every config is made and validated and
    every target checked before anything is written.
    """
    repo, onnx_path = Path(repo), Path(onnx_path)
    bundle = Path(bundle) if bundle is not None else onnx_path.parent
    items_path = Path(items_path) if items_path is not None else onnx_path.parent / ID_MAP
    graph = manifest["graph"]
    inputs, outputs = graph["inputs"], graph["outputs"]
    if "tensorrt" in opts.backends and engine_path is None:
        raise ValueError("backends include 'tensorrt' but no engine_path was given")
    if not items_path.is_file():
        raise FileNotFoundError(f"id map not found: {items_path} (a Triton client needs it to map item ids)")
    models = []  # (variant, config text, model file, its name in the version folder)
    if "onnxruntime" in opts.backends:
        for variant, path in (("onnxruntime", onnx_path), ("fp16", fp16_path)):
            if path is None:
                continue
            if not Path(path).is_file():
                raise FileNotFoundError(f"ONNX file not found: {path}")
            name = opts.model_name + VARIANTS[variant]
            models.append((variant, triton_config(name, "onnxruntime", inputs, outputs, opts), Path(path),
                           BACKENDS["onnxruntime"][2]))
    elif fp16_path is not None:
        raise ValueError("fp16_path needs the 'onnxruntime' backend")
    if engine_path is not None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {engine_path}")
        name = opts.model_name + VARIANTS["tensorrt"]
        cfg = triton_config(name, "tensorrt", inputs, outputs, _trt_options(opts, manifest))
        models.append(("tensorrt", cfg, engine_path, BACKENDS["tensorrt"][2]))
    for _, cfg, _, _ in models:
        parse_config(cfg)  # never write a config Triton would reject
    targets = check_triton_target(repo, opts.model_name, bundle, [m[0] for m in models], force=force)
    for variant, suffix in VARIANTS.items():
        stale = repo / f"{opts.model_name}{suffix}"
        if variant not in [m[0] for m in models] and stale.exists() and _owner(stale) == str(bundle.resolve()):
            log.warning("%s holds a %s model from an earlier export; it was not rewritten and may be stale",
                        stale, variant)
    provenance = {"format": PROVENANCE_FORMAT, "bundle": str(bundle.resolve()),
                  "created": manifest.get("created")}
    written = []
    for target, (variant, cfg, model_file, filename) in zip(targets, models):
        with atomic_dir(target) as tmp:
            (tmp / "config.pbtxt").write_text(cfg)
            (tmp / "1").mkdir()
            shutil.copyfile(model_file, tmp / "1" / filename)
            shutil.copyfile(items_path, tmp / ID_MAP)
            info = {**provenance, "variant": variant, "model_sha256": sha256_file(model_file)}
            (tmp / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
        written.append(target / "config.pbtxt")
    return written


# --------------------------------------------------------------------------- parsing and validation


@functools.lru_cache(maxsize=1)
def _model_config_pb2() -> Any:
    """tritonclient's generated ModelConfig module, or None.

    `tritonclient.grpc` needs grpcio to import, but its model_config_pb2 needs only protobuf,
    so without grpcio the module is loaded from its file.
    """
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError when grpcio is missing
        pass
    try:
        spec = importlib.util.find_spec("tritonclient")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            path = Path(loc) / "grpc" / "model_config_pb2.py"
            if path.is_file():
                mspec = importlib.util.spec_from_file_location("genattn_export._triton_model_config_pb2", path)
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
                return module
    except Exception:  # noqa: BLE001 - e.g. a protobuf runtime older than the generated code
        log.debug("tritonclient's model_config_pb2 is not loadable; using the built-in parser", exc_info=True)
    return None


def parse_config(text: str, *, strict: bool | None = None) -> dict:
    """Parse and validate config.pbtxt text into a dict; ValueError names the bad field.

    strict=None uses Triton's ModelConfig schema when tritonclient is installed, else the
    built-in parser; True requires the schema (ImportError without it); False forces the
    built-in parser. Enums come back as names ("TYPE_INT64"), repeated fields as lists.
    """
    pb2 = _model_config_pb2() if strict is not False else None
    if strict and pb2 is None:
        raise ImportError("strict Triton config validation needs tritonclient: pip install --no-deps tritonclient")
    if pb2 is not None:
        from google.protobuf import text_format

        try:
            cfg = _message_dict(text_format.Parse(text, pb2.ModelConfig()))
        except text_format.ParseError as e:
            raise ValueError(f"config.pbtxt: {e}") from e
    else:
        cfg = _Parser(text).config()
    _validate(cfg)
    return cfg


def _message_dict(msg: Any) -> dict:
    return {f.name: _field_value(f, v) for f, v in msg.ListFields()}


def _field_value(f: Any, value: Any) -> Any:
    mt = f.message_type
    if mt is not None and mt.GetOptions().map_entry:
        vf = mt.fields_by_name["value"]
        return [{"key": k, "value": _scalar(vf, v)} for k, v in value.items()]
    repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
    return [_scalar(f, v) for v in value] if repeated else _scalar(f, value)


def _scalar(f: Any, v: Any) -> Any:
    if f.message_type is not None:
        return _message_dict(v)
    if f.enum_type is not None:
        ev = f.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else v
    return v


# The fields of Triton's ModelConfig (model_config.proto) the built-in parser knows, and which
# of them repeat; sub-messages we do not write are accepted without a closer look.
_TOP_FIELDS = {
    "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input", "output",
    "batch_input", "batch_output", "optimization", "dynamic_batching", "sequence_batching",
    "ensemble_scheduling", "instance_group", "default_model_filename", "cc_model_filenames",
    "metric_tags", "parameters", "model_warmup", "model_operations", "model_transaction_policy",
    "model_repository_agents", "response_cache", "model_metrics",
}
_INPUT_FIELDS = {"name", "data_type", "format", "dims", "reshape", "is_shape_tensor", "allow_ragged_batch",
                 "optional", "is_non_linear_format_io"}
_OUTPUT_FIELDS = {"name", "data_type", "dims", "reshape", "label_filename", "is_shape_tensor",
                  "is_non_linear_format_io"}
_BATCHING_FIELDS = {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                    "priority_levels", "default_priority_level", "default_queue_policy", "priority_queue_policy"}
_GROUP_FIELDS = {"name", "kind", "count", "rate_limiter", "gpus", "secondary_devices", "profile", "passive",
                 "host_policy"}
_REPEATED = {"input", "output", "batch_input", "batch_output", "instance_group", "cc_model_filenames",
             "metric_tags", "parameters", "model_warmup", "dims", "shape", "preferred_batch_size", "gpus",
             "profile", "secondary_devices", "priority_queue_policy"}


class _Parser:
    """Protobuf text format, enough for config.pbtxt: fields, messages, lists, comments."""

    _TOKEN = re.compile(r"""
        (?P<ws>\s+|\#[^\n]*)
      | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)
      | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[{}\[\]<>:,;])
    """, re.VERBOSE)

    def __init__(self, text: str):
        self.tokens: list[tuple[str, Any, int]] = []
        pos, line = 0, 1
        while pos < len(text):
            m = self._TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"config.pbtxt line {line}: cannot read {text[pos:pos + 20]!r}")
            kind, tok = m.lastgroup, m.group()
            if kind != "ws":
                self.tokens.append((kind, tok, line))
            line += tok.count("\n")
            pos = m.end()
        self.i = 0

    def _peek(self) -> tuple[str, Any, int]:
        if self.i < len(self.tokens):
            return self.tokens[self.i]
        return ("eof", "", self.tokens[-1][2] if self.tokens else 1)

    def _take(self, expect: str | None = None) -> tuple[str, Any, int]:
        kind, tok, line = self._peek()
        if expect is not None and tok != expect:
            raise ValueError(f"config.pbtxt line {line}: expected {expect!r}, got {tok or 'end of text'!r}")
        self.i += 1
        return kind, tok, line

    def config(self) -> dict:
        msg = self._message(end="")
        unknown = sorted(set(msg) - _TOP_FIELDS)
        if unknown:
            raise ValueError(f"config.pbtxt: unknown field(s) {unknown} (not in Triton's ModelConfig)")
        return msg

    def _message(self, end: str) -> dict:
        msg: dict[str, Any] = {}
        while True:
            kind, tok, line = self._peek()
            if tok == end and (end or kind == "eof"):
                if end:
                    self._take()
                # as protobuf: an empty repeated field is the same as an absent one
                return {k: v for k, v in msg.items() if not (k in _REPEATED and v == [])}
            if kind == "eof":
                raise ValueError(f"config.pbtxt: unexpected end of text, {end!r} missing")
            if kind != "id":
                raise ValueError(f"config.pbtxt line {line}: expected a field name, got {tok!r}")
            self._take()
            if self._peek()[1] == ":":
                self._take()
            value = self._value()
            if tok in _REPEATED:
                msg.setdefault(tok, []).extend(value if isinstance(value, list) else [value])
            elif tok in msg:
                raise ValueError(f"config.pbtxt line {line}: field {tok!r} given twice")
            else:
                msg[tok] = value
            if self._peek()[1] in (",", ";"):
                self._take()

    def _value(self) -> Any:
        kind, tok, line = self._peek()
        if tok in ("{", "<"):
            self._take()
            return self._message(end="}" if tok == "{" else ">")
        if tok == "[":
            self._take()
            items = []
            while self._peek()[1] != "]":
                items.append(self._value())
                if self._peek()[1] == ",":
                    self._take()
                elif self._peek()[1] != "]":
                    k, t, ln = self._peek()
                    raise ValueError(f"config.pbtxt line {ln}: expected ',' or ']' in a list, "
                                     f"got {t if k != 'eof' else 'end of text'!r}")
            self._take("]")
            return items
        self._take()
        if kind == "str":
            return ast.literal_eval(tok)
        if kind == "num":
            t = tok.rstrip("fF")
            return int(t) if re.fullmatch(r"[-+]?\d+", t) else float(t)
        if kind == "id":
            return {"true": True, "false": False}.get(tok, tok)
        raise ValueError(f"config.pbtxt line {line}: expected a value, got {tok or 'end of text'!r}")


def _check_fields(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"config.pbtxt: {where} must be a message {{ ... }}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"config.pbtxt: {where}: unknown field(s) {unknown}")
    return d


def _int(v: Any, where: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"config.pbtxt: {where} must be an integer >= {lo}, got {v!r}")
    return v


def _validate(cfg: dict) -> None:
    """The documented ModelConfig fields we rely on; ValueError names the first bad one."""
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("config.pbtxt: name is missing or empty")
    platform, backend = cfg.get("platform"), cfg.get("backend")
    if not platform and not backend:
        raise ValueError("config.pbtxt: neither platform nor backend is set")
    if platform and platform not in PLATFORMS:
        raise ValueError(f"config.pbtxt: platform {platform!r} is not one of {PLATFORMS}")
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise ValueError(f"config.pbtxt: backend must be a non-empty string, got {backend!r}")
    max_batch = _int(cfg.get("max_batch_size", 0), "max_batch_size", 0)
    for key, allowed in (("input", _INPUT_FIELDS), ("output", _OUTPUT_FIELDS)):
        tensors = cfg.get(key) or []
        if not tensors:
            raise ValueError(f"config.pbtxt: no {key} tensors")
        seen = set()
        for j, t in enumerate(tensors):
            where = f"{key}[{j}]"
            _check_fields(t, allowed, where)
            tname = t.get("name")
            if not isinstance(tname, str) or not tname:
                raise ValueError(f"config.pbtxt: {where}.name is missing or empty")
            if tname in seen:
                raise ValueError(f"config.pbtxt: {where}.name {tname!r} is used twice")
            seen.add(tname)
            dtype = t.get("data_type")
            if dtype not in TRITON_DTYPES:
                raise ValueError(f"config.pbtxt: {where}.data_type {dtype!r} is not a Triton data type "
                                 f"({', '.join(sorted(TRITON_DTYPES))})")
            dims = t.get("dims") or []
            if not dims:
                raise ValueError(f"config.pbtxt: {where}.dims is missing")
            for d in dims:
                if isinstance(d, bool) or not isinstance(d, int) or d < -1 or d == 0:
                    raise ValueError(f"config.pbtxt: {where}.dims {dims} must be sizes >= 1 or -1 (variable)")
    db = cfg.get("dynamic_batching")
    if db is not None:
        _check_fields(db, _BATCHING_FIELDS, "dynamic_batching")
        for b in db.get("preferred_batch_size", []):
            _int(b, "dynamic_batching.preferred_batch_size", 1)
            if max_batch and b > max_batch:
                raise ValueError(f"config.pbtxt: dynamic_batching.preferred_batch_size {b} exceeds "
                                 f"max_batch_size {max_batch}")
        _int(db.get("max_queue_delay_microseconds", 0), "dynamic_batching.max_queue_delay_microseconds", 0)
    for j, g in enumerate(cfg.get("instance_group") or []):
        where = f"instance_group[{j}]"
        _check_fields(g, _GROUP_FIELDS, where)
        if "count" in g:
            _int(g["count"], f"{where}.count", 1)
        if "kind" in g and g["kind"] not in INSTANCE_KINDS:
            raise ValueError(f"config.pbtxt: {where}.kind {g['kind']!r} is not one of {INSTANCE_KINDS}")
