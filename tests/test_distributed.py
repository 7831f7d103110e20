"""Data-parallel training: two CPU processes under torchrun (gloo) against one process.

The command is the documented one (`python -m torch.distributed.run` is `torchrun`).
With dropout off, the same global batch gives the same gradient on one or two ranks
(each rank divides its CE sum by the global target count / world size), so the first
step's loss matches to float rounding and the loss curves agree closely.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genattn.checkpoint import load_checkpoint
from genattn.config import load_run_config
from genattn.training import train

pytestmark = pytest.mark.slow

CONFIG = """
[model]
attention = "softmax"
max_len = 10
d_model = 16
n_heads = 2
n_blocks = 1
dropout = 0.0

[train]
batch_size = 32
lr = 0.005
patience = 100
threads = 1

[data]
source = "synthetic"
synthetic_users = 150
synthetic_items = 60
"""

# Rounding differs (gloo's all-reduce sums in another order), nothing else does.
FIRST_STEP_RTOL = 1e-5
CURVE_RTOL = 1e-3


def torchrun(tmp: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "genattn.cli", "train", "-c", str(tmp / "cfg.toml"), "--data", "synthetic",
           "--attention", "softmax", "--device", "cpu", "--no-progress", "-o", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "cfg.toml").write_text(CONFIG)
    ddp = torchrun(tmp, tmp / "ddp", "--epochs", "3")
    single = train(load_run_config(tmp / "cfg.toml", {"train": {"epochs": 3, "device": "cpu"}}),
                   tmp / "single", progress=False)
    return tmp, ddp, single


def test_two_processes_match_one(runs):
    tmp, ddp, single = runs
    ck = load_checkpoint(tmp / "ddp")  # one checkpoint, the usual format, written by rank 0
    m, s = ck.metrics, single.checkpoint.metrics
    assert m["world_size"] == 2 and s["world_size"] == 1
    first_ddp = json.loads((tmp / "ddp" / "state.json").read_text())["progress"]["first_step_ce"]
    first_one = json.loads((tmp / "single" / "state.json").read_text())["progress"]["first_step_ce"]
    assert first_ddp == pytest.approx(first_one, rel=FIRST_STEP_RTOL)
    assert len(m["history"]) == len(s["history"]) == 3
    for a, b in zip(m["history"], s["history"]):
        assert a["ce"] == pytest.approx(b["ce"], rel=CURVE_RTOL)
        assert a["valid_ndcg@10"] == pytest.approx(b["valid_ndcg@10"], abs=0.01)
    # Evaluation is sharded over users and gathered: every user is counted once.
    assert m["test"]["ndcg@10"] == pytest.approx(s["test"]["ndcg@10"], abs=0.01)
    # Only rank 0 printed the result.
    assert ddp.stdout.count('"checkpoint"') == 1
    assert sorted(p.name for p in tmp.iterdir()) == ["cfg.toml", "ddp", "single"]


def test_resume_on_two_processes_continues_the_run(runs):
    tmp, _, _ = runs
    out = tmp / "resumed"
    torchrun(tmp, out, "--epochs", "1")
    torchrun(tmp, out, "--epochs", "3", "--resume")
    full = load_checkpoint(tmp / "ddp").metrics["history"]
    resumed = load_checkpoint(out).metrics["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    for a, b in zip(resumed, full):  # the random streams of both ranks continue
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-6)


def test_bad_torchrun_environment_is_a_clear_error(tmp_path, monkeypatch):
    from genattn.distributed import DistributedError, World

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(DistributedError, match="RANK=5"):
        World.from_env("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DistributedError, match="integers"):
        World.from_env("cpu")
