"""genattn_runtime: the torch-free inference runtime for genattn bundles.

    from genattn_runtime import Recommender
    rec = Recommender.load("bundle/")            # backend="auto": TensorRT > TRT EP > CUDA > CPU
    rec.recommend([12, 7, 33], k=10)             # -> Recommendation(items=[...], scores=[...], ...)

Importing this package imports numpy only; ONNX Runtime is imported when a bundle is
loaded, FastAPI / uvicorn only by `genattn_runtime.service`. Never torch.
"""
from .backends import BACKENDS, BackendOptions
from .errors import (BackendUnavailableError, BundleError, GenattnRuntimeError, InputError,
                     UnknownItemError)
from .recommender import PreparedRequest, Recommendation, Recommender

__all__ = [
    "Recommender",
    "Recommendation",
    "PreparedRequest",
    "BackendOptions",
    "BACKENDS",
    "GenattnRuntimeError",
    "BundleError",
    "BackendUnavailableError",
    "InputError",
    "UnknownItemError",
]
