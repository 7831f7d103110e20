"""FP16 (mixed) ONNX: TensorRT 11 takes precision from the graph (strong typing), so
half precision is baked into the ONNX, with the numerically sensitive ops kept fp32."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Softmax over attention logits and LayerNorm statistics overflow / lose mass in fp16.
# The exclusion scatter and top-K run in fp16: the scores they see come out of the fp16 scoring
# MatMul, so an fp32 copy changes no score (fp16 -> fp32 is exact), only which of several equal
# scores comes first (kernels differ there; ONNX Runtime's fp16 TopK takes the lower index),
# while it cost a Cast of the whole (batch, n_items) score matrix and one of the fill value.
KEEP_FP32 = ["Softmax", "LayerNormalization"]

# onnxconverter_common clamps finite constants above max_finite_val (default 1e4) to it. fp16
# holds every magnitude up to 65504, so clamping at 1e4 would change representable constants;
# only what fp16 cannot hold is saturated (and reported by fp16_saturation).
FP16_MAX = float(np.finfo(np.float16).max)
# Below this the converter raises a nonzero constant to it (so it does not flush to zero).
FP16_MIN_POSITIVE = 1e-7

# The converter warns "the float32 number -inf will be truncated to -10000.0" whenever a
# tensor's extreme is at or beyond the clamp, -inf included, but it clamps finite values only
# and keeps ±inf (the attention mask and the exclusion fill stay -inf; see docs/export.md).
# For ±inf the message is a false alarm; finite values keep the converter's warning.
_INF_FALSE_ALARM = r"the float32 number -?inf will be truncated to "


def _float_tensors(graph) -> Iterator[tuple[str, object]]:
    """(name, TensorProto) of every fp32 constant: initializers, Constant and tensor attributes,
    subgraphs included."""
    from onnx import AttributeProto, TensorProto

    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            yield t.name, t
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                yield f"{node.name or node.op_type}.{attr.name}", attr.t
            elif attr.type == AttributeProto.GRAPH:
                yield from _float_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _float_tensors(g)


def fp16_saturation(model) -> dict[str, dict]:
    """fp32 constants whose finite values fp16 cannot hold (|x| > FP16_MAX): to_fp16 saturates
    them to ±FP16_MAX. Keyed by tensor name: count and the largest magnitude."""
    from onnx import numpy_helper

    out = {}
    for name, t in _float_tensors(model.graph):
        a = numpy_helper.to_array(t)
        over = np.isfinite(a) & (np.abs(a) > FP16_MAX)
        if over.any():
            out[name] = {"count": int(over.sum()), "max_abs": float(np.abs(a[over]).max())}
    return out


def to_fp16(src: Path, dst: Path) -> dict:
    """Write the mixed-precision graph; returns {"saturated": fp16_saturation of the source}."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    saturated = fp16_saturation(model)
    if saturated:  # a real change of a constant's value: the caller hears of it
        warnings.warn(f"fp16: constants beyond the fp16 range are saturated to ±{FP16_MAX:g}: {saturated}",
                      UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INF_FALSE_ALARM, category=UserWarning,
                                module=r"onnxconverter_common\.float16")
        half = float16.convert_float_to_float16(model, min_positive_val=FP16_MIN_POSITIVE, max_finite_val=FP16_MAX,
                                                keep_io_types=True, op_block_list=KEEP_FP32)
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
    folded = fold_initializer_casts(half, model)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return {"saturated": saturated, "folded_casts": folded}


def fold_initializer_casts(half, source) -> int:
    """Replace each Cast of an fp16 initializer back to fp32 (the weights of an op kept fp32:
    LayerNorm's scale and bias) by an fp32 initializer holding the source's original values.
    Each is one kernel less per run, and the op gets its exact fp32 weights instead of a round
    trip through fp16. Returns how many Casts were folded; fp16 copies left unused are dropped."""
    from onnx import TensorProto, numpy_helper

    original = {t.name: t for t in source.graph.initializer if t.data_type == TensorProto.FLOAT}
    inits = {t.name for t in half.graph.initializer}
    kept, folded = [], 0
    for node in half.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        src = node.input[0] if node.input else None
        if node.op_type == "Cast" and to == TensorProto.FLOAT and src in inits and src in original:
            half.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(original[src]),
                                                                  node.output[0]))
            folded += 1
        else:
            kept.append(node)
    if folded:
        del half.graph.node[:]
        half.graph.node.extend(kept)
        used = ({i for n in half.graph.node for i in n.input} | {o.name for o in half.graph.output}
                | {i.name for i in half.graph.input})
        unused = [t for t in half.graph.initializer if t.name not in used]
        for t in unused:
            half.graph.initializer.remove(t)
    return folded
