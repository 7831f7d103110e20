"""Is the generative prior really generative? Direct measures of collapse.

For each checkpoint, on the test users:

- prior spread: R prior samples of the last block's newest attention row; mean total
  variation between two samples' rows (0 = identical maps) and mean overlap of the
  top-10 lists they produce (1 = the same ten items);
- posterior informativeness: mean posterior std, how far the posterior mean moves when
  the true targets are swapped for other users' (|dmu_q|, in logit units; 0 = the
  posterior ignores the target, so there is nothing for the prior to generate), and
  the training aux term (vae: KL(q || p); diffusion: the bound E||f - X_q||^2 - H(q));
- denoiser sensitivity to X_t (diffusion): mean |f(X_t, t) - f(X_t', t)| / |X_t - X_t'|
  for two forward-process draws of the same X_q at t (0 = the denoiser ignores X_t);
- NDCG@10 for the deterministic mode, one stochastic sample, and S = 4 averaged samples.

    python -m benchmarks.collapse runs/a runs/b --labels before,after --out benchmarks/results/collapse_ml100k
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from genattn.checkpoint import checkpoint_data, load_checkpoint
from genattn.data import leave_one_out, pad_left
from genattn.evaluation import eval_sets, evaluate, mask_seen
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.models import default_sampling, make_noise

from .accuracy import stochastic
from .machine import machine_info


def entry_mean(v: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over allowed (query, key) entries and heads."""
    mask = mask.to(v.dtype).expand_as(v)
    return float((v * mask).sum() / mask.sum().clamp_min(1.0))


def capture(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda m, args, out: store.append((args, out)))


@torch.no_grad()
def prior_spread(model, seq: torch.Tensor, seen: list, samp, repeats: int) -> dict:
    weights = model.blocks[-1].attn.weights
    maps, tops = [], []
    for r in range(repeats):
        store: list = []
        h = capture(weights, store)
        scores = model.scores(seq, samp, make_noise(model, samp, len(seq), seed=100 + r))
        h.remove()
        maps.append(store[-1][1][0][:, :, -1])  # (B, H, L) newest query row
        mask_seen(scores, seen)
        tops.append(scores.topk(10, dim=1).indices)
    tv, overlap = [], []
    for a in range(repeats):
        for b in range(a + 1, repeats):
            tv.append(0.5 * (maps[a] - maps[b]).abs().sum(-1).mean().item())
            same = (tops[a][:, :, None] == tops[b][:, None, :]).any(-1).float().sum(1) / 10
            overlap.append(same.mean().item())
    return {"attention_tv": float(np.mean(tv)), "top10_overlap": float(np.mean(overlap))}


@torch.no_grad()
def posterior_stats(model, seq: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> dict:
    """Posterior-path measures on (history, next-item) windows."""
    weights = model.blocks[-1].attn.weights
    out: dict = {}
    runs = {}
    for name, tgt in (("true", targets), ("swapped", targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))])):
        post, den = [], []
        hp = capture(weights.posterior, post)
        hd = capture(weights.denoiser, den) if hasattr(weights, "denoiser") else None
        _, aux = model.run_blocks(seq, targets=tgt, rng=torch.Generator().manual_seed(seed))
        hp.remove()
        if hd:
            hd.remove()
        runs[name] = (post[-1][1], aux, den)
    (mu, ls), aux, den = runs["true"]
    (mu2, _), _, _ = runs["swapped"]
    m = model.masks(seq)
    rows = m[0] & m[1]
    out["posterior_std"] = entry_mean(ls.exp(), rows)
    out["posterior_mean_shift"] = entry_mean((mu - mu2).abs(), rows)
    out["aux_term"] = float(aux)
    if den:  # diffusion: how much the denoiser's x0 prediction moves with X_t
        (x_t, t, cond, *_), _ = den[-1]  # (pairs: None, the model is in eval mode)
        sched = weights.scheduler
        x0 = mu  # the posterior mean as the clean map
        sens = {}
        gen = torch.Generator().manual_seed(seed + 1)
        for tt in sorted({sched.num_train_steps, sched.num_train_steps // 2, sched.num_train_steps // 10, 1}):
            tvec = torch.full((len(seq),), tt, dtype=torch.long)
            a = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), tvec)
            b = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), tvec)
            fa, fb = weights.denoiser(a, tvec, cond), weights.denoiser(b, tvec, cond)
            sens[str(tt)] = entry_mean((fa - fb).abs(), rows) / entry_mean((a - b).abs(), rows)
        out["denoiser_sensitivity_by_t"] = sens
    return out


def measure(path: Path, repeats: int, users: int) -> dict:
    ck = load_checkpoint(path)
    model, cfg = ck.model.eval(), ck.run.model
    kind = cfg.attention
    ds = checkpoint_data(ck)
    split = leave_one_out(ds)
    test = eval_sets(split)["test"]
    n = min(users, len(test.targets))
    L = cfg.max_len
    seq = torch.from_numpy(pad_left(test.inputs[:n], L))
    # Posterior windows: each user's test history with its own next items as targets.
    full = [np.append(h, t) for h, t in zip(test.inputs[:n], test.targets[:n])]
    win = torch.from_numpy(pad_left([f[:-1] for f in full], L))
    tgt = torch.from_numpy(pad_left([f[1:] for f in full], L))
    kw = dict(popularity=ck.popularity, n_users=ds.n_users, genres=ds.item_genres)
    det = default_sampling(cfg)
    st = stochastic(kind, det)
    res = {"checkpoint": path.name, "attention": kind, "users": n,
           "config": {k: getattr(cfg, k) for k in ("beta", "gamma", "prior_ce", "train_prior_noise",
                                                   "train_sample_steps", "generative_blocks")},
           "sampling_stochastic": st.__dict__}
    res.update(prior_spread(model, seq, test.seen[:n], st, repeats))
    res.update(posterior_stats(model, win, tgt))
    res["ndcg@10"] = {
        "deterministic": evaluate(model, test, sampling=det, **kw)["ndcg@10"],
        "one_sample": evaluate(model, test, sampling=st, seed=0, **kw)["ndcg@10"],
        "four_samples": evaluate(model, test, sampling=replace(st, n_samples=4), seed=0, **kw)["ndcg@10"],
    }
    if kind == "diffusion":
        res["ndcg@10_by_steps_stochastic"] = {
            str(s): evaluate(model, test, sampling=replace(st, n_steps=s), seed=0, **kw)["ndcg@10"] for s in (1, 2, 4, 8)}
    return res


def render(r: dict) -> str:
    lines = ["# Is the prior generative? (test users)", "", f"Reproduce: `{r['command']}`", "",
             f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores).", "",
             "| checkpoint | kind | prior_ce | train prior noise | beta | attention TV between samples | "
             "top-10 overlap between samples | posterior std | posterior mean shift (swapped targets) | "
             "aux term | denoiser sensitivity to X_t (t: value) | NDCG@10 det / 1 sample / 4 samples |",
             "|" + "---|" * 12]
    for e in r["checkpoints"]:
        c = e["config"]
        sens = ", ".join(f"{t}: {v:.3f}" for t, v in e.get("denoiser_sensitivity_by_t", {}).items()) or "–"
        nd = e["ndcg@10"]
        lines.append(f"| {e['label']} | {e['attention']} | {c['prior_ce']} | {c['train_prior_noise']} | {c['beta']} | "
                     f"{e['attention_tv']:.4f} | {e['top10_overlap']:.3f} | {e['posterior_std']:.3f} | "
                     f"{e['posterior_mean_shift']:.3f} | {e['aux_term']:.3f} | {sens} | "
                     f"{nd['deterministic']:.4f} / {nd['one_sample']:.4f} / {nd['four_samples']:.4f} |")
    steps = [e for e in r["checkpoints"] if "ndcg@10_by_steps_stochastic" in e]
    if steps:
        lines += ["", "Diffusion, stochastic sampler (noise start, eta 1), one sample: NDCG@10 by DDIM steps", "",
                  "| checkpoint | " + " | ".join(steps[0]["ndcg@10_by_steps_stochastic"]) + " |",
                  "|---|" + "---|" * len(steps[0]["ndcg@10_by_steps_stochastic"])]
        for e in steps:
            lines.append(f"| {e['label']} | " + " | ".join(f"{v:.4f}" for v in e["ndcg@10_by_steps_stochastic"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--labels", help="comma-separated labels, one per checkpoint")
    ap.add_argument("--repeats", type=int, default=4, help="prior samples per user")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/collapse_ml100k")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    labels = a.labels.split(",") if a.labels else [Path(p).name for p in a.checkpoints]
    r = {"command": "python -m benchmarks.collapse " + " ".join(argv if argv is not None else sys.argv[1:]),
         "machine": machine_info(), "checkpoints": []}
    for label, p in zip(labels, a.checkpoints):
        e = measure(Path(p), a.repeats, a.users)
        e["label"] = label
        r["checkpoints"].append(e)
        print(label, {k: v for k, v in e.items() if k not in ("config", "sampling_stochastic")}, flush=True)
    write_json_atomic(a.out + ".json", r)
    write_text_atomic(a.out + ".md", render(r))
    return r


if __name__ == "__main__":
    main()
