"""What machine and library versions a results file came from."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def results_stem(what: str, data: str) -> str:
    """Where a benchmark's results for a dataset go by default, relative to the repository and
    without the extension: results_stem("search", "ml-100k") -> benchmarks/results/search_ml100k.
    One spelling, so that one benchmark can read another's results."""
    return f"benchmarks/results/{what}_{data.replace('-', '').replace('_', '')}"


def repo_path(p: str | Path) -> str:
    """A path as results files record it: relative to the repository, never this
    machine's layout (a path outside the repository keeps its name only)."""
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return Path(p).name


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("genattn", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions, "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    """The commit a result was measured on ('+dirty' when tracked files had changes)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.CalledProcessError):
        return None
