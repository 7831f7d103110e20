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

The configs are Triton's own ModelConfig message, checked, rendered and written by
genattn_runtime.triton_config (which the Triton engine's model config goes through too);
that needs tritonclient[grpc], which the train extra installs.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from genattn.fileio import atomic_dir
from genattn_runtime import triton_config as pbtxt
from genattn_runtime.bundle import sha256_file

log = logging.getLogger(__name__)

# numpy dtype name -> Triton data type.
DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}

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
    pbtxt.model_config_pb2()  # the configs need tritonclient: say so before the export's work, not after
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
        kinds = tuple(pbtxt.model_config_pb2().ModelInstanceGroup.Kind.keys())
        if self.instance_kind not in kinds:
            raise ValueError(f"instance_kind must be one of {kinds}, got {self.instance_kind!r}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise ValueError(f"backends must be a non-empty subset of {tuple(BACKENDS)}, got {self.backends!r}")


# --------------------------------------------------------------------------- writing


def _tensor(t: dict) -> dict:
    """One input/output entry; the batch axis (axis 0) is dropped, Triton adds it back."""
    name, dtype, shape = t["name"], t["dtype"], list(t["shape"])
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {dtype!r} has no Triton data type (known: {sorted(DTYPES)})")
    if not shape or not isinstance(shape[0], str):
        raise ValueError(f"tensor {name!r}: shape {shape} has no dynamic batch axis 0, which Triton needs "
                         f"when max_batch_size > 0")
    dims = [-1 if isinstance(d, str) else int(d) for d in shape[1:]]
    if not dims:  # a per-row scalar: Triton needs a dim, so [1] reshaped to []
        return {"name": name, "data_type": DTYPES[dtype], "dims": [1], "reshape": {"shape": []}}
    return {"name": name, "data_type": DTYPES[dtype], "dims": dims}


def triton_config(name: str, backend: str, inputs: list[dict], outputs: list[dict], opts: TritonOptions) -> Any:
    """The checked ModelConfig message for the graph tensors `inputs` / `outputs` (the bundle manifest's);
    genattn_runtime.triton_config renders and writes it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if not inputs or not outputs:
        raise ValueError("a Triton model needs at least one input and one output")
    key, value, filename = BACKENDS[backend]
    kind = opts.instance_kind
    if backend == "tensorrt" and kind != "KIND_GPU":
        kind = "KIND_GPU"  # a TensorRT plan runs on a GPU only
    fields = {
        "name": name,
        key: value,
        "default_model_filename": filename,
        "max_batch_size": int(opts.max_batch_size),
        "input": [_tensor(t) for t in inputs],
        "output": [_tensor(t) for t in outputs],
        "dynamic_batching": {"preferred_batch_size": [int(b) for b in opts.preferred_batch_sizes],
                             "max_queue_delay_microseconds": int(opts.max_queue_delay_us)},
        "instance_group": [{"count": int(opts.instance_count), "kind": kind}],
    }
    where = f"config.pbtxt of Triton model {name!r}"
    config = pbtxt.config_message(fields, source=where)
    pbtxt.check_config(config, where)  # never write a config Triton would refuse
    return config


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
    writer for the overwrite check (check_triton_target). Every config is made and checked and
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
    models = []  # (variant, config message, model file, its name in the version folder)
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
            pbtxt.write_config(tmp / "config.pbtxt", cfg)
            (tmp / "1").mkdir()
            shutil.copyfile(model_file, tmp / "1" / filename)
            shutil.copyfile(items_path, tmp / ID_MAP)
            info = {**provenance, "variant": variant, "model_sha256": sha256_file(model_file)}
            (tmp / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
        written.append(target / "config.pbtxt")
    return written
