"""Models and bundles: random-init models of each kind's default config, exported once
into the cache folder (in a spawned child process) and reused."""
from __future__ import annotations

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import hashlib
import json
import logging
import multiprocessing
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..machine import repo_path
from .settings import MODEL_CONFIGS, ModelKey, Skip, log


def model_config(key: ModelKey):
    from genattn.config import load_run_config

    return load_run_config(MODEL_CONFIGS / f"{key.kind}.toml",
                           {"model": {"n_items": key.n_items, "max_len": key.max_len}})


def model_shape(m) -> dict:
    """A model's size as every benchmark's results file records it (the length is set per cell,
    so it is the caller's to add)."""
    return {"d_model": m.d_model, "n_heads": m.n_heads, "n_blocks": m.n_blocks,
            "generative_blocks": None if m.attention == "softmax" else m.generative_blocks}


def make_model(key: ModelKey, seed: int, cfg=None):
    """Random-init model of the kind's default config (or of `cfg`, a ModelConfig); identical in
    every process for one seed."""
    import torch

    from genattn.models import SASRec

    torch.manual_seed(seed)
    model = SASRec(cfg if cfg is not None else model_config(key).model).eval()
    # A fresh generative layer has a zero output layer (it starts as softmax attention).
    # Give it random outputs, as a trained model has, so that no path is trivially constant.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".out." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def sampling_of(key: ModelKey):
    """What the bundle serves (ExportOptions defaults): deterministic DDIM / the VAE prior mean."""
    from genattn.models import Sampling

    if key.kind == "diffusion":
        return Sampling(n_steps=key.steps, eta=0.0, start="zeros")
    if key.kind == "vae":
        return Sampling(mode="mean", n_samples=1)
    return None


def bundle_dir(cache: Path, key: ModelKey, seed: int, graph_k: int, fp16: bool, trt: bool) -> Path:
    cfg = asdict(model_config(key).model)
    ident = json.dumps({"model": cfg, "steps": key.steps, "seed": seed, "k": graph_k, "fp16": fp16, "trt": trt,
                        "recipe": 1}, sort_keys=True)
    tag = ("-fp16" if fp16 else "") + ("-trt" if trt else "")
    return cache / f"{key.slug}{tag}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def _export_job(job: dict) -> dict:
    """Runs in a child process (so export memory never shows in the timed process's RSS)."""
    import numpy as _np

    from genattn.checkpoint import save_checkpoint
    from genattn_export import ExportOptions, export_bundle

    logging.basicConfig(level=logging.WARNING)
    key = ModelKey(**job["key"])
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    run = model_config(key)
    model = make_model(key, job["seed"])
    ck = folder / "checkpoint"
    t0 = time.perf_counter()
    save_checkpoint(ck, model, run, item_ids=list(range(1, key.n_items + 1)),
                    popularity=_np.zeros(key.n_items + 1, dtype=_np.int64), n_users=1)
    t1 = time.perf_counter()
    opts = ExportOptions(steps=key.steps or 8, verify_users=0, k=job["graph_k"], fp16=job["fp16"],
                         tensorrt=job["trt"])
    manifest = export_bundle(ck, folder / "bundle", opts)
    t2 = time.perf_counter()
    shutil.rmtree(ck, ignore_errors=True)  # the timed process rebuilds the same weights from the seed
    info = {"checkpoint_s": t1 - t0, "export_s": t2 - t1, "nodes": manifest["graph"]["nodes"],
            "onnx_mb": (folder / "bundle" / "model.onnx").stat().st_size / 2**20,
            "parity_max_abs_diff": manifest["parity"]["fp32"]["max_abs_diff"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (folder / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


class Bundles:
    """Exports bundles on demand in one spawned child process; cached bundles are reused."""

    def __init__(self, cache: Path, seed: int, graph_k: int):
        self.cache, self.seed, self.graph_k = cache, seed, graph_k
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.log: dict[str, dict] = {}
        self.failed: dict[Path, str] = {}

    def get(self, key: ModelKey, fp16: bool = False, trt: bool = False) -> Path:
        folder = bundle_dir(self.cache, key, self.seed, self.graph_k, fp16, trt)
        if folder in self.failed:
            raise Skip(self.failed[folder])
        bundle = folder / "bundle"
        if (bundle / "manifest.json").is_file():
            if folder.name not in self.log:
                built = json.loads((folder / "build.json").read_text()) if (folder / "build.json").is_file() else {}
                self.log[folder.name] = {**built, "cached": True, "path": repo_path(bundle)}
            return bundle
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        log.info("exporting %s%s%s ...", key.slug, " fp16" if fp16 else "", " +trt" if trt else "")
        t0 = time.perf_counter()
        try:
            info = self.pool.submit(_export_job, {"key": asdict(key), "folder": str(folder), "seed": self.seed,
                                                  "graph_k": self.graph_k, "fp16": fp16, "trt": trt}).result()
        except Exception as e:  # noqa: BLE001 - any export failure skips the bundle's cells, with the reason
            if isinstance(e, BrokenProcessPool):
                self.pool = None
            first = str(e).splitlines()[0][:300] if str(e) else ""
            reason = f"export of {key.slug} failed: {type(e).__name__}: {first}"
            self.failed[folder] = reason
            raise Skip(reason) from None
        self.log[folder.name] = {**info, "cached": False, "wall_s": time.perf_counter() - t0, "path": repo_path(bundle)}
        log.info("exported %s in %.1f s", key.slug, info["export_s"])
        return bundle

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
