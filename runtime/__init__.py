"""genattn_runtime: the torch-free inference runtime for genattn bundles.

    from genattn_runtime import Recommender
    rec = Recommender.load("bundle/")            # backend="auto": TensorRT > TRT EP > CUDA > CPU
    rec = Recommender.load("bundle/", BackendOptions(backend="cpu"), threads=2)   # options, keyword overrides
    rec.recommend([12, 7, 33], k=10)             # -> Recommendation(items=[...], scores=[...], ...)
    Recommender.load("bundle/", trusted_keys=["signer.pub"])   # only bundles signed by that key

Importing this package imports numpy only; ONNX Runtime is imported when a bundle is
loaded, FastAPI / uvicorn only by `genattn_runtime.service`. Never torch.
"""
from .backends import BACKENDS, BackendOptions
from .errors import (BackendUnavailableError, BundleError, GenattnRuntimeError, InferenceError, InputError,
                     KeyFileError, RecommenderClosedError, SignatureError, UnknownItemError)
from .recommender import PreparedRequest, Recommendation, Recommender

__all__ = [
    "Recommender",
    "Recommendation",
    "PreparedRequest",
    "BackendOptions",
    "BACKENDS",
    "GenattnRuntimeError",
    "BundleError",
    "SignatureError",
    "KeyFileError",
    "RecommenderClosedError",
    "InferenceError",
    "BackendUnavailableError",
    "InputError",
    "UnknownItemError",
]
