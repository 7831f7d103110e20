"""Unfinished training runs carried across checkouts. Runs live under runs/ (not committed), so a
fresh checkout would start a long run over; before a session ends `park` copies each unfinished
run folder (its checkpoint and optimizer state: a few MB at ML-100K sizes) to a committed
`*_inflight/` folder, and a run with no folder of its own under runs/ `unpark`s from there and
resumes. Used by benchmarks.search (trials) and benchmarks.accuracy (seeds)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
ORIGIN = ".origin.json"  # beside a run folder: who started the training (benchmarks.accuracy.origin_path)


def unfinished(run_dir: Path) -> bool:
    """A run that has a resumable state but no test metrics yet."""
    metrics = run_dir / "metrics.json"
    return (run_dir / "state.json").is_file() and not (
        metrics.is_file() and "test" in json.loads(metrics.read_text()))


def park(runs: Path, carried: Path, finished: set[str], pattern: str) -> list[str]:
    """Copy each unfinished run folder of `runs` matching `pattern` into `carried` (a temporary
    name, then renamed over the older copy); drop carried folders of runs in `finished` and of
    runs finished here since they were parked."""
    names = []
    for d in sorted(runs.glob(pattern)) if runs.is_dir() else []:
        if d.name in finished or not unfinished(d):
            continue
        tmp = carried / f".{d.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(d, tmp)
        shutil.rmtree(carried / d.name, ignore_errors=True)
        tmp.rename(carried / d.name)
        _copy_origin(d.parent, carried, d.name)
        names.append(d.name)
    for d in sorted(carried.iterdir()) if carried.is_dir() else []:
        own = runs / d.name
        if d.is_dir() and (d.name in finished or ((own / "metrics.json").is_file() and not unfinished(own))):
            drop(carried, d)
    return names


def unpark(carried: Path, run_dir: Path) -> bool:
    """A run with no checkpoint of its own under runs/ starts from its parked copy, if any."""
    src = carried / run_dir.name
    if (run_dir / "state.json").is_file() or not (src / "state.json").is_file():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(src, run_dir)
    _copy_origin(carried, run_dir.parent, run_dir.name)
    log.info("%s: resuming from the parked checkpoint %s", run_dir.name, src)
    return True


def drop(carried: Path, run_dir: Path) -> None:
    """The run finished: its parked copy is history."""
    shutil.rmtree(carried / run_dir.name, ignore_errors=True)
    (carried / f"{run_dir.name}{ORIGIN}").unlink(missing_ok=True)


def _copy_origin(src: Path, dst: Path, name: str) -> None:
    """The run's provenance file (benchmarks.accuracy keeps it beside the run folder) goes with it."""
    f = src / f"{name}{ORIGIN}"
    if f.is_file():
        shutil.copyfile(f, dst / f"{name}{ORIGIN}")
