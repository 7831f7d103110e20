"""Training loop: AdamW, full-catalog cross-entropy at every position, early
stopping on validation NDCG@10, atomic checkpoints, resume."""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, load_train_state, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import SequenceDataset, Split, item_popularity, leave_one_out, load_source, pad_left
from .evaluation import eval_sets, evaluate
from .models import SASRec, default_sampling

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def training_windows(seqs: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each training sequence into non-overlapping windows of max_len next-item pairs,
    newest first, so long histories contribute all their items (left-padded)."""
    inputs, targets = [], []
    for s in seqs:
        x, y = s[:-1], s[1:]
        for end in range(len(x), 0, -max_len):
            lo = max(0, end - max_len)
            inputs.append(x[lo:end])
            targets.append(y[lo:end])
    return pad_left(inputs, max_len), pad_left(targets, max_len)


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    metrics: dict


def train(run: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          dataset: SequenceDataset | None = None) -> TrainResult:
    tc: TrainConfig = run.train
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    device = pick_device(tc.device)
    ds = dataset if dataset is not None else load_source(run.data)
    split: Split = leave_one_out(ds)
    run.model.n_items = ds.n_items
    # Users who had each item in training (distinct, so novelty's p(i) <= 1); also the cold-start ranking.
    pop = item_popularity([np.unique(s) for s in split.train], ds.n_items)
    sets = eval_sets(split)
    eval_kw = dict(popularity=pop, n_users=ds.n_users, genres=ds.item_genres, device=device)

    model = SASRec(run.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    x_np, y_np = training_windows(split.train, run.model.max_len)
    x_all, y_all = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    sampling = default_sampling(run.model)
    rng = torch.Generator(device=device).manual_seed(tc.seed)
    shuffle = torch.Generator().manual_seed(tc.seed + 1)

    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad": 0, "history": [], "seconds": 0.0}
    best_weights = None
    out = Path(out)
    if resume:
        state.update(load_train_state(out, model, opt))
        from safetensors.torch import load_file
        best_weights = load_file(out / "model.safetensors", device=str(device))
        saved_rng = state.pop("rng_states", {})
        if saved_rng:  # continue the random streams, so 2 + 2 epochs == 4 epochs
            torch.set_rng_state(saved_rng["torch"])
            rng.set_state(saved_rng["rng"])
            shuffle.set_state(saved_rng["shuffle"])
        log.info("resumed from %s at epoch %d", out, state["epoch"])

    t0 = time.perf_counter() - state["seconds"]
    steps_per_epoch = (len(x_all) + tc.batch_size - 1) // tc.batch_size
    bar = tqdm(total=tc.epochs, initial=state["epoch"], desc=f"train {run.model.attention}",
               disable=not progress, unit="ep")

    def publish(final_metrics: dict | None = None, last_state: dict | None = None) -> None:
        metrics = {"best_epoch": state["best_epoch"], "best_valid_ndcg@10": state["best"],
                   "history": state["history"], "train_seconds": state["seconds"],
                   "n_users": ds.n_users, "n_items": ds.n_items, "data": ds.source}
        if final_metrics:
            metrics.update(final_metrics)
        save_checkpoint(out, model, run, item_ids=ds.item_ids, popularity=pop, n_users=ds.n_users,
                        metrics=metrics, best_state=best_weights, optimizer=opt, progress=state,
                        last_state=last_state,
                        rng_states={"torch": torch.get_rng_state(), "rng": rng.get_state(),
                                    "shuffle": shuffle.get_state()})

    while state["epoch"] < tc.epochs:
        model.train()
        order = torch.randperm(len(x_all), generator=shuffle).to(device)
        losses, extra = [], {}
        for b in range(steps_per_epoch):
            idx = order[b * tc.batch_size:(b + 1) * tc.batch_size]
            beta = run.model.beta * min(1.0, (state["step"] + 1) / max(run.model.beta_warmup_steps, 1))
            out_d = model(x_all[idx], y_all[idx], rng=rng, beta=beta)
            opt.zero_grad(set_to_none=True)
            out_d["loss"].backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            state["step"] += 1
            losses.append(float(out_d["ce"]))
            for key in ("ce_posterior", "bound"):
                if key in out_d:
                    extra.setdefault(key, []).append(float(out_d[key]))
        state["epoch"] += 1
        state["seconds"] = time.perf_counter() - t0
        entry = {"epoch": state["epoch"], "ce": float(np.mean(losses)),
                 **{key: float(np.mean(v)) for key, v in extra.items()}}
        if state["epoch"] % tc.eval_every == 0 or state["epoch"] == tc.epochs:
            v = evaluate(model, sets["valid"], sampling=sampling, **eval_kw)
            entry["valid_ndcg@10"] = v["ndcg@10"]
            if v["ndcg@10"] > state["best"]:
                state.update(best=v["ndcg@10"], best_epoch=state["epoch"], bad=0)
                best_weights = copy.deepcopy({k: t.detach() for k, t in model.state_dict().items()})
            else:
                state["bad"] += 1
        state["history"].append(entry)
        bar.update(1)
        bar.set_postfix(ce=f"{entry['ce']:.3f}", val=f"{state['best']:.4f}")
        publish()
        if state["bad"] >= tc.patience:
            log.info("early stop at epoch %d (best %d)", state["epoch"], state["best_epoch"])
            break
        if tc.max_minutes and state["seconds"] > tc.max_minutes * 60:
            log.warning("stopping: wall-time budget of %.1f min reached", tc.max_minutes)
            break
    bar.close()

    last_weights = copy.deepcopy({k: t.detach() for k, t in model.state_dict().items()})
    if best_weights is not None:
        model.load_state_dict(best_weights)
    final = {split_name: evaluate(model, es, sampling=sampling, **eval_kw) for split_name, es in sets.items()}
    publish({"valid": final["valid"], "test": final["test"], "sampling": None if sampling is None else sampling.__dict__},
            last_state=last_weights)
    from .checkpoint import load_checkpoint
    ck = load_checkpoint(out, device=device)
    return TrainResult(checkpoint=ck, metrics=final)
