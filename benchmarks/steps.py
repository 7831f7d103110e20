"""Step counts through ONNX Runtime: test NDCG@10 / coverage@10 of exported bundles of
a diffusion checkpoint for n DDIM steps, and of a VAE checkpoint for its sample counts,
so users can pick a step count.

    python -m benchmarks.steps --diffusion runs/accuracy/diffusion_seed0 --vae runs/accuracy/vae_seed0

Each setting is exported (with self-verification) with full scores, run on all test
users with ONNX Runtime CPU, and ranked exactly like the torch evaluation (whole
catalog, history masked) with the same metric code.
"""
from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from genattn.checkpoint import checkpoint_data, load_checkpoint
from genattn.data import leave_one_out, pad_left
from genattn.fileio import write_json_atomic, write_text_atomic
from genattn.metrics import diversity_metrics, mean_std, rank_metrics, ranks_from_scores
from genattn_export import ExportOptions, export_bundle
from genattn_runtime.bundle import INPUT_EXCLUDE, INPUT_NOISE, INPUT_SEQ

from .machine import machine_info


def evaluate_bundle(bundle: Path, inputs, targets, ds, popularity, seed: int | None) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    L, n_noise = manifest["max_len"], manifest["sampler"]["noise_size"]
    rng = np.random.default_rng(seed)
    ranks, tops = [], []
    for s in range(0, len(inputs), 256):
        seq = pad_left(inputs[s:s + 256], L)
        feeds = {INPUT_SEQ: seq}
        if INPUT_EXCLUDE in names:
            feeds[INPUT_EXCLUDE] = np.zeros_like(seq)  # history masked below, over the whole history
        if INPUT_NOISE in names:
            feeds[INPUT_NOISE] = rng.standard_normal((len(seq), n_noise), dtype=np.float32)
        scores = sess.run(["scores"], feeds)[0].astype(np.float64)
        for r, hist in enumerate(inputs[s:s + 256]):
            scores[r, hist] = -np.inf
        ranks.append(ranks_from_scores(scores, targets[s:s + 256]))
        tops.append(np.argsort(-scores, axis=1, kind="stable")[:, :10])
    top = np.concatenate(tops)
    out = rank_metrics(np.concatenate(ranks))
    out.update(diversity_metrics(top, ds.n_items, popularity, ds.n_users, genres=ds.item_genres))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusion", default="runs/accuracy/diffusion_seed0")
    ap.add_argument("--vae", default="runs/accuracy/vae_seed0")
    ap.add_argument("--steps", default="1,2,4,8,16")
    ap.add_argument("--samples", default="1,4,16")
    ap.add_argument("--seeds", default="0,1,2", help="noise seeds for the stochastic settings")
    ap.add_argument("--work", default="runs/steps")
    ap.add_argument("--out", default="benchmarks/results/steps_ml100k")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    work = Path(a.work)
    result = {"command": "python -m benchmarks.steps " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine_info(),
              "diffusion": {}, "vae": {}}
    prev = Path(a.out + ".json")
    if prev.is_file():  # keep a kind measured by an earlier invocation
        old = json.loads(prev.read_text())
        result.update({k: v for k, v in old.items() if k not in ("command", "machine")})
    settings = []
    if a.diffusion and Path(a.diffusion).is_dir():
        result["diffusion"] = {}
        for n in [int(x) for x in a.steps.split(",")]:
            settings.append(("diffusion", a.diffusion, f"steps={n}, zeros, eta=0", ExportOptions(steps=n)))
        settings.append(("diffusion", a.diffusion, "steps=8, noise start, eta=1",
                         ExportOptions(steps=8, start="noise", eta=1.0)))
    if a.vae and Path(a.vae).is_dir():
        settings.append(("vae", a.vae, "mean", ExportOptions(vae_mode="mean")))
        result["vae"] = {}
        for m in [int(x) for x in a.samples.split(",")]:
            settings.append(("vae", a.vae, f"sample x{m}", ExportOptions(vae_mode="sample", samples=m)))
    data_cache: dict = {}
    for kind, ck_path, label, opts in settings:
        ck = load_checkpoint(ck_path)
        key = json.dumps(ck.run.data.__dict__, sort_keys=True)
        if key not in data_cache:
            ds = checkpoint_data(ck)
            data_cache[key] = (ds, leave_one_out(ds))
        ds, split = data_cache[key]
        opts.full_scores, opts.verify_users = True, 64
        bundle = work / f"{kind}_{label.replace(' ', '_').replace(',', '').replace('=', '')}"
        t0 = time.perf_counter()
        manifest = export_bundle(ck_path, bundle, opts)
        export_s = time.perf_counter() - t0
        stochastic = not manifest["sampler"]["deterministic"]
        runs = [evaluate_bundle(bundle, split.test_inputs, split.test_targets, ds, ck.popularity, s)
                for s in (seeds if stochastic else [None])]
        result[f"{kind}_command"] = result["command"]
        result[kind][label] = {"test": mean_std(runs), "stochastic": stochastic, "seeds": seeds if stochastic else [],
                               "export_seconds": export_s, "graph_nodes": manifest["graph"]["nodes"],
                               "noise_size": manifest["sampler"]["noise_size"],
                               "parity_max_abs_diff": manifest["parity"]["fp32"]["max_abs_diff"]}
        write_json_atomic(a.out + ".json", result)
        write_text_atomic(a.out + ".md", render(result))
    return result


def render(r: dict) -> str:
    f = lambda ms: f"{ms['mean']:.4f}" + (f" ± {ms['std']:.4f}" if ms["std"] else "")  # noqa: E731
    lines = ["# Step counts through ONNX Runtime (MovieLens-100K, test split)", "",
             "Exported bundles evaluated with ONNX Runtime CPU on all test users: full ranking over the whole "
             "catalog, history masked (same metric code as training). Stochastic settings: mean ± std over "
             "noise seeds.", ""]
    for kind in ("diffusion", "vae"):
        if not r[kind]:
            continue
        lines += [f"## {kind}", "", f"Reproduce: `{r.get(kind + '_command', r['command'])}`", "","| setting | NDCG@10 | HR@10 | coverage@10 | ILD@10 | graph nodes | noise floats/user |",
                  "|---|---|---|---|---|---|---|"]
        for label, e in r[kind].items():
            t = e["test"]
            lines.append(f"| {label} | {f(t['ndcg@10'])} | {f(t['hr@10'])} | {f(t['coverage@10'])} | "
                         f"{f(t['ild@10'])} | {e['graph_nodes']} | {e['noise_size']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
