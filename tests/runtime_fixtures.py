"""Bundles shared by test_runtime.py and test_service.py.

Each bundle is trained and exported once per test process (a module-level cache, so
importing these helpers into two test modules does not export twice): one tiny model
per attention kind, the diffusion checkpoint also exported with start="noise" (a graph
with a `noise` input), and a copy of the softmax bundle whose catalog ids are strings.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

KINDS = ("softmax", "vae", "diffusion")
MAX_LEN, N_ITEMS, K = 12, 60, 20

_checkpoints: dict[str, Path] = {}
_bundles: dict[str, Path] = {}


def export_options(stochastic: bool = False):
    from genattn_export import ExportOptions

    return ExportOptions(steps=2, k=K, verify_users=32, start="noise" if stochastic else "zeros")


def checkpoint(root: Path, kind: str) -> Path:
    if kind not in _checkpoints:
        from genattn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
        from genattn.training import train

        # Every block generative, the first objective: the layout these fixtures were written for
        # (explicit: the generative kinds' defaults are now the last block and the new objective).
        run = RunConfig(model=ModelConfig(max_len=MAX_LEN, d_model=16, attention=kind, generative_blocks="all",
                                          pair_hidden=16, posterior_gain=0.0, prior_ce="through",
                                          train_prior_noise=False, beta_warmup_steps=1000),
                        train=TrainConfig(epochs=1, batch_size=64, device="cpu", threads=1),
                        data=DataConfig(source="synthetic", synthetic_users=120, synthetic_items=N_ITEMS))
        train(run, root / f"ck-{kind}", progress=False)
        _checkpoints[kind] = root / f"ck-{kind}"
    return _checkpoints[kind]


def bundle(root: Path, kind: str, stochastic: bool = False) -> Path:
    key = f"{kind}-noise" if stochastic else kind
    if key not in _bundles:
        from genattn_export import export_bundle

        ck = checkpoint(root, kind)
        export_bundle(ck, root / f"bundle-{key}", export_options(stochastic))
        _bundles[key] = root / f"bundle-{key}"
    return _bundles[key]


def rewrite_manifest(folder: Path, edit) -> dict:
    """Apply `edit(manifest_dict)` and write the manifest back with its digest recomputed, as a
    tamperer who knows the format would: what is then refused is refused for the edit itself."""
    from genattn_runtime.bundle import manifest_text

    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(manifest_text(m))
    return m


def string_id_bundle(root: Path) -> Path:
    """The softmax bundle with its catalog ids stored as strings ("1", "2", ...), hashes updated."""
    if "str" not in _bundles:
        from genattn_runtime.bundle import file_entry

        dst = root / "bundle-str"
        shutil.copytree(bundle(root, "softmax"), dst)
        items = json.loads((dst / "items.json").read_text())
        items["item_ids"] = [f"{x}" for x in items["item_ids"]]
        (dst / "items.json").write_text(json.dumps(items) + "\n")
        rewrite_manifest(dst, lambda m: m["files"].update({"items.json": file_entry(dst / "items.json")}))
        _bundles["str"] = dst
    return _bundles["str"]


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "runtime-bundles"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def rec(bundle_root):
    """The softmax bundle loaded on ONNX Runtime CPU, one thread."""
    from genattn_runtime import Recommender

    return Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1)


@pytest.fixture(scope="module")
def ids(rec) -> list:
    return list(rec.items.item_ids)
