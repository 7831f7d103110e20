"""genattn_export: trained checkpoint -> verified inference bundle (ONNX, TensorRT, Triton)."""
from .exporter import ExportOptions, export_bundle
from .graph import ExportError, GraphSpec, ServingGraph
from .verify import ParityError

__all__ = ["ExportOptions", "export_bundle", "ExportError", "ParityError", "GraphSpec", "ServingGraph"]
