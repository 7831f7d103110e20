"""Checkpoints: safetensors weights + JSON config + item-id mapping + metrics.

Never pickle. A checkpoint folder is written whole or not at all (atomic_dir).

    ckpt/
      model.safetensors     best weights
      config.json           {"format", "version", "model", "train", "data"}
      items.json            {"item_ids": [...], "n_items", "popularity": [...], "n_users"}
      metrics.json          validation / test metrics, history, wall time
      state.safetensors     last weights + optimizer tensors (resume)
      state.json            epoch, step, best score, optimizer param groups (resume)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import (SAVED_DEFAULTS, SAVED_TRAIN_DEFAULTS, ConfigError, DataConfig, ModelConfig, RunConfig,
                     TrainConfig, _build)
from .fileio import atomic_dir

FORMAT, VERSION = "genattn-checkpoint", 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or of an unknown format."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    run: RunConfig
    item_ids: list
    popularity: np.ndarray        # (n_items + 1,) training interactions per item
    n_users: int
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.contiguous()
            else:
                meta["scalars"][f"{idx}.{k}"] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, run: RunConfig, *, item_ids: list,
                    popularity: np.ndarray, n_users: int, metrics: dict | None = None,
                    best_state: dict[str, torch.Tensor] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, progress: dict | None = None,
                    last_state: dict[str, torch.Tensor] | None = None,
                    rng_states: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically. best_state: weights to publish (default: model's);
    last_state (default: model's) + optimizer + rng_states: what resuming continues from."""
    path = Path(path)
    weights = best_state if best_state is not None else model.state_dict()
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
        cfg = {"format": FORMAT, "version": VERSION, "model": asdict(run.model),
               "train": asdict(run.train), "data": asdict(run.data)}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        items = {"n_items": len(item_ids), "n_users": int(n_users), "item_ids": list(item_ids),
                 "popularity": [int(x) for x in popularity]}
        (tmp / "items.json").write_text(json.dumps(items) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            last = last_state if last_state is not None else model.state_dict()
            tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in last.items()})
            tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in (rng_states or {}).items()})
            save_file(tensors, tmp / "state.safetensors")
            (tmp / "state.json").write_text(json.dumps({"optimizer": meta, "progress": progress or {}}) + "\n")
    return path


def saved_run_config(raw: dict) -> RunConfig:
    """The RunConfig of a saved {"model", "train", "data"} record (a config.json, a results entry).
    Fields it lacks were added after it was written: it was trained with the defaults of the time
    (SAVED_DEFAULTS, SAVED_TRAIN_DEFAULTS), not with today's per-kind ones."""
    return RunConfig(model=_build(ModelConfig, {**SAVED_DEFAULTS, **raw["model"]}, "model"),
                     train=_build(TrainConfig, {**SAVED_TRAIN_DEFAULTS, **raw["train"]}, "train"),
                     data=_build(DataConfig, raw.get("data", {}), "data"))


def read_config(path: str | Path) -> RunConfig:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path} is not a genattn checkpoint (no config.json)")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{f}: format {raw.get('format')!r} is not {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{f}: checkpoint version {raw.get('version')} unsupported (this genattn reads {VERSION})")
    try:
        return saved_run_config(raw)
    except KeyError as e:
        raise CheckpointError(f"{f}: missing table {e}") from e
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{f}: {e}") from e


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    from .models import SASRec

    path = Path(path)
    run = read_config(path)
    for name in ("model.safetensors", "items.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} missing")
    model = SASRec(run.model)
    try:
        weights = load_file(path / "model.safetensors", device=str(device))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise CheckpointError(f"{path}/model.safetensors is damaged: {e}") from e
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{path}: weights do not match the config: {e}") from e
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device).eval()
    items = json.loads((path / "items.json").read_text())
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Checkpoint(model=model, run=run, item_ids=items["item_ids"],
                      popularity=np.asarray(items["popularity"], dtype=np.int64),
                      n_users=items["n_users"], metrics=metrics, path=path)


def checkpoint_data(ck: Checkpoint):
    """Rebuild the checkpoint's dataset from its data config, refusing one whose item
    mapping differs from the checkpoint's (scores would be about other items)."""
    from .data import load_source

    ds = load_source(ck.run.data)
    if [str(x) for x in ds.item_ids] != [str(x) for x in ck.item_ids]:
        raise CheckpointError(f"the data rebuilt from {ck.path}'s config has a different item mapping "
                              "than the checkpoint")
    return ds


def load_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the last weights and optimizer for resuming; returns the saved progress."""
    path = Path(path)
    if not (path / "state.safetensors").is_file():
        raise CheckpointError(f"{path} has no training state to resume from (state.safetensors)")
    tensors = load_file(path / "state.safetensors")
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    progress = dict(meta["progress"])
    progress["rng_states"] = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return progress
