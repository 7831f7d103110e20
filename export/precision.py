"""FP16 (mixed) ONNX: TensorRT 11 takes precision from the graph (strong typing), so
half precision is baked into the ONNX, with the numerically sensitive ops kept fp32."""
from __future__ import annotations

from pathlib import Path

# Softmax over attention logits and LayerNorm statistics overflow / lose mass in fp16;
# top-K selection and the -inf exclusion scatter stay fp32 so ranking ties match fp32.
KEEP_FP32 = ["Softmax", "LayerNormalization", "TopK", "ScatterElements"]


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FP32)
    # The converter retypes a Cast's output to fp16 but leaves its `to` attribute at fp32
    # (seen on bool -> float casts); align the attribute with the declared type.
    declared = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.output)}
    for node in half.graph.node:
        if node.op_type != "Cast":
            continue
        for attr in node.attribute:
            if (attr.name == "to" and attr.i == TensorProto.FLOAT
                    and declared.get(node.output[0]) == TensorProto.FLOAT16):
                attr.i = TensorProto.FLOAT16
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
