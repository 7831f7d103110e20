"""checkpoint -> verified bundle (ONNX, optional TensorRT engine and Triton repository)."""
from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

import genattn
from genattn.checkpoint import CheckpointError, checkpoint_data, load_checkpoint
from genattn.data import DataError, leave_one_out, pad_ages, pad_left
from genattn.fileio import atomic_dir
from genattn.models import Sampling
from genattn_runtime.bundle import (ANN_FORMAT_VERSION, FORMAT, FORMAT_VERSION, INPUT_AGES, INPUT_SEQ, MANIFEST_FILE,
                                    SAMPLES_FORMAT_VERSION, TIME_FORMAT_VERSION, file_entry, manifest_text)

from .ann import AnnOptions
from .graph import MAX_K, ExportError, GraphSpec, ServingGraph, StateGraph, finalize_onnx, to_onnx
from .tensorrt import check_tensorrt_graph
from .verify import cases, check_deterministic, check_parity

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    steps: int = 1                  # diffusion: DDIM steps n (unrolled). 1: deterministic accuracy is the
                                    # same for 1..16 steps (docs/results.md, "Steps"), more only spread noisy samples
    eta: float = 0.0                # diffusion: DDIM eta (> 0 adds per-step noise)
    start: str = "zeros"            # diffusion: "zeros" (deterministic) | "noise"
    vae_mode: str = "mean"          # vae: "mean" (deterministic) | "sample"
    samples: int = 1                # S sampled maps, scores averaged in one graph (stochastic samplings)
    sample_outputs: bool = True     # S >= 2: also the interleave / vote lists and the confidence (graph.py)
    k: int = 100                    # top-K computed in the graph (the runtime serves any k <= K)
    full_scores: bool = False       # also output full-catalog scores
    exclude_in_graph: bool = True   # exclude_items input masks history items before top-K
    opset: int = 18
    fp16: bool = False              # add model.fp16.onnx (mixed precision; softmax/LayerNorm fp32)
    slim: bool = False              # run onnxslim on the graph
    dynamo: bool = True             # torch.export-based exporter (TorchScript exporter if False)
    verify_users: int = 256         # real sequences checked for parity (0 = random only)
    tensorrt: bool = False          # build a TensorRT engine (needs tensorrt + GPU)
    triton: str | None = None       # write a Triton model repository here
    triton_name: str | None = None  # its model name (default: the bundle folder's name, sanitised)
    triton_force: bool = False      # replace a same-named model another bundle wrote there
    trt_min_batch: int = 1
    trt_opt_batch: int = 8
    trt_max_batch: int = 256
    sign_key: str | Path | None = None  # Ed25519 private key (PEM): also write manifest.sig (docs/export.md)
    ann: AnnOptions | None = None   # carry an ANN index; the graph then outputs the user state (export/ann.py)

    def sampling(self, kind: str) -> Sampling | None:
        if kind == "diffusion":
            return Sampling(n_steps=self.steps, eta=self.eta, start=self.start, n_samples=self.samples)
        if kind == "vae":
            return Sampling(mode=self.vae_mode, n_samples=self.samples)
        return None


def _tool_versions() -> dict:
    out = {"genattn": genattn.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "python": platform.python_version()}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def _real_feeds(ck, n: int) -> dict[str, np.ndarray] | None:
    """Test-split inputs (item_seq, and item_ages for a model over time gaps) of the checkpoint's own
    data, when it can be rebuilt here."""
    if n <= 0:
        return None
    try:
        split = leave_one_out(checkpoint_data(ck))
    except (DataError, CheckpointError, OSError) as e:
        log.warning("parity on random sequences only: the checkpoint's data is not usable here (%s)", e)
        return None
    L = ck.run.model.max_len
    feeds = {INPUT_SEQ: pad_left(split.test_inputs[:n], L)}
    if ck.run.model.time_buckets:
        if split.test_times is None:  # training needed them, so only data changed since has none
            log.warning("parity on random sequences only: the checkpoint's data has no timestamps now")
            return None
        feeds[INPUT_AGES] = pad_ages(split.test_times[:n], L)
    return feeds


def _signing_key(path: str | Path | None):
    if path is None:
        return None
    from genattn_runtime.errors import KeyFileError
    from genattn_runtime.signing import load_private_key

    password = os.environ.get("GENATTN_SIGN_PASSWORD")
    try:
        return load_private_key(path, password.encode() if password else None)
    except KeyFileError as e:
        raise ExportError(str(e)) from None


def _write_manifest(folder: Path, manifest: dict, signer) -> None:
    """manifest.json with its digest set (in `manifest` too), and manifest.sig when signing; each atomically."""
    from genattn.fileio import write_text_atomic

    text = manifest_text(manifest)
    if signer is not None:
        from genattn_runtime.signing import SIGNATURE_FILE, signature_text

        write_text_atomic(folder / SIGNATURE_FILE, signature_text(manifest, signer))
    write_text_atomic(folder / MANIFEST_FILE, text)


def _triton_name(opts: ExportOptions, out: str | Path) -> str | None:
    """The Triton model name, checked against the repository before any work (None without --triton)."""
    if not opts.triton:
        if opts.triton_name is not None or opts.triton_force:
            raise ExportError("--triton-name and --triton-force need --triton REPO")
        return None
    from .triton import check_triton_target, triton_model_name

    name = opts.triton_name if opts.triton_name is not None else triton_model_name(out)
    variants = ["onnxruntime"] + ["fp16"] * opts.fp16 + ["tensorrt"] * opts.tensorrt
    check_triton_target(opts.triton, name, out, variants, force=opts.triton_force)
    return name


def _check_ann(opts: ExportOptions) -> None:
    """An ANN bundle serves top-K from the index: options that shape a top-K graph do not apply."""
    if opts.ann is None:
        return
    opts.ann.check()
    from genattn_runtime.ann import AnnUnavailableError, import_faiss

    try:  # before the work: a missing library fails in a second
        import_faiss()
    except AnnUnavailableError as e:
        raise ExportError(str(e).replace("this bundle searches", "--ann builds")) from None
    clash = [flag for flag, on in (("--tensorrt", opts.tensorrt), ("--triton", opts.triton),
                                   ("--fp16", opts.fp16), ("--full-scores", opts.full_scores)) if on]
    if clash:
        raise ExportError(f"--ann cannot be combined with {', '.join(clash)}: an ANN bundle's graph outputs the "
                          "user state and the index ranks the catalog (export a second, exact bundle for those)")


def export_bundle(checkpoint: str | Path, out: str | Path, opts: ExportOptions | None = None) -> dict:
    """Export, verify and write the bundle folder atomically; returns the manifest."""
    opts = opts or ExportOptions()
    _check_ann(opts)
    signer = _signing_key(opts.sign_key)  # before the work: a bad key fails in a second, not after the export
    triton_name = _triton_name(opts, out)  # likewise a bad Triton name or a clash in its repository
    ck = load_checkpoint(checkpoint)
    model, cfg = ck.model.eval(), ck.run.model
    sampling = opts.sampling(cfg.attention)
    if sampling is not None and cfg.attention == "diffusion" and sampling.n_steps > cfg.diffusion_steps:
        raise ExportError(f"--steps {sampling.n_steps} exceeds the model's {cfg.diffusion_steps} training timesteps")
    k = min(opts.k, cfg.n_items, MAX_K)
    noise_size = model.noise_size(sampling) if sampling is not None else 0
    sample_outputs = False
    if opts.ann is not None:
        opts.ann.params_for(cfg.n_items, cfg.d_model)  # parameters that cannot fit this model fail before the work
        spec = GraphSpec.build_state(model, noise_size=noise_size)
        graph = StateGraph(model, sampling, bool(noise_size))
    else:
        sample_outputs = opts.sample_outputs and noise_size > 0 and sampling.samples(cfg.attention) >= 2
        spec = GraphSpec.build(model, k=k, noise_size=noise_size, exclude=opts.exclude_in_graph,
                               full_scores=opts.full_scores, sample_outputs=sample_outputs)
        graph = ServingGraph(model, sampling, k, opts.exclude_in_graph, bool(noise_size), opts.full_scores,
                             sample_outputs=sample_outputs)

    with atomic_dir(out) as tmp:
        onnx_path = tmp / "model.onnx"
        to_onnx(graph, spec, onnx_path, opset=opts.opset, dynamo=opts.dynamo)
        graph_stats = finalize_onnx(onnx_path, spec, slim=opts.slim)
        forbidden = {"Loop", "If", "Scan"} | {op for op in graph_stats["op_counts"] if op.startswith("Random")}
        bad = sorted(forbidden & set(graph_stats["op_counts"]))
        if bad:
            raise ExportError(f"graph contains ops the contract forbids: {bad}")

        trt_problems = check_tensorrt_graph(onnx.load(str(onnx_path)))
        if trt_problems:
            log.warning("graph would not pass the TensorRT contract check: %s", trt_problems)

        real = _real_feeds(ck, max(opts.verify_users, opts.ann.recall_users if opts.ann else 0))
        parity_cases = cases(spec, cfg.n_items, None if real is None else
                             {name: a[:opts.verify_users] for name, a in real.items()}, noise_size)
        files = {"model.onnx": onnx_path}
        ann_entry = None
        if opts.ann is not None:
            from .ann import build_and_check, check_state_parity, item_vectors, recall_queries

            vectors = item_vectors(model)
            parity = {"fp32": check_state_parity(graph, str(onnx_path), [c.feeds for c in parity_cases],
                                                 vectors, min(k, cfg.n_items))}
            queries, source = recall_queries(spec, cfg.n_items, real, opts.ann.recall_users, noise_size)
            ann_name, ann_entry = build_and_check(graph, spec, vectors, queries, source, opts.ann, tmp)
            files[ann_name] = tmp / ann_name
        else:
            parity = {"fp32": check_parity(graph, spec, str(onnx_path), parity_cases)}
        parity["deterministic_bit_identical"] = check_deterministic(str(onnx_path), parity_cases[1].feeds)
        if sampling is None or noise_size == 0:
            if not parity["deterministic_bit_identical"]:
                raise ExportError("deterministic graph gave different outputs in two ONNX Runtime sessions")
        if opts.fp16:
            from .precision import to_fp16

            fp16_path = tmp / "model.fp16.onnx"
            # The event ages (seconds, ~1e9) and the gap buckets' bounds (2^k) overflow fp16: their
            # arithmetic stays fp32 up to the integer bucket index.
            to_fp16(onnx_path, fp16_path, keep_fp32_inputs=(INPUT_AGES,) if cfg.time_buckets else ())
            parity["fp16"] = check_parity(graph, spec, str(fp16_path), parity_cases, fp16=True)
            files["model.fp16.onnx"] = fp16_path

        items = {"item_ids": list(ck.item_ids), "popularity": [int(x) for x in ck.popularity]}
        (tmp / "items.json").write_text(json.dumps(items) + "\n")
        files["items.json"] = tmp / "items.json"

        trt_meta = None
        if opts.tensorrt:
            from .tensorrt import EngineProfile, assert_tensorrt_compatible, build_engine, engine_name

            trt_source = files.get("model.fp16.onnx", onnx_path)
            assert_tensorrt_compatible(str(trt_source))
            shapes = {t.name: [-1, t.shape[1]] for t in spec.inputs}
            profile = EngineProfile(opts.trt_min_batch, opts.trt_opt_batch, opts.trt_max_batch)
            tmp_engine = tmp / "model.engine"
            trt_meta = build_engine(trt_source, tmp_engine, profile=profile, input_shapes=shapes)
            name = engine_name(trt_meta.get("compute_capability") or "unknown", trt_meta["tensorrt_version"])
            tmp_engine.rename(tmp / name)
            trt_meta["file"] = name
            trt_meta["source_onnx"] = trt_source.name
            files[name] = tmp / name

        manifest = {
            "format": FORMAT,
            "format_version": (TIME_FORMAT_VERSION if cfg.time_buckets else ANN_FORMAT_VERSION if ann_entry else
                               SAMPLES_FORMAT_VERSION if sample_outputs else FORMAT_VERSION),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "attention": cfg.attention,
            "model": asdict(cfg),
            "sampler": {
                **(sampling.__dict__ if sampling is not None else {}),
                "deterministic": noise_size == 0,
                "noise_size": noise_size,
                "scheduler": (model.blocks[-1].attn.weights.scheduler.to_dict()
                              if cfg.attention == "diffusion" else None),
                **({"aggregate": graph.agg} if sample_outputs else {}),
            },
            "max_len": cfg.max_len,
            "n_items": cfg.n_items,
            "k": k,
            "graph": {
                "inputs": [t.to_dict() for t in spec.inputs],
                "outputs": [t.to_dict() for t in spec.outputs],
                "opset": opts.opset,
                "exporter": "dynamo" if opts.dynamo else "torchscript",
                "nodes": graph_stats["nodes"],
                "op_counts": graph_stats["op_counts"],
                "fp16_file": "model.fp16.onnx" if opts.fp16 else None,
            },
            "tools": _tool_versions(),
            "parity": parity,
            "training_metrics": {s: ck.metrics.get(s) for s in ("valid", "test")},
            "checkpoint": str(Path(checkpoint).resolve()),
            "tensorrt": trt_meta,
            "tensorrt_graph_check": {"passed": not trt_problems, "problems": trt_problems,
                                     "checked_against": "onnx-tensorrt operators.md, TensorRT 10.x"},
            "triton": None,
            **({"ann": ann_entry} if ann_entry else {}),
            "files": {name: file_entry(p) for name, p in files.items()},
        }
        _write_manifest(tmp, manifest, signer)

    if opts.triton:
        from .triton import TritonOptions, write_triton_repo

        engine = Path(out) / trt_meta["file"] if trt_meta else None
        written = write_triton_repo(Path(opts.triton), manifest, Path(out) / "model.onnx", engine,
                                    TritonOptions(model_name=triton_name), items_path=Path(out) / "items.json",
                                    fp16_path=Path(out) / "model.fp16.onnx" if opts.fp16 else None,
                                    bundle=Path(out), force=opts.triton_force)
        manifest["triton"] = {"repository": str(Path(opts.triton).resolve()), "model_name": triton_name,
                              "configs": [str(p) for p in written]}
        _write_manifest(Path(out), manifest, signer)  # the digest and signature cover the Triton entry too
    return manifest
