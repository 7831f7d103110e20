"""The one chooser: `create_backend(manifest, options)` -> a Backend for this bundle.

It picks, in order: ANN (index + state graph) or the exact top-K graph; the FP16 file or
the FP32 one (`precision`); the native TensorRT engine or ONNX Runtime; for `auto`, the
first backend that actually runs (tensorrt > tensorrt-ep > cuda > cpu) and, on an ONNX
Runtime GPU pick, the CPU route for small batches. Every front end (Recommender.load, the
CLI, the HTTP service, the Triton engine) comes through here.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..bundle import Manifest
from ..errors import BackendUnavailableError, BundleError
from .ann import AnnBackend
from .base import Backend, BackendOptions
from .ort import EP_OF, OrtBackend, available_providers, with_cpu_route
from .tensorrt import TensorRTBackend

log = logging.getLogger("genattn_runtime")


def model_file(manifest: Manifest, precision: str) -> Path:
    """The ONNX graph for this precision: model.onnx, or the bundle's FP16 variant."""
    if precision == "fp32":
        return manifest.file("model.onnx")
    if manifest.fp16_file:
        return manifest.file(manifest.fp16_file)
    raise BundleError(f"bundle {manifest.path} has no FP16 graph (export with --fp16)")


def _engine_path(manifest: Manifest) -> Path | None:
    name = manifest.engine_file
    return manifest.file(name) if name else None  # listed, inside the bundle, of the hashed size


def create_backend(manifest: Manifest, options: BackendOptions | None = None) -> Backend:
    """Build the backend `options` ask for on this bundle; `auto` picks the fastest that works
    and logs the choice. ValueError for options the bundle cannot take."""
    opts = options if options is not None else BackendOptions()
    if manifest.ann is None and (opts.ef_search is not None or opts.nprobe is not None):
        raise ValueError("ef_search / nprobe apply to bundles exported with --ann; this one scores exactly")
    model = model_file(manifest, opts.precision)
    if manifest.ann is not None:
        backend = AnnBackend.open(manifest, model, opts)
        log.info("backend %s (providers %s, search %s)", backend.name, backend.providers, backend.search_params)
        return backend
    return _exact(manifest, model, opts)


def _exact(manifest: Manifest, model: Path, opts: BackendOptions) -> Backend:
    requested, strict = opts.backend, opts.strict
    if requested == "tensorrt" or (requested == "auto" and _engine_path(manifest) is not None):
        engine = _engine_path(manifest)
        try:
            if engine is None:
                raise BackendUnavailableError(f"bundle {manifest.path} has no TensorRT engine "
                                              "(export with --tensorrt on the serving GPU)")
            backend = TensorRTBackend(engine, manifest, device_id=opts.device_id)
            log.info("backend %s (native TensorRT engine %s)", backend.name, engine.name)
            return backend
        except BackendUnavailableError as e:
            if requested == "tensorrt" and strict:
                raise
            log.log(logging.WARNING if requested == "tensorrt" else logging.INFO,
                    "native TensorRT engine not usable (%s); trying ONNX Runtime", e)
        requested = "auto"
    if requested == "auto":
        avail = available_providers()
        for pick in [n for n in ("tensorrt-ep", "cuda") if EP_OF[n] in avail] + ["cpu"]:
            try:  # strict: a pick that would run on a fallback provider gives way to the next pick
                backend = OrtBackend(model, manifest, pick, opts, strict=True)
            except BackendUnavailableError as e:
                log.info("%s; trying the next backend", e)
                continue
            log.info("backend auto -> %s (providers %s)", backend.name, backend.providers)
            return with_cpu_route(backend, model, manifest, opts)
    backend = OrtBackend(model, manifest, requested, opts, strict=strict)
    log.info("backend %s (providers %s)", backend.name, backend.providers)
    return backend
