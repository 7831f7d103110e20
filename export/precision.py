"""FP16 (mixed) ONNX: TensorRT 11 takes precision from the graph (strong typing), so
half precision is baked into the ONNX, with the numerically sensitive ops kept fp32."""
from __future__ import annotations

from pathlib import Path

# Softmax over attention logits and LayerNorm statistics overflow / lose mass in fp16;
# TopK stays fp32 so scores ties and ordering match the fp32 graph as closely as possible.
KEEP_FP32 = ["Softmax", "LayerNormalization", "ReduceMean", "ReduceMax", "Pow", "Sqrt", "TopK",
             "ScatterElements", "Exp"]


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FP32,
                                            disable_shape_infer=False)
    onnx.save(half, str(dst))
