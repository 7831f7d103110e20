"""Command line: `python -m benchmarks.latency [--config ...] [--quick | --grid] ...`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..machine import machine_info
from .cells import machine_slug
from .settings import ROOT, load_settings, log, plan
from .suite import run_suite


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=sys.modules[__package__].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "cpu.toml"))
    ap.add_argument("--quick", action="store_true", help="tiny sweep, few iterations (< 60 s)")
    ap.add_argument("--grid", action="store_true", help="every combination of the sweep axes")
    ap.add_argument("--out", help="results folder (default benchmarks/results/<machine>; "
                                  "--quick: runs/latency_quick/<machine>)")
    ap.add_argument("--cache", help="bundle cache folder (default from the config)")
    ap.add_argument("--machine", help="results folder name (default from the config or the hardware)")
    ap.add_argument("--kinds", help="comma-separated subset of softmax,vae,diffusion")
    ap.add_argument("--backends", help="comma-separated backends (default from the config)")
    ap.add_argument("--threads", type=int, help="torch threads = ORT intra-op threads (0 = physical cores)")
    ap.add_argument("--budget-s", type=float, help="wall-time budget of the whole suite")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP service run")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    suite: dict = {}
    if a.cache:
        suite["cache"] = a.cache
    if a.machine:
        suite["machine"] = a.machine
    if a.kinds:
        suite["kinds"] = a.kinds.split(",")
    if a.backends:
        suite["backends"] = a.backends.split(",")
    if a.threads is not None:
        suite["threads"] = a.threads
    if a.budget_s is not None:
        suite["budget_s"] = a.budget_s
    if a.no_plots:
        suite["plots"] = False
    s = load_settings(a.config, quick=a.quick, overrides={"suite": suite})
    if a.dry_run:
        for key, batches in plan(s, a.grid):
            print(f"{key.slug:32s} batches {batches}")
        return {}
    if a.out:
        out = Path(a.out)
    else:
        from genattn_runtime.backends import physical_cores

        threads = s.suite.threads or physical_cores()
        slug = s.suite.machine or machine_slug(machine_info(), threads)
        out = (ROOT / "runs" / "latency_quick" / slug) if a.quick else (ROOT / "benchmarks" / "results" / slug)
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.latency " + " ".join(args)
    mode = "grid" if a.grid else ("quick" if a.quick else "default")
    r = run_suite(s, mode, out, command, do_http=not a.no_http)
    log.info("wrote %s (%.0f s)", out / "latency.json", r["wall_s"])
    for t in r["targets"]:
        log.info("target %-28s %-5s %s", t["id"], {True: "met", False: "MISSED", None: "n/a"}[t["met"]], t["by"])
    return r
