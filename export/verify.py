"""Export-time self-verification: ONNX Runtime against the torch model.

Fixed order (as in optimum's validation): output names, then shapes, then values.
fp32: top-K scores within `atol + rtol·|x|` and top-K items identical up to ties
(an item may differ from torch's only where torch scores the two within tolerance).
fp16: drift and top-K overlap are measured and reported, not enforced.
Sample outputs (S >= 2): each interleave / vote item's score is torch's mean score of that
item, the lists overlap torch's by at least SAMPLE_LIST_OVERLAP, and the confidence is
within SAMPLE_CONFIDENCE_ATOL (a near-tie inside one sample's list may swap an item); rows
whose items all score alike (an empty history in a fresh model) have no order and are counted,
not compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genattn_runtime.bundle import (AGGREGATE_OUTPUTS, INPUT_EXCLUDE, INPUT_NOISE, INPUT_SEQ, OUTPUT_CONFIDENCE,
                                    OUTPUT_ITEMS, OUTPUT_SCORES)

from .graph import ExportError, GraphSpec, ServingGraph, eval_mode, example_inputs

ATOL, RTOL = 1e-4, 1e-4
SAMPLE_LIST_OVERLAP, SAMPLE_CONFIDENCE_ATOL = 0.9, 0.02


class ParityError(ExportError):
    """ONNX Runtime disagrees with torch beyond tolerance."""


@dataclass
class ParityCase:
    name: str
    feeds: dict[str, np.ndarray]


def ort_session(path: str, threads: int = 0):
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ExportError("export verification needs ONNX Runtime: pip install 'genattn[cpu]'") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cases(spec: GraphSpec, n_items: int, real: dict[str, np.ndarray] | None, noise_size: int) -> list[ParityCase]:
    """Random batches of sizes other than the traced one, an all-padding row, and real data
    (`real`: item_seq, plus item_ages where the graph takes them)."""
    out = []
    for b, seed in ((1, 11), (7, 12), (33, 13)):
        ex = example_inputs(spec, b, n_items, seed=seed)
        if b == 7:  # an empty history must not produce NaN
            ex[INPUT_SEQ][0] = 0
            if INPUT_EXCLUDE in ex:
                ex[INPUT_EXCLUDE][0] = 0
        out.append(ParityCase(f"random_b{b}", {k: v.numpy() for k, v in ex.items()}))
    if real is not None and len(real[INPUT_SEQ]):
        seq = real[INPUT_SEQ]
        feeds = dict(real)
        if INPUT_EXCLUDE in spec.input_names:
            feeds[INPUT_EXCLUDE] = seq.copy()
        if noise_size:
            feeds[INPUT_NOISE] = np.random.default_rng(14).standard_normal((len(seq), noise_size), dtype=np.float32)
        out.append(ParityCase(f"real_b{len(seq)}", {n: feeds[n] for n in spec.input_names}))
    return out


def check_parity(graph: ServingGraph, spec: GraphSpec, onnx_path: str, cases_: list[ParityCase], *,
                 fp16: bool = False, atol: float = ATOL, rtol: float = RTOL) -> dict:
    """Compare ORT and torch on every case; raise ParityError (fp32) on mismatch."""
    sess = ort_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if names != spec.output_names:
        raise ParityError(f"ORT outputs {names} != spec {spec.output_names}")
    report = {"atol": atol, "rtol": rtol, "precision": "fp16" if fp16 else "fp32", "cases": {}}
    for case in cases_:
        outs = dict(zip(names, sess.run(None, case.feeds)))
        # one torch pass serves both the reference top-K and the tie check; eval mode whatever
        # state the caller left the graph in (dropout on would make the reference random)
        with torch.no_grad(), eval_mode(graph):
            full = graph.masked_scores(**{n: torch.from_numpy(case.feeds[n]) for n in spec.input_names}).float()
            ref_top = full.topk(graph.k, dim=1, largest=True, sorted=True)
        ref_items, ref_scores = ref_top.indices.numpy(), ref_top.values.numpy()
        items, scores = outs[OUTPUT_ITEMS], outs[OUTPUT_SCORES].astype(np.float32)
        if items.shape != ref_items.shape or scores.shape != ref_scores.shape:
            raise ParityError(f"{case.name}: shapes {items.shape}/{scores.shape} != torch "
                              f"{ref_items.shape}/{ref_scores.shape}")
        if not np.isfinite(scores).all() and not np.array_equal(np.isfinite(scores), np.isfinite(ref_scores)):
            raise ParityError(f"{case.name}: ORT produced non-finite scores where torch did not")
        fin = np.isfinite(ref_scores)
        diff = np.abs(scores - ref_scores)[fin]
        max_diff = float(diff.max()) if diff.size else 0.0
        # Top-K equal up to ties: torch's own score of each ORT-chosen item matches torch's ranking.
        chosen = full.gather(1, torch.from_numpy(items)).numpy()
        tie_gap = np.abs(chosen - ref_scores)[fin]
        tie_ok = bool((tie_gap <= atol + rtol * np.abs(ref_scores[fin])).all()) if diff.size else True
        overlap = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(items, ref_items)]))
        ok = bool((diff <= atol + rtol * np.abs(ref_scores[fin])).all()) and tie_ok
        report["cases"][case.name] = {"batch": int(len(items)), "max_abs_diff": max_diff,
                                      "topk_overlap": overlap, "topk_equal_up_to_ties": tie_ok,
                                      "passed": ok or fp16}
        if not ok and not fp16:
            raise ParityError(f"{case.name}: ONNX Runtime vs torch max |diff| {max_diff:.3g} "
                              f"(tolerance {atol} + {rtol}·|x|), top-K equal up to ties: {tie_ok}")
        if graph.sample_outputs:
            report["cases"][case.name]["samples"] = _sample_parity(graph, spec, case, outs, full, fp16, atol, rtol)
    report["max_abs_diff"] = max(c["max_abs_diff"] for c in report["cases"].values())
    report["min_topk_overlap"] = min(c["topk_overlap"] for c in report["cases"].values())
    return report


def _sample_parity(graph: ServingGraph, spec: GraphSpec, case: ParityCase, outs: dict, mean: torch.Tensor,
                   fp16: bool, atol: float, rtol: float) -> dict:
    """The interleave / vote lists and the confidence against torch's (see the module docstring)."""
    with torch.no_grad(), eval_mode(graph):
        ref = dict(zip(spec.output_names, graph(**{n: torch.from_numpy(case.feeds[n]) for n in spec.input_names})))
    out: dict = {}
    # A row whose items all score alike (an empty history under zero biases, as in a fresh model)
    # has no order: any list is right, and torch and ONNX Runtime break the tie differently.
    finite = [r[np.isfinite(r)] for r in mean.numpy()]
    ordered = np.array([f.size > 0 and np.ptp(f) > 0 for f in finite], dtype=bool)
    out["rows_without_order"] = int((~ordered).sum())
    for how in ("interleave", "vote"):
        items_name, scores_name = AGGREGATE_OUTPUTS[how]
        items, scores = outs[items_name], outs[scores_name].astype(np.float32)
        want = mean.gather(1, torch.from_numpy(items)).numpy()
        fin = np.isfinite(want)
        score_ok = bool(np.array_equal(fin, np.isfinite(scores))
                        and (np.abs(scores - want)[fin] <= atol + rtol * np.abs(want[fin])).all())
        ref_items = ref[items_name].numpy()
        overlap = float(np.mean([len(set(a) & set(b)) / len(a) for a, b, o in zip(items, ref_items, ordered) if o]
                                or [1.0]))
        out[how] = {"list_overlap": overlap, "scores_match": score_ok}
        if not fp16 and (not score_ok or overlap < SAMPLE_LIST_OVERLAP):
            raise ParityError(f"{case.name}: the {how} list differs from torch's (overlap {overlap:.3f}, "
                              f"needs {SAMPLE_LIST_OVERLAP}; its scores match torch's mean scores: {score_ok})")
    conf_diff = float(np.abs(outs[OUTPUT_CONFIDENCE] - ref[OUTPUT_CONFIDENCE].numpy()).max()) if len(mean) else 0.0
    out["confidence_max_abs_diff"] = conf_diff
    if not fp16 and conf_diff > SAMPLE_CONFIDENCE_ATOL:
        raise ParityError(f"{case.name}: confidence differs from torch's by {conf_diff:.3g} "
                          f"(tolerance {SAMPLE_CONFIDENCE_ATOL})")
    return out


def check_deterministic(onnx_path: str, feeds: dict[str, np.ndarray]) -> bool:
    """Two fresh sessions, same inputs -> bit-identical outputs."""
    a = ort_session(onnx_path).run(None, feeds)
    b = ort_session(onnx_path).run(None, feeds)
    return all(np.array_equal(x, y) for x, y in zip(a, b))
