"""Native TensorRT backend: runs the bundle's serialized engine without ONNX Runtime.

TensorRT 10 / 11 Python API (explicit batch, named I/O tensors):
`Runtime.deserialize_cuda_engine`, `create_execution_context`, `set_input_shape`,
`set_tensor_address`, `execute_async_v3`. Device buffers and the stream come from
cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` in older releases). Both are
imported lazily; anything missing raises BackendUnavailableError with what to install.

UNVERIFIED ON HARDWARE: this module was written against the TensorRT 10/11 and
cuda-python documentation and has not run on a GPU in this project's CI (see
docs/runtime.md). Engines are specific to a TensorRT version and a GPU architecture:
the manifest's `tensorrt` entry records both and is checked before deserialising
(`engine_mismatch`, the one rule export's engine check uses too).
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np

from ..bundle import Manifest, check_graph_io
from ..errors import BackendUnavailableError, BundleError
from .base import Backend

log = logging.getLogger("genattn_runtime")


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError("the native TensorRT backend needs the tensorrt package "
                                      "(pip install 'genattn[tensorrt]', TensorRT >= 10)") from e
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is too old: the runtime uses the "
                                      "TensorRT 10+ named-tensor API (execute_async_v3)")
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise BackendUnavailableError("the native TensorRT backend needs cuda-python for device "
                                          "buffers: pip install 'genattn[tensorrt]'") from e
    return cudart


def _digits(s) -> str:
    return "".join(re.findall(r"\d", str(s)))


def trt_release(version: str) -> tuple[int, ...]:
    """major.minor.patch of a TensorRT version (the build number aside)."""
    v = str(version).strip()
    if not re.fullmatch(r"\d+(\.\d+)*", v):
        raise ValueError(f"TensorRT version {v!r} is not like '10.3.0'")
    return tuple(int(x) for x in v.split(".")[:3])


def engine_mismatch(built_version: str, built_cc: str | None, now_version: str, now_cc: str | None) -> str | None:
    """Why a serialized engine cannot run here, or None. The one compatibility rule, shared by
    export and runtime: the same TensorRT release (major.minor.patch: engines are not portable
    across releases unless built version-compatible, which we do not do) and the same compute
    capability (an unrecorded one is not checked)."""
    if trt_release(built_version) != trt_release(now_version):
        return (f"was built with TensorRT {built_version} but TensorRT {now_version} is installed; engines only "
                f"load in the release that built them")
    if built_cc is not None and (now_cc is None or _digits(built_cc) != _digits(now_cc)):
        return f"was built for compute capability {built_cc} but this GPU is {now_cc}"
    return None


class TensorRTBackend(Backend):
    """One engine, one execution context and stream; device buffers sized for the profile's max batch.

    `run` is serialised by a lock (an execution context is not thread-safe); batches
    larger than the engine's max batch are split. Every output the manifest lists (but the
    full score matrix) is copied back; the base class casts them to the declared dtypes.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, manifest: Manifest, device_id: int = 0):
        self._buffers: dict[str, int] = {}
        trt, cudart = _import_trt(), _import_cudart()
        self.trt, self.cudart = trt, cudart
        meta = manifest.raw.get("tensorrt") or {}
        self._check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        props = self._check(cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
        cc = f"{props.major}.{props.minor}"
        built = meta.get("tensorrt_version")
        why = engine_mismatch(built, meta.get("compute_capability") or None, trt.__version__, cc) if built else None
        if why:
            raise BackendUnavailableError(f"engine {Path(engine_path).name} {why} (GPU {device_id}): rebuild it "
                                          "on this machine (genattn export --tensorrt)")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(manifest.read(Path(engine_path).name))
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialise {engine_path} (see its log above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.inputs, self.outputs, self.dtypes, self.width = [], [], {}, {}
        self.max_batch = None
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = self.engine.get_tensor_shape(name)
            self.width[name] = int(shape[1])
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                mx = int(self.engine.get_tensor_profile_shape(name, 0)[2][0])
                self.max_batch = mx if self.max_batch is None else min(self.max_batch, mx)
            else:
                self.outputs.append(name)
        self.output_dtypes = self.declared_dtypes(manifest)
        self.output_names = list(self.output_dtypes)
        missing = [n for n in self.output_names if n not in self.outputs]
        if missing:
            raise BackendUnavailableError(f"engine lacks output(s) {missing}")

        def io(names):  # -1 is TensorRT's dynamic axis
            return [(n, self.dtypes[n].name,
                     [None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(n)]) for n in names]

        try:
            half = (manifest.raw.get("tensorrt") or {}).get("source_onnx") == manifest.fp16_file
            check_graph_io(manifest, io(self.inputs), io(self.outputs), Path(engine_path).name, half_scores=half)
        except BundleError:
            self.close()
            raise
        for name in self.inputs + self.outputs:
            nbytes = self.max_batch * self.width[name] * self.dtypes[name].itemsize
            self._buffers[name] = int(self._check(cudart.cudaMalloc(nbytes), f"cudaMalloc {name}"))
            if not self.context.set_tensor_address(name, self._buffers[name]):
                raise BackendUnavailableError(f"set_tensor_address({name}) failed")
        self.providers = [f"TensorRT {trt.__version__} (cc {cc})"]
        self.lock = threading.Lock()

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def _run(self, feeds: dict[str, np.ndarray], need: int | None = None) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if n <= self.max_batch:
            return self._run_chunk(feeds)
        chunks = [self._run_chunk({k: v[s:s + self.max_batch] for k, v in feeds.items()})
                  for s in range(0, n, self.max_batch)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        m = len(next(iter(feeds.values())))
        with self.lock:
            host_in = {}
            for name in self.inputs:
                arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                host_in[name] = arr  # keep alive until the stream is synchronised
                if not self.context.set_input_shape(name, tuple(arr.shape)):
                    raise RuntimeError(f"TensorRT rejected input shape {arr.shape} for {name}")
                self._check(cudart.cudaMemcpyAsync(self._buffers[name], arr.ctypes.data, arr.nbytes, h2d,
                                                   self.stream), f"copy {name} to device")
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            out = {}
            for name in self.output_names:
                host = np.empty((m, self.width[name]), dtype=self.dtypes[name])
                self._check(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name], host.nbytes, d2h,
                                                   self.stream), f"copy {name} to host")
                out[name] = host
            self._check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    def close(self) -> None:
        if not hasattr(self, "cudart"):
            return
        for ptr in self._buffers.values():
            self.cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
