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


def fp16_saturation(model, kept: frozenset[str] = frozenset()) -> dict[str, dict]:
    """fp32 constants whose finite values fp16 cannot hold (|x| > FP16_MAX): to_fp16 saturates
    them to ±FP16_MAX. Keyed by tensor name: count and the largest magnitude. `kept`: constants
    (initializer names or Constant nodes' `name.value`) that stay fp32, so are never saturated."""
    from onnx import numpy_helper

    out = {}
    for name, t in _float_tensors(model.graph):
        if name in kept:
            continue
        a = numpy_helper.to_array(t)
        over = np.isfinite(a) & (np.abs(a) > FP16_MAX)
        if over.any():
            out[name] = {"count": int(over.sum()), "max_abs": float(np.abs(a[over]).max())}
    return out


def fp32_island(model, sources: list[str]) -> set[str]:
    """Names of the nodes that compute on the graph inputs `sources` in floating point, which stay
    fp32: every node reached from them through float tensors (stopping where a tensor turns integer
    or boolean, e.g. a bucket index), plus the constant-only producers of the float tensors those
    nodes read (a lookup of a constant table by such an index). Event ages (seconds, ~1e9) and the
    gap buckets' bounds (2^k) overflow fp16; the bucket index they produce does not, so what reads
    it (the time-gap bias and embedding tables) runs fp16. Unnamed nodes get a name here."""
    from onnx import TensorProto, shape_inference

    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    typed = shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type
            for v in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)}
    elem.update({t.name: t.data_type for t in model.graph.initializer})
    floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    reached, island = set(sources), set()
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        if any(x in reached for x in node.input):
            island.add(node.name)
            reached.update(o for o in node.output if elem.get(o) in floats)

    def constant_only(name: str) -> bool:  # computed from constants and integer / boolean tensors alone
        if name in inits or elem.get(name) not in floats:
            return True
        p = producer.get(name)
        return p is not None and name not in reached and all(constant_only(x) for x in p.input if x)

    todo = [n for n in model.graph.node if n.name in island]
    while todo:
        for x in todo.pop().input:
            p = producer.get(x)
            if (p is not None and p.name not in island and elem.get(x) in floats and x not in reached
                    and constant_only(x)):
                island.add(p.name)
                todo.append(p)
    return island


def to_fp16(src: Path, dst: Path, keep_fp32_inputs: tuple[str, ...] = ()) -> dict:
    """Write the mixed-precision graph; returns {"saturated": fp16_saturation of the source}.
    keep_fp32_inputs: graph inputs whose float arithmetic stays fp32 (fp32_island)."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    island = fp32_island(model, list(keep_fp32_inputs)) if keep_fp32_inputs else set()
    kept = frozenset(x for n in model.graph.node if n.name in island for x in n.input) | frozenset(
        f"{n.name}.value" for n in model.graph.node if n.name in island and n.op_type == "Constant")
    saturated = fp16_saturation(model, kept)
    if saturated:  # a real change of a constant's value: the caller hears of it
        warnings.warn(f"fp16: constants beyond the fp16 range are saturated to ±{FP16_MAX:g}: {saturated}",
                      UserWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INF_FALSE_ALARM, category=UserWarning,
                                module=r"onnxconverter_common\.float16")
        half = float16.convert_float_to_float16(model, min_positive_val=FP16_MIN_POSITIVE, max_finite_val=FP16_MAX,
                                                keep_io_types=True, op_block_list=KEEP_FP32,
                                                node_block_list=sorted(island))
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
    round_trips = drop_cast_round_trips(half)
    folded = fold_initializer_casts(half, model)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return {"saturated": saturated, "folded_casts": folded, "dropped_round_trips": round_trips}


def drop_cast_round_trips(half) -> int:
    """Bypass each fp32 -> fp16 -> fp32 Cast pair: the converter casts every fp32 op's output to
    fp16 and back before the next fp32 op, even between two fp32 ops, which loses precision for
    nothing (and overflows for values fp16 cannot hold: an fp32 island's event ages). The fp32
    consumer reads the fp32 tensor directly; a Cast left without consumers is removed. Returns
    how many fp16 -> fp32 Casts were bypassed."""
    from onnx import TensorProto, shape_inference

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in half.graph.node for o in n.output}
    outputs = {o.name for o in half.graph.output}
    typed = shape_inference.infer_shapes(half).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in list(typed.value_info) + list(typed.input)
            + list(typed.output)}

    def computed_fp32(name: str) -> bool:  # initializers are untyped here: fold_initializer_casts takes theirs
        return elem.get(name) == TensorProto.FLOAT

    rename, dropped = {}, set()
    for node in half.graph.node:
        if cast_to(node) != TensorProto.FLOAT or node.output[0] in outputs:
            continue
        first = producer.get(node.input[0])
        # fp32 -> fp16 -> fp32: a pure round trip (an int or bool source is a real conversion)
        if first is not None and cast_to(first) == TensorProto.FLOAT16 and computed_fp32(first.input[0]):
            rename[node.output[0]] = first.input[0]
            dropped.add(id(node))
    if not rename:
        return 0
    kept = [n for n in half.graph.node if id(n) not in dropped]
    for n in kept:
        n.input[:] = [rename.get(x, x) for x in n.input]
    used = {x for n in kept for x in n.input} | outputs
    kept = [n for n in kept if not (cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    del half.graph.node[:]
    half.graph.node.extend(kept)
    return len(rename)


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
