"""Inference backends behind one interface (`Backend.run(feeds, need=None) -> {output: array}`,
see base.py) and the one place that chooses among them (`create_backend`).

    cpu          ONNX Runtime, CPUExecutionProvider                                  ort.py
    cuda         ONNX Runtime, CUDAExecutionProvider with IO binding; CUDA graphs on by default,
                 one captured graph per padded batch bucket (1, 8, 64, 256)           ort.py
    tensorrt-ep  ONNX Runtime, TensorrtExecutionProvider (engine cache folder), CUDA/CPU behind it
    tensorrt     the bundle's own serialized TensorRT engine                         tensorrt.py
    auto         the fastest that works here: tensorrt > tensorrt-ep > cuda > cpu; an ONNX Runtime
                 GPU pick also opens a CPU session and sends the small batches where the CPU
                 measured faster at load to it (cpu_route_limit)                     factory.py
    ANN bundles  the state graph on ONNX Runtime + the faiss index search             ann.py

    backend = create_backend(manifest, BackendOptions(backend="cpu", threads=2))
    out = backend.run({"item_seq": seq, "exclude_items": seq}, need=10)
    out["top_items"], out["top_scores"]          # int64 (B, K), float32 (B, K), + the graph's other outputs

Torch-free: numpy, the standard library and (lazily) onnxruntime / tensorrt / faiss.
"""
from .ann import AnnBackend
from .base import (BACKENDS, DEFAULT_GRAPH_BUCKETS, PRECISIONS, Backend, BackendOptions, check_buckets,
                   physical_cores, run_outputs)
from .factory import create_backend, model_file
from .ort import (CPU_EP, CUDA_EP, TRT_EP, OrtBackend, RoutedBackend, available_providers, bucket_plan,
                  cpu_route_limit, graph_buckets, make_session_options)
from .tensorrt import TensorRTBackend, engine_mismatch, trt_release

__all__ = [
    "BACKENDS", "PRECISIONS", "DEFAULT_GRAPH_BUCKETS", "Backend", "BackendOptions", "create_backend", "model_file",
    "run_outputs", "check_buckets", "bucket_plan", "graph_buckets", "cpu_route_limit", "physical_cores",
    "available_providers", "make_session_options", "CPU_EP", "CUDA_EP", "TRT_EP", "OrtBackend", "RoutedBackend",
    "AnnBackend", "TensorRTBackend", "engine_mismatch", "trt_release",
]
