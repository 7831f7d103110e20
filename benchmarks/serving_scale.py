"""One results file for serving at scale: `benchmarks/results/serving_scale.{json,md}`.

Each benchmark that feeds it (`benchmarks.ann`, `benchmarks.triton_load`) owns one
section and merges it in at write time, so runs at different times (or at once)
never drop each other's numbers.
"""
from __future__ import annotations

from pathlib import Path

from .machine import REPO
from .record import update_results

RESULTS = REPO / "benchmarks" / "results"
NAME = "serving_scale"


def render(doc: dict) -> str:
    lines = ["# Serving at scale", ""]
    for section in sorted(doc):
        body = doc[section]
        lines += [f"## {section}", ""]
        summary = {k: v for k, v in body.items() if not isinstance(v, (dict, list))}
        if summary:
            lines += ["| field | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in summary.items()]
            lines.append("")
        for k, v in body.items():
            if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
                cols = list(dict.fromkeys(c for r in v for c in r))
                lines += [f"### {k}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                for r in v:
                    cells = [r.get(c, "") for c in cols]
                    lines.append("| " + " | ".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                                  for x in cells) + " |")
                lines.append("")
        if "command" in body:
            lines += ["Command:", "", f"    {body['command']}", ""]
        if "notes" in body:
            lines += [str(body["notes"]), ""]
    return "\n".join(lines)


def write_section(section: str, data: dict, results_dir: Path | None = None) -> Path:
    """Merge `data` as `section` into serving_scale.json (locked, atomic) and re-render the markdown."""
    out = Path(results_dir) if results_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{NAME}.json"
    update_results(path, lambda doc: doc.__setitem__(section, data), render)
    return path
