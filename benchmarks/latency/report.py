"""Report: the targets evaluated from the cells, latency.json / latency.md and the PNG plots."""
from __future__ import annotations

import math
from pathlib import Path

from ..machine import repo_path
from .settings import BACKENDS, KINDS, Settings


def _at_default(c: dict, s: Settings, **kw) -> bool:
    d = s.default
    want = {"max_len": d.max_len, "n_items": d.n_items, "steps": d.steps if c["kind"] == "diffusion" else None,
            "batch": d.batch, **kw}
    return all(c.get(k) == v for k, v in want.items())


def _find(cells: list[dict], s: Settings, **kw) -> dict | None:
    hits = [c for c in cells if _at_default(c, s, **kw)]
    return hits[0] if hits else None


def _verdict(measured: float | None, threshold: float, higher_is_better: bool, unit: str) -> tuple[bool | None, str]:
    if measured is None or not math.isfinite(measured):
        return None, "not measured"
    met = measured >= threshold if higher_is_better else measured <= threshold
    gap = abs(measured - threshold)
    gap_s = f"{gap * 100:.1f} percentage points" if unit == "" else f"{gap:.3g}{unit}"  # unit "" = a share
    if higher_is_better:
        rel = measured / threshold
        word = (f"{rel:.2f}x the target" if met
                else f"missed by {gap_s} ({(1 - rel) * 100:.0f}% short)")
    else:
        rel = measured / threshold
        word = (f"{(1 - rel) * 100:.0f}% under the limit" if met
                else f"missed by {gap_s} ({(rel - 1) * 100:.0f}% over)")
    return met, word


def evaluate_targets(cells: list[dict], overhead: dict, s: Settings, gpu_present: bool) -> list[dict]:
    tg, d, rows = s.targets, s.default, []

    def row(tid, text, measured, threshold, better, unit, detail, reason=None):
        met, by = _verdict(measured, threshold, better, unit)
        if met is None and reason:
            by = reason
        rows.append({"id": tid, "target": text, "threshold": threshold, "measured": measured, "unit": unit,
                     "met": met, "by": by, "detail": detail})

    steps_note = "" if d.steps == 8 else f" (this run's default is {d.steps} steps, not 8)"
    for kind in [k for k in ("diffusion", "vae", "softmax") if k in s.suite.kinds]:
        tc = _find(cells, s, kind=kind, backend="torch-cpu", batch=1)
        oc = _find(cells, s, kind=kind, backend="ort-cpu", batch=1)
        ratio = tc["latency_ms"]["p50"] / oc["latency_ms"]["p50"] if tc and oc else None
        row(f"ort_vs_torch_{kind}", f"ONNX Runtime CPU >= {tg.ort_vs_torch_speedup:g}x faster than torch eager "
            f"(same model, same threads, batch 1, p50), {kind}", ratio, tg.ort_vs_torch_speedup, True, "x",
            {"torch_cpu_p50_ms": tc and tc["latency_ms"]["p50"], "ort_cpu_p50_ms": oc and oc["latency_ms"]["p50"],
             "threads": tc and tc.get("torch_threads")},
            None if ratio is not None else "needs torch-cpu and ort-cpu cells at the default point")
    if "diffusion" in s.suite.kinds and "softmax" in s.suite.kinds:
        dc = _find(cells, s, kind="diffusion", backend="ort-cpu", batch=1)
        sc = _find(cells, s, kind="softmax", backend="ort-cpu", batch=1)
        ratio = dc["latency_ms"]["p50"] / sc["latency_ms"]["p50"] if dc and sc else None
        row("diffusion_vs_softmax", f"diffusion attention ({d.steps} steps) <= {tg.diffusion_vs_softmax_ratio:g}x "
            f"the softmax baseline's latency, ORT CPU, batch 1, max_len {d.max_len}, p50{steps_note}",
            ratio, tg.diffusion_vs_softmax_ratio, False, "x",
            {"diffusion_p50_ms": dc and dc["latency_ms"]["p50"], "softmax_p50_ms": sc and sc["latency_ms"]["p50"],
             "steps": d.steps}, None if ratio is not None else "needs ort-cpu cells of both kinds")
    for kind in [k for k in ("diffusion", "vae", "softmax") if k in overhead]:
        o = overhead[kind]
        share = o["python_overhead_us_p50"] / o["session_us_p50"]
        row(f"python_overhead_{kind}", f"runtime Python overhead (prepare + decode) < "
            f"{tg.python_overhead_share:.0%} of session time, batch 1, {kind}", share,
            tg.python_overhead_share, False, "",
            {"python_overhead_us_p50": o["python_overhead_us_p50"], "session_us_p50": o["session_us_p50"],
             "share_of_total": o["python_overhead_share"]})
    if not overhead:
        row("python_overhead", f"runtime Python overhead < {tg.python_overhead_share:.0%} of session time, batch 1",
            None, tg.python_overhead_share, False, "", {}, "overhead not measured in this run (no ort-cpu)")

    gpu_cells = [c for c in cells if BACKENDS[c["backend"]].gpu and c["precision"] == "fp16"
                 and c["kind"] == "diffusion"]
    no_gpu = ("no GPU in this run" if not gpu_present else "no fp16 GPU diffusion cell in this run")
    b1 = [c for c in gpu_cells if _at_default(c, s, batch=1)]
    best = min(b1, key=lambda c: c["latency_ms"]["p99"]) if b1 else None
    row("gpu_p99_batch1", f"best GPU backend, FP16, batch 1, max_len {d.max_len}, diffusion {d.steps} steps: "
        f"p99 < {tg.gpu_p99_ms:g} ms{steps_note}", best and best["latency_ms"]["p99"], tg.gpu_p99_ms, False, " ms",
        {"backend": best and best["backend"], "fp16_mode": best and best.get("fp16_mode"),
         "candidates": {c["backend"]: c["latency_ms"]["p99"] for c in b1}}, None if best else no_gpu)
    b256 = [c for c in gpu_cells if _at_default(c, s, batch=256)]
    best = max(b256, key=lambda c: c["throughput_users_per_s"]) if b256 else None
    row("gpu_throughput_batch256", f"best GPU backend, FP16, batch 256, diffusion {d.steps} steps: "
        f"> {tg.gpu_batch256_users_per_s:,.0f} users/s", best and best["throughput_users_per_s"],
        tg.gpu_batch256_users_per_s, True, " users/s",
        {"backend": best and best["backend"],
         "candidates": {c["backend"]: c["throughput_users_per_s"] for c in b256}}, None if best else no_gpu)
    if "ort-cuda" in s.suite.backends:  # the runtime's own GPU backend against torch CUDA graphs
        for kind in [k for k in ("diffusion", "vae", "softmax") if k in s.suite.kinds]:
            oc = _find(cells, s, kind=kind, backend="ort-cuda", precision="fp32", batch=1)
            tc = _find(cells, s, kind=kind, backend="torch-cuda-graph", precision="fp32", batch=1)
            ratio = oc["latency_ms"]["p50"] / tc["latency_ms"]["p50"] if oc and tc else None
            row(f"ort_cuda_vs_torch_graph_{kind}", f"ONNX Runtime CUDA (runtime defaults) p50 <= "
                f"{tg.ort_cuda_vs_torch_graph:g}x torch CUDA graphs, same card, batch 1, fp32, {kind}", ratio,
                tg.ort_cuda_vs_torch_graph, False, "x",
                {"ort_cuda_p50_ms": oc and oc["latency_ms"]["p50"],
                 "torch_cuda_graph_p50_ms": tc and tc["latency_ms"]["p50"]},
                None if ratio is not None else (no_gpu if not gpu_present else
                                                "needs ort-cuda and torch-cuda-graph fp32 cells at batch 1"))
        b256 = [c for c in cells if c["backend"] in ("ort-cuda", "ort-auto") and c["kind"] == "diffusion"
                and _at_default(c, s, batch=256)]
        best = max(b256, key=lambda c: c["throughput_users_per_s"]) if b256 else None
        row("ort_cuda_throughput_batch256", f"ONNX Runtime CUDA, batch 256, diffusion {d.steps} steps: "
            f"> {tg.gpu_batch256_users_per_s:,.0f} users/s", best and best["throughput_users_per_s"],
            tg.gpu_batch256_users_per_s, True, " users/s",
            {"backend": best and best["backend"], "precision": best and best["precision"],
             "candidates": {f"{c['backend']} {c['precision']}": c["throughput_users_per_s"] for c in b256}},
            None if best else (no_gpu if not gpu_present else "no ort-cuda diffusion cell at batch 256"))
    return rows


def _write(result: dict, s: Settings, out: Path, plots: bool) -> None:
    from genattn.fileio import write_json_atomic, write_text_atomic

    if "targets" not in result:
        result = {**result, "targets": evaluate_targets(result["cells"], result["overhead"], s,
                                                        bool(result["machine"].get("gpu")))}
    write_json_atomic(out / "latency.json", result)
    if plots:
        try:
            result["plots"] = make_plots(result, s, out)
        except Exception as e:  # noqa: BLE001 - no matplotlib, or a plot failed: the tables still get written
            result["notes"].append(f"plots skipped: {type(e).__name__}: {e}")
        write_json_atomic(out / "latency.json", result)
    write_text_atomic(out / "latency.md", render(result, s))



# ----------------------------------------------------------------------------- report
def _label(c: dict) -> str:
    return c["backend"] if c["precision"] == "fp32" else f"{c['backend']} {c['precision']}"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _axis_cells(cells: list[dict], s: Settings, axis: str) -> list[dict]:
    """Cells on one axis of the one-at-a-time sweep (all other coordinates at the default)."""
    d = s.default
    free = {"batch", "steps", "max_len", "n_items"} - {axis}
    out = []
    for c in cells:
        want = {"batch": d.batch, "max_len": d.max_len, "n_items": d.n_items,
                "steps": d.steps if c["kind"] == "diffusion" else None}
        if axis == "steps" and c["kind"] != "diffusion":
            continue
        if all(c[f] == want[f] for f in free):
            out.append(c)
    return sorted(out, key=lambda c: (KINDS.index(c["kind"]), c["backend"], c["precision"], c[axis] or 0))


def render(r: dict, s: Settings) -> str:
    m = r["machine"]
    d = s.default
    cells = r["cells"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    L = [f"# Inference latency ({r['mode']} run)", "",
         f"Machine `{m['slug']}`: {m['cpu']} ({m['cores']} logical cores){gpu}; torch {m['versions'].get('torch')}, "
         f"onnxruntime {m['versions'].get('onnxruntime') or m['versions'].get('onnxruntime-gpu')}, "
         f"Python {m['python']}. Threads: torch {m['torch_threads']}, ORT intra-op {m['ort_intra_op_threads']} "
         f"(inter-op 1). Load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}"
         + (f", at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}" if 'loadavg_end' in m else "") + ".", "",
         f"Reproduce: `{r['command']}`" + (f" ({r['wall_s']:.0f} s wall)" if "wall_s" in r else " (partial results)"),
         "", f"Default point: batch {d.batch}, diffusion {d.steps} steps, max_len {d.max_len}, "
             f"{d.n_items} items, top-{s.suite.k} (graph K {s.suite.graph_k}). Models: default configs, random "
             "weights. Latency in ms per call (a call serves the whole batch); throughput = batch / mean latency.",
         ""]
    notes = list(r.get("notes", []))
    other = m.get("other_processes_cpu_share")
    if other is not None and other > 0.05:
        notes.insert(0, f"**The machine was busy:** other processes used {other:.0%} of its CPU time during this run; "
                        "these timings are contaminated.")
    L += [f"> {note}" for note in notes] + ([""] if notes else [])
    L += ["## Targets", "", "| target | measured | met? |", "|---|---|---|"]
    for t in r.get("targets", []):
        meas = "-" if t["measured"] is None else (f"{t['measured']:.1%}" if t["unit"] == "" else
                                                  f"{t['measured']:,.3g}{t['unit']}")
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        L.append(f"| {t['target']} | {meas} | {met}: {t['by']} |")
    big = max(s.sweep.batch)
    head = [c for c in cells if _at_default(c, s, batch=c["batch"]) and c["batch"] in (d.batch, big)]
    if head:
        # A sweep with one batch size has one batch to show, not the same columns twice.
        two = big != d.batch
        title = f"batch {d.batch} and {big}" if two else f"batch {d.batch}"
        L += ["", f"## Headline: default point, {title}", "",
              f"| kind | backend | p50 ms (b{d.batch}) | p99 ms (b{d.batch}) | users/s (b{d.batch}) |"
              + (f" p50 ms (b{big}) | users/s (b{big}) |" if two else ""),
              "|---|---|---|---|---|" + ("---|---|" if two else "")]
        rows: dict[tuple, dict] = {}
        for c in head:
            rows.setdefault((KINDS.index(c["kind"]), c["kind"], _label(c)), {})[c["batch"]] = c
        for (_, kind, lab), by in sorted(rows.items()):
            a, b = by.get(d.batch), by.get(big)
            L.append(f"| {kind} | {lab} | " + (f"{_ms(a['latency_ms']['p50'])} | {_ms(a['latency_ms']['p99'])} | "
                                               f"{a['throughput_users_per_s']:,.0f} |" if a else "- | - | - |")
                     + ((f" {_ms(b['latency_ms']['p50'])} | {b['throughput_users_per_s']:,.0f} |" if b else " - | - |")
                        if two else ""))
    L += ["", "## What is timed", ""]
    for n, txt in r["timed"].items():
        b = r["backends"][n]
        L.append(f"- `{n}`: {txt}." + ("" if b["available"] else f" **Skipped here:** {b['skip_reason']}."))
    L.append("")
    cols = ("| kind | backend | {axis} | p50 | p90 | p95 | p99 | min | max | mean | CV | users/s "
            "| peak RSS MB (Δ) | iters |")
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

    def line(c: dict, axis: str) -> str:
        lm, mem = c["latency_ms"], c["memory"]
        v = c[axis] if c[axis] is not None else "-"
        gm = f", GPU {mem['cuda_max_allocated_mb']:.0f}" if "cuda_max_allocated_mb" in mem else ""
        return (f"| {c['kind']} | {_label(c)} | {v} | {_ms(lm['p50'])} | {_ms(lm['p90'])} | {_ms(lm['p95'])} | "
                f"{_ms(lm['p99'])} | {_ms(lm['min'])} | {_ms(lm['max'])} | {_ms(lm['mean'])} | {c['cv']:.2f} | "
                f"{c['throughput_users_per_s']:,.0f} | "
                f"{mem['rss_peak_mb']:.0f} ({mem['rss_peak_delta_mb']:+.0f}{gm}) | "
                f"{c['iterations']}{'*' if c['time_boxed'] else ''} |")

    if r["mode"] == "grid":
        L += ["## All cells", "", cols.format(axis="batch / steps / max_len / items"), sep]
        for c in sorted(cells, key=lambda c: (KINDS.index(c["kind"]), c["backend"], c["precision"], c["n_items"],
                                              c["max_len"], c["steps"] or 0, c["batch"])):
            c2 = {**c, "b": f"{c['batch']} / {c['steps'] or '-'} / {c['max_len']} / {c['n_items']}"}
            L.append(line(c2, "b"))
        L.append("")
    else:
        titles = {"batch": "Batch size", "steps": "Diffusion steps", "max_len": "Sequence length (max_len)",
                  "n_items": "Catalog size (items)"}
        for axis, title in titles.items():
            ac = _axis_cells(cells, s, axis)
            if not ac:
                continue
            L += [f"## {title}", "", cols.format(axis=axis), sep] + [line(c, axis) for c in ac] + [""]
    L += ["Latencies in ms. `*` = time-boxed (fewer than the minimum iterations fitted in the box). Peak RSS: the "
          "process's high-water mark after the cell (Δ: its growth during the cell, loading the cell's model or "
          "session included; the JSON also has the growth over the timed calls alone); GPU: "
          "torch.cuda.max_memory_allocated.", ""]
    if r["overhead"]:
        L += ["## Runtime Python overhead (Recommender.measure_overhead, batch 1, ORT CPU)", "",
              "| kind | prepare µs | session µs | decode µs | overhead µs | share of session | share of total |",
              "|---|---|---|---|---|---|---|"]
        for kind, o in r["overhead"].items():
            L.append(f"| {kind} | {o['prepare_us_p50']:.1f} | {o['session_us_p50']:.1f} | {o['decode_us_p50']:.1f} | "
                     f"{o['python_overhead_us_p50']:.1f} | {o['python_overhead_us_p50'] / o['session_us_p50']:.1%} | "
                     f"{o['python_overhead_share']:.1%} |")
        L.append("")
    h = r.get("http")
    if h:
        L += ["## HTTP service under load", ""]
        if "skipped" in h:
            L.append(f"Skipped: {h['skipped']}")
        else:
            sv = h["server"]
            L += [f"`python -m genattn_runtime.service` ({s.http.kind}, default point) on loopback, "
                  f"{sv['threads']} ORT threads, micro-batching max {sv['max_batch']} rows / {sv['max_wait_ms']} ms; "
                  f"{h['concurrency']} concurrent httpx clients for {h['duration_s']:.1f} s on the same machine.", "",
                  "| requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | mean rows per session run "
                  "| server peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {h['requests_per_s']:,.0f} | {_ms(h['latency_ms']['p50'])} | {_ms(h['latency_ms']['p90'])} | "
                  f"{_ms(h['latency_ms']['p99'])} | {_ms(h['latency_ms']['max'])} | {h['errors']} | "
                  f"{(sv['mean_batch_rows'] or 0):.1f} | {sv['peak_rss_mb'] or 0:.0f} |"]
        L.append("")
    skipped_b = {n: b["skip_reason"] for n, b in r["backends"].items() if not b["available"]}
    if skipped_b or r["skipped"]:
        L += ["## Skipped", ""]
        L += [f"- backend `{n}`: {why}" for n, why in skipped_b.items()]
        reasons: dict[str, list] = {}
        for sk in r["skipped"]:
            reasons.setdefault(f"`{sk['backend']}` {sk['precision']}: {sk['reason']}", []).append(sk)
        L += [f"- {why} ({len(v)} cell{'s' if len(v) > 1 else ''})" for why, v in reasons.items()]
        L.append("")
    if r["bundles"]:
        L += ["## Bundles", "", "| bundle | export s | ONNX MB | nodes | cached |", "|---|---|---|---|---|"]
        for name, b in r["bundles"].items():
            L.append(f"| {name} | {b.get('export_s', float('nan')):.1f} | {b.get('onnx_mb', float('nan')):.1f} | "
                     f"{b.get('nodes', '-')} | {'yes' if b.get('cached') else 'no'} |")
        L.append("")
    for p in r.get("plots", []):
        L.append(f"![{Path(p).stem}]({Path(p).name})")
    return "\n".join(L) + "\n"


def make_plots(r: dict, s: Settings, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells, written = r["cells"], []
    labels = sorted({_label(c) for c in cells})
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}

    def log2_axis(ax, values):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(values))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(repo_path(out / name))  # results never name this machine's layout

    def series(cs, axis):
        by: dict[str, list] = {}
        for c in cs:
            by.setdefault(_label(c), []).append(c)
        return {lab: sorted(v, key=lambda c: c[axis]) for lab, v in by.items()}

    grid = r["mode"] == "grid"
    pick = (lambda axis: [c for c in cells if all(c[f] == v for f, v in _default_coords(c, s, axis).items())]) \
        if grid else (lambda axis: _axis_cells(cells, s, axis))

    kinds = [k for k in KINDS if any(c["kind"] == k for c in cells)]
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for lab, cs in series([c for c in pick("batch") if c["kind"] == kind], "batch").items():
                x = [c["batch"] for c in cs]
                ax.plot(x, [c["latency_ms"]["p50"] for c in cs], "o-", color=colors[lab], label=lab)
                ax.plot(x, [c["latency_ms"]["p99"] for c in cs], ":", color=colors[lab])
            ax.set(yscale="log", xlabel="batch", ylabel="latency per call, ms (p50; dotted p99)",
                   title=kind + (f" ({s.default.steps} steps)" if kind == "diffusion" else ""))
            log2_axis(ax, {c["batch"] for c in pick("batch")})
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "latency_vs_batch.png")

    steps_cells = [c for c in pick("steps") if c["kind"] == "diffusion"]
    if steps_cells:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, cs in series(steps_cells, "steps").items():
            ax.plot([c["steps"] for c in cs], [c["latency_ms"]["p50"] for c in cs], "o-", color=colors[lab],
                    label=f"diffusion, {lab}")
            base = [c for c in cells if c["kind"] == "softmax" and _label(c) == lab and _at_default(c, s)]
            if base:
                ax.axhline(base[0]["latency_ms"]["p50"], ls="--", color=colors[lab], lw=1)
        ax.set(yscale="log", xlabel="DDIM steps", ylabel="p50 latency, ms (dashed: softmax)",
               title=f"diffusion, batch {s.default.batch}, max_len {s.default.max_len}")
        log2_axis(ax, {c["steps"] for c in steps_cells})
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "latency_vs_steps.png")

    ratios: dict[str, list] = {}
    for c in cells:
        if c["kind"] == "softmax":
            continue
        base = [b for b in cells if b["kind"] == "softmax" and _label(b) == _label(c) and b["batch"] == c["batch"]
                and b["max_len"] == c["max_len"] and b["n_items"] == c["n_items"]]
        if base:
            ratios.setdefault(_label(c), []).append((c, c["latency_ms"]["p50"] / base[0]["latency_ms"]["p50"]))
    if ratios:
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, rs in ratios.items():
            diff = sorted((c["steps"], q) for c, q in rs
                          if c["kind"] == "diffusion" and _at_default(c, s, steps=c["steps"]))
            if diff:
                ax.plot([x for x, _ in diff], [q for _, q in diff], "o-", color=colors[lab], label=f"diffusion, {lab}")
            vae = [q for c, q in rs if c["kind"] == "vae" and _at_default(c, s)]
            if vae:
                ax.axhline(vae[0], ls="--", color=colors[lab], lw=1, label=f"vae, {lab}")
        ax.axhline(s.targets.diffusion_vs_softmax_ratio, color="red", lw=1, alpha=0.6, label="target (ORT CPU)")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xlabel="DDIM steps", ylabel="p50 latency / softmax p50",
               title=f"generative vs softmax cost, batch {s.default.batch}, max_len {s.default.max_len}")
        log2_axis(ax, {c["steps"] for c in cells if c["kind"] == "diffusion"} or {1})
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "generative_vs_softmax.png")

    cat = pick("n_items")
    if len({c["n_items"] for c in cat}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, marker in zip(KINDS, "os^"):
            for lab, cs in series([c for c in cat if c["kind"] == kind], "n_items").items():
                ax.plot([c["n_items"] for c in cs], [c["latency_ms"]["p50"] for c in cs], marker + "-",
                        color=colors[lab], label=f"{kind}, {lab}", alpha=0.8)
        ax.set(xscale="log", yscale="log", xlabel="catalog size (items)", ylabel="p50 latency, ms",
               title=f"catalog size, batch {s.default.batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
        save(fig, "latency_vs_catalog.png")
    return written


def _default_coords(c: dict, s: Settings, axis: str) -> dict:
    d = s.default
    want = {"batch": d.batch, "max_len": d.max_len, "n_items": d.n_items,
            "steps": d.steps if c["kind"] == "diffusion" else None}
    want.pop(axis)
    return want
