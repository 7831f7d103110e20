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

