"""Training loop: AdamW, full-catalog or sampled-softmax cross-entropy at every
position, early stopping on validation NDCG@10, atomic checkpoints, resume; data
parallel under `torchrun` (genattn/distributed.py), bf16 autocast on GPU."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, load_checkpoint, load_train_state, read_config, save_checkpoint
from .config import ConfigError, RunConfig, TrainConfig, shared_draws
from .data import (SequenceDataset, Split, item_popularity, leave_one_out, load_source, training_ages,
                   training_windows)
from .distributed import World
from .evaluation import eval_sets, evaluate
from .models import SampledBCE, SASRec, SampledSoftmax, default_sampling

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def autocast_dtype(tc: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where asked, or by default on a CUDA card that supports it; None = fp32."""
    if tc.precision == "fp32":
        return None
    if tc.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def make_loss(tc: TrainConfig, n_items: int, popularity: np.ndarray, device: torch.device, seed: int):
    """None = full CE (models/loss.py); otherwise the sampled loss with its own stream."""
    if tc.loss == "full":
        return None
    g = torch.Generator(device=device).manual_seed(seed)
    if tc.loss == "bce":
        return SampledBCE(n_items, generator=g, share=tc.share_negatives).to(device)
    return SampledSoftmax(n_items, tc.negatives, popularity, sampler=tc.negative_sampler,
                          in_batch=tc.in_batch_negatives, generator=g, share=tc.share_negatives).to(device)


def check_full_ce_fits(tc: TrainConfig, n_items: int, max_len: int, device: torch.device, world_size: int) -> None:
    """Refuse, before the first step, a full-CE run whose logits alone cannot fit: a clear
    error naming the fix instead of the kernel's OOM kill minutes later."""
    if tc.loss != "full":
        return
    need = 3 * 4 * -(-tc.batch_size // world_size) * max_len * (n_items + 1)  # logits, softmax, grad
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * have:
        raise ConfigError(f"full-catalog CE over {n_items:,} items needs ~{need / 2**30:.1f} GiB of logits per step "
                          f"at batch {tc.batch_size} (this {device.type} has {have / 2**30:.0f} GiB): "
                          "use loss = 'sampled' (--loss sampled --negatives N) or a smaller batch")
    if n_items > 200_000:
        log.warning("full-catalog CE over %d items: consider loss = 'sampled' (docs/training.md)", n_items)


def warn_objective_for_loss(run: RunConfig) -> bool:
    """The VAE's default `posterior_ce = "generative"` was chosen under full CE; under BCE it
    trained worse than "all" (ML-100K validation 0.1102 against 0.1189, three paired seeds:
    docs/results.md, "Under BCE the order flips"). Say so once, before training; True if it did."""
    m = run.model
    if m.attention == "vae" and run.train.loss == "bce" and m.posterior_ce == "generative":
        log.warning("model.posterior_ce = 'generative' under loss = 'bce': 'all' trained better on "
                    "validation under BCE (docs/model.md, \"Per-kind defaults\"); pass "
                    "--set model.posterior_ce=all unless this is what you mean")
        return True
    return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    metrics: dict


def train(run: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          dataset: SequenceDataset | None = None) -> TrainResult:
    """Train and write the checkpoint in `out`. Under torchrun every rank calls this: the data
    is sharded per global batch, rank 0 writes the checkpoint, evaluation is sharded over users."""
    tc: TrainConfig = run.train
    world = World.from_env(str(pick_device(tc.device)))
    try:
        return _train(run, tc, Path(out), world, resume=resume, progress=progress, dataset=dataset)
    finally:
        world.close()


def _train(run: RunConfig, tc: TrainConfig, out: Path, world: World, *, resume: bool, progress: bool,
           dataset: SequenceDataset | None) -> TrainResult:
    # Keep the stages in this order: it is the order the random streams are consumed in (seeds,
    # data, model initialisation, training steps), so another order trains other weights.
    torch.manual_seed(tc.seed + world.rank)  # dropout differs per rank, like different batches
    np.random.seed(tc.seed)
    torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // world.size))
    device = world.device(pick_device(tc.device))
    data = _prepare_data(run, tc, device, dataset)
    # The catalog size comes from the data: a copy of the config carries it (the caller's stays as given).
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, n_items=data.ds.n_items))
    if world.rank == 0:
        warn_objective_for_loss(run)
    t = _set_up(run, out, world, device, data)
    state, best_weights = _start(t, resume)
    best_weights = _epoch_loop(t, state, best_weights, progress)
    final = _final_evaluation(t, state, best_weights)
    return TrainResult(checkpoint=load_checkpoint(out, device=device), metrics=final)


@dataclass(frozen=True)
class _Data:
    """The prepared data; later stages read it, never change it."""
    ds: SequenceDataset
    popularity: np.ndarray     # users who had each item in training
    sets: dict                 # evaluation users per split (eval_sets)
    x: torch.Tensor            # training windows, int32 (on the device when small next to the card)
    y: torch.Tensor
    n_targets: torch.Tensor    # predicted positions per window
    seconds: float             # time to load and prepare it
    ages: torch.Tensor | None = None  # float32 ages of the windows' events (models with time gaps)


def _prepare_data(run: RunConfig, tc: TrainConfig, device: torch.device, dataset: SequenceDataset | None) -> _Data:
    """Load the interactions, split them leave-one-out, and build the training windows and the
    evaluation users."""
    t_data = time.perf_counter()
    ds = dataset if dataset is not None else load_source(run.data)
    if not run.model.time_buckets and ds.times is not None:
        # Only a model over time gaps reads the timestamps: a float64 per event (the size of the item
        # arrays) is not kept through training for nothing.
        ds = replace(ds, times=None)
    split: Split = leave_one_out(ds)
    # Users who had each item in training (distinct, so novelty's p(i) <= 1); also the cold-start ranking.
    pop = item_popularity([np.unique(s) for s in split.train], ds.n_items)
    sets = eval_sets(split, tc.eval_users, seed=tc.seed)
    x_np, y_np = training_windows(split.train, run.model.max_len)
    ages = None
    if run.model.time_buckets:
        if split.train_times is None:
            raise ConfigError(f"model.time_buckets = {run.model.time_buckets} needs the events' timestamps, "
                              f"and the data {ds.source!r} has none")
        ages = torch.from_numpy(training_ages(split.train_times, run.model.max_len))
    seconds = time.perf_counter() - t_data
    log.info("data: %d users, %d items, %d training windows in %.1f s (peak RSS %.0f MB)",
             ds.n_users, ds.n_items, len(x_np), seconds, peak_rss_mb())
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    n_targets = (y != 0).sum(1)
    if device.type == "cuda" and 2 * x.nbytes < 0.1 * torch.cuda.get_device_properties(device).total_memory:
        x, y = x.to(device), y.to(device)  # small next to the card: no copies per step
        ages = None if ages is None else ages.to(device)
    return _Data(ds=ds, popularity=pop, sets=sets, x=x, y=y, n_targets=n_targets, seconds=seconds, ages=ages)


@dataclass
class _Trainer:
    """What the epoch loop and the final evaluation share: the run (with the data's catalog
    size), the model and its wrappers, the optimizer, the loss and the random streams."""
    run: RunConfig
    out: Path
    world: World
    device: torch.device
    data: _Data
    model: SASRec
    net: torch.nn.Module       # the model, under DDP and / or torch.compile when asked
    opt: torch.optim.Optimizer
    autocast: object           # () -> context manager
    loss_fn: object            # None = full CE, else the sampled loss (make_loss)
    rng: torch.Generator       # the model's sampling stream, per rank
    shuffle: torch.Generator   # the batch order, the same on every rank
    sampling: object           # the model's default sampling at evaluation
    eval_kw: dict

    def evaluate(self, users) -> dict:
        return evaluate(self.model, users, sampling=self.sampling, **self.eval_kw)

    def publish(self, state: dict, best_weights: dict | None, final_metrics: dict | None = None,
                last_state: dict | None = None) -> None:
        """Write the checkpoint (rank 0) with the progress so far; every rank must call it."""
        world, ds = self.world, self.data.ds
        rng_states = world.gather({"torch": torch.get_rng_state(), "rng": self.rng.get_state(),
                                   "loss": self.loss_fn.generator.get_state() if self.loss_fn else None,
                                   "shuffle": self.shuffle.get_state()})  # a collective: every rank
        if world.main:
            metrics = {"best_epoch": state["best_epoch"], "best_valid_ndcg@10": state["best"],
                       "epochs_run": state["epoch"], "stopped_by": state.get("stopped_by"),
                       "history": state["history"], "train_seconds": state["seconds"],
                       "data_seconds": self.data.seconds, "peak_rss_mb": peak_rss_mb(), "world_size": world.size,
                       "events_per_s": state.get("events_per_s", []),
                       "n_users": ds.n_users, "n_items": ds.n_items, "data": ds.source}
            if final_metrics:
                metrics.update(final_metrics)
            save_checkpoint(self.out, self.model, self.run, item_ids=ds.item_ids, popularity=self.data.popularity,
                            n_users=ds.n_users, metrics=metrics, best_state=best_weights, optimizer=self.opt,
                            progress=state, last_state=last_state, rng_states=_flat_rng(rng_states))
        world.barrier()


def _set_up(run: RunConfig, out: Path, world: World, device: torch.device, data: _Data) -> _Trainer:
    """The model (under DDP / torch.compile when asked), AdamW, the loss and the random streams."""
    tc = run.train
    check_full_ce_fits(tc, data.ds.n_items, run.model.max_len, device, world.size)
    model = SASRec(run.model).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            **({"fused": True} if cuda else {}))
    net = model
    if world.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if tc.compile:
        net = torch.compile(net)
    amp = autocast_dtype(tc, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
    rank_seed = tc.seed + 7919 * world.rank
    rng = torch.Generator(device=device).manual_seed(rank_seed)
    shuffle = torch.Generator().manual_seed(tc.seed + 1)  # the same on every rank: one global order
    loss_fn = make_loss(tc, data.ds.n_items, data.popularity, device, rank_seed + 1)
    eval_kw = {"popularity": data.popularity, "n_users": data.ds.n_users, "genres": data.ds.item_genres,
               "device": device, "world": world}
    return _Trainer(run=run, out=out, world=world, device=device, data=data, model=model, net=net, opt=opt,
                    autocast=autocast, loss_fn=loss_fn, rng=rng, shuffle=shuffle,
                    sampling=default_sampling(run.model), eval_kw=eval_kw)


def _start(t: _Trainer, resume: bool) -> tuple[dict, dict | None]:
    """The progress (saved as is in state.json) and the best weights so far: fresh, or the
    checkpoint's, with the model, the optimizer and the random streams where they stopped."""
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad": 0, "history": [], "seconds": 0.0}
    best_weights = None
    if resume:
        _warn_changed(read_config(t.out), t.run, t.out)
        state.update(load_train_state(t.out, t.model, t.opt))
        from safetensors.torch import load_file
        best_weights = load_file(t.out / "model.safetensors", device=str(t.device))
        _restore_rng(state.pop("rng_states", {}), t.world, t.rng, t.shuffle, t.loss_fn)
        log.info("resumed from %s at epoch %d", t.out, state["epoch"])
    return state, best_weights


# Settings a resume may change without a word: where it runs, and the budget (a longer cap or
# patience is how a finished run is continued).
_RESUME_FREE = {"train.seed", "train.threads", "train.device", "train.epochs", "train.patience", "train.max_minutes"}


def _warn_changed(saved: RunConfig, run: RunConfig, out: Path) -> None:
    """Resuming continues under this run's settings; name each one that differs from the
    checkpoint's: a changed loss or learning rate trains another model from here on."""
    changed = []
    for table in ("model", "train"):
        have, want = dataclasses.asdict(getattr(saved, table)), dataclasses.asdict(getattr(run, table))
        changed += [f"{table}.{k}: {have[k]!r} -> {v!r}" for k, v in want.items()
                    if k in have and have[k] != v and f"{table}.{k}" not in _RESUME_FREE]
    if shared_draws(run.model.attention, dataclasses.asdict(run.train)) is None:  # the option changes nothing
        changed = [c for c in changed if not c.startswith("train.share_negatives")]
    if changed:
        log.warning("resuming %s with settings that differ from its checkpoint's: %s", out, "; ".join(changed))


def _epoch_loop(t: _Trainer, state: dict, best_weights: dict | None, progress: bool) -> dict | None:
    """Train, validate and publish a checkpoint every epoch until the epochs, the patience or
    the wall-time budget run out; returns the best weights."""
    tc, world = t.run.train, t.world
    t0 = time.perf_counter() - state["seconds"]
    bar = tqdm(total=tc.epochs, initial=state["epoch"], desc=f"train {t.run.model.attention}",
               disable=not progress or not world.main, unit="ep")
    state.pop("stopped_by", None)  # a resumed run decides again, under this run's budget
    while state["epoch"] < tc.epochs and state["bad"] < tc.patience and "stopped_by" not in state:
        entry = _train_epoch(t, state, t0)
        if state["epoch"] % tc.eval_every == 0 or state["epoch"] == tc.epochs:
            v = t.evaluate(t.data.sets["valid"])
            entry["valid_ndcg@10"] = v["ndcg@10"]
            entry["valid_coverage@10"] = v["coverage@10"]
            if v["ndcg@10"] > state["best"]:
                state.update(best=v["ndcg@10"], best_epoch=state["epoch"], bad=0)
                best_weights = _weights(t.model)
            else:
                state["bad"] += 1
        state["history"].append(entry)
        bar.update(1)
        bar.set_postfix(ce=f"{entry['ce']:.3f}", val=f"{state['best']:.4f}")
        t.publish(state, best_weights)
        # Every rank holds the same metrics; the wall-time budget is rank 0's clock.
        if state["bad"] >= tc.patience:
            log.info("early stop at epoch %d (best %d)", state["epoch"], state["best_epoch"])
            state["stopped_by"] = "patience"
        elif world.agree(bool(tc.max_minutes and state["seconds"] > tc.max_minutes * 60)):
            # Recorded, so that a comparison can see a run the clock cut short of its patience.
            log.warning("stopping: wall-time budget of %.1f min reached", tc.max_minutes)
            state["stopped_by"] = "wall_time"
    state.setdefault("stopped_by", "patience" if state["bad"] >= tc.patience else "epochs")
    bar.close()
    return best_weights


def _train_epoch(t: _Trainer, state: dict, t0: float) -> dict:
    """One pass over the training windows; returns the epoch's history entry (mean losses)."""
    run, world, device, data = t.run, t.world, t.device, t.data
    B = run.train.batch_size  # global: each rank takes every size-th row of each batch
    t.net.train()
    order = torch.randperm(len(data.x), generator=t.shuffle)
    sums, n_steps, n_events, t_epoch = {}, 0, 0, time.perf_counter()
    for b in range((len(data.x) + B - 1) // B):
        batch = order[b * B:(b + 1) * B]
        if len(batch) < world.size:
            continue  # too few rows for every rank (all ranks skip alike)
        idx = batch[world.rank::world.size]
        batch_targets = int(data.n_targets[batch].sum())  # predicted positions, all ranks
        xb, yb = (_rows(table, idx, device).long() for table in (data.x, data.y))
        ab = None if data.ages is None else _rows(data.ages, idx, device)
        beta = run.model.beta * min(1.0, (state["step"] + 1) / max(run.model.beta_warmup_steps, 1))
        with t.autocast():
            out_d = t.net(xb, yb, rng=t.rng, beta=beta, loss=t.loss_fn, n_targets=batch_targets / world.size,
                          ages=ab)
        t.opt.zero_grad(set_to_none=True)
        out_d["loss"].backward()
        if run.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), run.train.grad_clip)
        t.opt.step()
        if state["step"] == 0:
            state["first_step_ce"] = world.mean([float(out_d["ce"])])[0]
        state["step"] += 1
        n_steps += 1
        n_events += batch_targets
        for key in ("ce", "ce_posterior", "bound"):
            if key in out_d:
                sums[key] = sums.get(key, 0.0) + out_d[key].detach().float()  # no sync per step
    state["epoch"] += 1
    state["seconds"] = time.perf_counter() - t0
    keys = sorted(sums)
    # A rank's CE is its sum over the global count / world size: the ranks' mean is the
    # single-process value (the aux terms are per-rank means, averaged alike).
    means = world.mean([float(sums[k]) / max(n_steps, 1) for k in keys])
    # Throughput of the training steps alone (no evaluation), kept beside the history
    # so that histories stay comparable between runs.
    state.setdefault("events_per_s", []).append(n_events / max(time.perf_counter() - t_epoch, 1e-9))
    return {"epoch": state["epoch"], **dict(zip(keys, means))}


def _final_evaluation(t: _Trainer, state: dict, best_weights: dict | None) -> dict:
    """Validation and test metrics of the best weights; the final checkpoint keeps the last
    weights beside them for a resume."""
    last_weights = _weights(t.model)
    if best_weights is not None:
        t.model.load_state_dict(best_weights)
    final = {split_name: t.evaluate(users) for split_name, users in t.data.sets.items()}
    sampling = t.sampling
    t.publish(state, best_weights,
              {"valid": final["valid"], "test": final["test"],
               "sampling": None if sampling is None else sampling.__dict__},
              last_state=last_weights)
    return final


def _weights(model: torch.nn.Module) -> dict:
    return copy.deepcopy({k: v.detach() for k, v in model.state_dict().items()})


def _rows(table: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch's rows on `device`. From host memory to a GPU the rows are
    gathered into pinned memory (PyTorch's caching host allocator reuses it safely) and
    copied without blocking, so the copy overlaps the previous step's kernels."""
    if _same_device(table.device, device):
        return table[idx.to(device)]
    rows = torch.empty((len(idx), table.shape[1]), dtype=table.dtype, pin_memory=device.type == "cuda")
    torch.index_select(table, 0, idx, out=rows)
    return rows.to(device, non_blocking=True)


def _same_device(have: torch.device, want: torch.device) -> bool:
    """`cuda` (no index) names the current card, where tensors moved to it report `cuda:0`."""
    if have.type != want.type:
        return False
    current = torch.cuda.current_device() if want.type == "cuda" and want.index is None else want.index
    return have.index == current


def _flat_rng(per_rank: list[dict]) -> dict[str, torch.Tensor]:
    """Checkpoint tensor names: `torch`, `rng`, ... for one process; `r<rank>.torch`, ... for many."""
    one = len(per_rank) == 1
    return {(k if one else f"r{r}.{k}"): v for r, states in enumerate(per_rank)
            for k, v in states.items() if v is not None}


def _restore_rng(saved: dict, world: World, rng: torch.Generator, shuffle: torch.Generator, loss_fn) -> None:
    """Continue the random streams, so 2 + 2 epochs == 4 epochs (same world size)."""
    if not saved:
        return
    if "torch" in saved:
        ranks = [saved]
    else:
        n = 1 + max(int(k.split(".", 1)[0][1:]) for k in saved)
        ranks = [{k.split(".", 1)[1]: v for k, v in saved.items() if k.startswith(f"r{r}.")} for r in range(n)]
    if len(ranks) != world.size:
        log.warning("checkpoint was trained on %d process(es), resuming on %d: random streams restart",
                    len(ranks), world.size)
        shuffle.set_state(ranks[0]["shuffle"])  # the global order is shared, so it continues
        return
    mine = ranks[world.rank]
    torch.set_rng_state(mine["torch"])
    shuffle.set_state(mine["shuffle"])
    _continue(rng, mine["rng"], "the model's sampling")
    if loss_fn is not None and mine.get("loss") is not None:
        _continue(loss_fn.generator, mine["loss"], "the loss's negatives")


def _continue(gen: torch.Generator, state: torch.Tensor, what: str) -> None:
    """A device's generator continues its saved stream; one saved on another kind of device (a run
    started on CPU and resumed on a GPU: the states differ in size) restarts from the seed."""
    try:
        gen.set_state(state)
    except RuntimeError:
        log.warning("%s stream was saved on another kind of device than %s: it restarts from the seed",
                    what, gen.device)
