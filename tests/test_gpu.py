"""GPU paths. Skipped with a reason on machines without CUDA; the CPU paths they stand in
for (torch CPU serving path, ONNX Runtime CPU) are tested in test_models.py / test_export.py
/ test_runtime.py, and the strict CUDA refusal on CPU-only ONNX Runtime in test_runtime.py."""
from __future__ import annotations

import pytest
import torch

from genattn.models import Sampling
from conftest import random_batch, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path not testable here")


@cuda
@pytest.mark.parametrize("kind", ["softmax", "vae", "diffusion"])
def test_cuda_serving_path_matches_cpu(kind):
    from genattn.models import SASRec

    torch.manual_seed(0)
    model = SASRec(tiny_config(kind)).eval()
    seq = random_batch(16, model.cfg.max_len, model.cfg.n_items)
    samp = Sampling(n_steps=4) if kind == "diffusion" else None
    with torch.no_grad():
        cpu = model.scores(seq, samp)
        gpu = model.cuda().scores(seq.cuda(), samp).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)



# ---------------------------------------------------------------- the fp16 graph's shape (CPU)

@pytest.mark.parametrize("kind", ["softmax", "diffusion"])
def test_fp16_graph_casts_only_around_the_fp32_islands(kind, tmp_path):
    """The fp16 graph was slower than fp32 on an H100 and had 28 Casts against fp32's 1: each an
    extra kernel launch at batch 1, one of them over the whole (batch, n_items) score matrix.
    Now: no Cast of a weight (LayerNorm's scale and bias are fp32 initializers, equal to the
    source's), the scoring MatMul, exclusion scatter and TopK in fp16, and Casts only at the
    borders of the ops kept fp32 (2 per LayerNorm / Softmax) plus the fp32 score output."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from genattn.checkpoint import save_checkpoint
    from genattn.config import RunConfig
    from genattn.models import SASRec
    from genattn_export import ExportOptions, export_bundle
    from genattn_export.precision import KEEP_FP32

    from conftest import randomize_generative

    torch.manual_seed(0)
    cfg = tiny_config(kind)
    model = randomize_generative(SASRec(cfg).eval())
    save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), item_ids=list(range(1, cfg.n_items + 1)),
                    popularity=np.zeros(cfg.n_items + 1, dtype=np.int64), n_users=1)
    export_bundle(tmp_path / "ck", tmp_path / "b", ExportOptions(k=10, verify_users=0, fp16=True, steps=2))
    full = onnx.load(str(tmp_path / "b" / "model.onnx"))
    half = onnx.load(str(tmp_path / "b" / "model.fp16.onnx"))
    nodes = half.graph.node
    casts = [n for n in nodes if n.op_type == "Cast"]
    islands = sum(n.op_type in KEEP_FP32 for n in nodes)
    fp32_casts = sum(n.op_type == "Cast" for n in full.graph.node)
    assert len(casts) <= fp32_casts + 2 * islands + 1, (len(casts), fp32_casts, islands)

    inits = {t.name: t for t in half.graph.initializer}
    assert not [c.name for c in casts if c.input[0] in inits]  # weights are stored in the dtype used
    src = {t.name: numpy_helper.to_array(t) for t in full.graph.initializer}
    for ln in (n for n in nodes if n.op_type == "LayerNormalization"):
        for w in ln.input[1:]:
            t = inits[w]
            assert t.data_type == TensorProto.FLOAT
            assert any(np.array_equal(numpy_helper.to_array(t), a) for a in src.values())  # exact, no fp16 trip

    def elem_type(name):
        vi = {v.name: v for v in list(half.graph.value_info) + list(half.graph.input) + list(half.graph.output)}
        return vi[name].type.tensor_type.elem_type if name in vi else None

    producer = {o: n for n in nodes for o in n.output}
    for op in ("TopK", "ScatterElements"):
        (node,) = [n for n in nodes if n.op_type == op]
        assert producer[node.input[0]].op_type != "Cast", op  # no up-cast of the (batch, n_items) scores
    topk = next(n for n in nodes if n.op_type == "TopK")
    assert elem_type(topk.input[0]) in (TensorProto.FLOAT16, None)

    # It still ranks like fp32, up to fp16 drift, on ONNX Runtime CPU.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    seq = random_batch(32, cfg.max_len, cfg.n_items, seed=3).numpy()
    runs = {}
    for name in ("model.onnx", "model.fp16.onnx"):
        sess = ort.InferenceSession(str(tmp_path / "b" / name), so, providers=["CPUExecutionProvider"])
        runs[name] = sess.run(None, {i.name: seq for i in sess.get_inputs()})
    (i32, s32), (i16, s16) = runs["model.onnx"], runs["model.fp16.onnx"]
    assert np.isfinite(s16[:, 0]).all()
    assert np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(i32, i16)]) > 0.8
