"""The serving graph: torch wrapper, I/O spec and ONNX conversion.

Inputs  item_seq int64 [batch, max_len] (left-padded internal indices)
        exclude_items int64 [batch, max_len] (optional; indices scored -inf)
        noise float32 [batch, noise_size] (stochastic samplers only)
        item_ages float32 [batch, max_len] (models with time gaps only: each event's seconds before
                  the row's newest; the graph buckets the gaps itself, as training does)
Outputs top_items int64 [batch, K], top_scores float32 [batch, K] (the mean of the S samples' scores),
        with S >= 2 stochastic samples also interleave_items/_scores, vote_items/_scores [batch, K]
        and confidence float32 [batch, 1] (genattn/models/aggregate.py), then scores (optional);
        or, with an ANN index (StateGraph): user_state float32 [batch, d_model] only
Only the newest position is scored; the sampler is unrolled to its fixed step count.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from genattn.models import SASRec, Sampling
from genattn.models.aggregate import confidence, interleave, vote
from genattn_runtime.bundle import (INPUT_AGES, INPUT_EXCLUDE, INPUT_NOISE, INPUT_SEQ, OUTPUT_ALL, OUTPUT_CONFIDENCE,
                                    OUTPUT_ITEMS, OUTPUT_SCORES, OUTPUT_STATE, sample_output_specs)

log = logging.getLogger(__name__)

MAX_K = 1024
# The sample outputs' list lengths, as measured (benchmarks/frontier.py, benchmarks/confidence.py):
# the vote counts each sample's top 20, the confidence is the overlap of the samples' top 10.
VOTE_DEPTH, CONFIDENCE_K = 20, 10


def aggregate_meta(k: int, samples: int) -> dict:
    """The manifest's "sampler.aggregate" for a graph of top-K `k` over `samples` samples."""
    return {"samples": samples, "vote_depth": min(VOTE_DEPTH, k), "confidence_k": min(CONFIDENCE_K, k)}


class ExportError(RuntimeError):
    """Export could not produce a valid, verified graph; the message says which check failed."""


@dataclass
class TensorSpec:
    name: str
    dtype: str                  # numpy dtype name
    shape: list                 # "batch" marks the dynamic axis

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class GraphSpec:
    """Names, dtypes and dynamic axes of the serving graph; no output reuses an input's name."""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    @classmethod
    def build(cls, model: SASRec, *, k: int, noise_size: int, exclude: bool, full_scores: bool,
              sample_outputs: bool = False, score_dtype: str = "float32") -> "GraphSpec":
        L, N = model.cfg.max_len, model.cfg.n_items
        ins = [TensorSpec(INPUT_SEQ, "int64", ["batch", L])]
        if exclude:
            ins.append(TensorSpec(INPUT_EXCLUDE, "int64", ["batch", L]))
        if noise_size:
            ins.append(TensorSpec(INPUT_NOISE, "float32", ["batch", noise_size]))
        if model.cfg.time_buckets:
            ins.append(TensorSpec(INPUT_AGES, "float32", ["batch", L]))
        outs = [TensorSpec(OUTPUT_ITEMS, "int64", ["batch", k]), TensorSpec(OUTPUT_SCORES, score_dtype, ["batch", k])]
        if sample_outputs:
            outs += [TensorSpec(name, score_dtype if dtype == "float32" and name != OUTPUT_CONFIDENCE else dtype,
                                ["batch", width]) for name, dtype, width in sample_output_specs(k)]
        if full_scores:
            outs.append(TensorSpec(OUTPUT_ALL, score_dtype, ["batch", N + 1]))
        return cls(ins, outs)

    @classmethod
    def build_state(cls, model: SASRec, *, noise_size: int) -> "GraphSpec":
        """The ANN bundle's graph: the same inputs minus exclusion, the user state out."""
        spec = cls.build(model, k=1, noise_size=noise_size, exclude=False, full_scores=False)
        return cls(spec.inputs, [TensorSpec(OUTPUT_STATE, "float32", ["batch", model.cfg.d_model])])

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


class ServingGraph(nn.Module):
    """What is exported: the model's serving path + in-graph exclusion + top-K."""

    def __init__(self, model: SASRec, sampling: Sampling | None, k: int, exclude: bool, noise: bool,
                 full_scores: bool, sample_outputs: bool = False):
        super().__init__()
        if not 1 <= k <= min(MAX_K, model.cfg.n_items):
            raise ExportError(f"K must be in 1..{min(MAX_K, model.cfg.n_items)}, got {k}")
        self.samples = sampling.samples(model.cfg.attention) if sampling is not None and noise else 1
        if sample_outputs and self.samples < 2:
            raise ExportError("the sample outputs (interleave, vote, confidence) need a stochastic sampling with "
                              f"--samples >= 2; this one draws {self.samples}")
        self.model, self.sampling, self.k = model, sampling, k
        self.exclude, self.noise, self.full_scores = exclude, noise, full_scores
        self.sample_outputs = sample_outputs
        self.agg = aggregate_meta(k, self.samples)
        # A serving graph never trains: the wrapper and the model start in eval mode (the wrapper's
        # own flag matters, as exporters restore it recursively over the model).
        self.eval()

    def sample_scores(self, item_seq: Tensor, exclude_items: Tensor | None = None,
                      noise: Tensor | None = None, item_ages: Tensor | None = None) -> Tensor:
        """Each sample's full-catalog scores (B, S, N + 1), the excluded items at -inf."""
        h = self.model.sample_states(item_seq, self.sampling, noise if self.noise else None, item_ages)
        scores = self.model.logits(h)
        if self.exclude and exclude_items is not None:
            idx = exclude_items[:, None, :].expand(-1, scores.shape[1], -1)
            scores = scores.scatter(2, idx, float("-inf"))
        return scores

    def masked_scores(self, item_seq: Tensor, exclude_items: Tensor | None = None,
                      noise: Tensor | None = None, item_ages: Tensor | None = None) -> Tensor:
        """Full-catalog scores (B, N + 1) with the excluded items at -inf: what top-K ranks."""
        if self.sample_outputs:  # the same per-sample scores the other outputs read
            return self.sample_scores(item_seq, exclude_items, noise, item_ages).mean(1)
        scores = self.model.scores(item_seq, self.sampling, noise if self.noise else None, item_ages)
        if self.exclude and exclude_items is not None:
            scores = scores.scatter(1, exclude_items, float("-inf"))
        return scores

    def forward(self, item_seq: Tensor, exclude_items: Tensor | None = None,
                noise: Tensor | None = None, item_ages: Tensor | None = None) -> tuple[Tensor, ...]:
        samples: tuple[Tensor, ...] = ()
        if self.sample_outputs:
            per = self.sample_scores(item_seq, exclude_items, noise, item_ages)
            scores = per.mean(1)
            top = per.topk(self.k, dim=-1, sorted=True).indices  # each sample's list, shared by the three
            samples = (*interleave(per, self.k, top), *vote(per, self.k, depth=self.agg["vote_depth"], top=top),
                       confidence(per, self.agg["confidence_k"], top)[:, None])
        else:
            scores = self.masked_scores(item_seq, exclude_items, noise, item_ages)
        top_scores, top_items = scores.topk(self.k, dim=1, largest=True, sorted=True)
        out = (top_items, top_scores, *samples)
        return out + (scores,) if self.full_scores else out


class StateGraph(nn.Module):
    """What an ANN bundle exports: the user state that the exact graph multiplies by the item table
    (scores = state . item_emb[i]); the runtime searches the index with it."""

    def __init__(self, model: SASRec, sampling: Sampling | None, noise: bool):
        super().__init__()
        self.model, self.sampling, self.noise = model, sampling, noise
        self.eval()

    def forward(self, item_seq: Tensor, noise: Tensor | None = None, item_ages: Tensor | None = None) -> Tensor:
        return self.model.user_state(item_seq, self.sampling, noise if self.noise else None, item_ages)  # (B, D)


def example_inputs(spec: GraphSpec, batch: int, n_items: int, seed: int = 0) -> dict[str, Tensor]:
    """Random but valid inputs: left-padded sequences of varied length."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in spec.inputs:
        shape = (batch, t.shape[1])
        if t.name == INPUT_NOISE:
            out[t.name] = torch.randn(shape, generator=g)
        elif t.name == INPUT_AGES:  # filled in below, once the sequences' padding is known
            continue
        else:
            seq = torch.randint(1, n_items + 1, shape, generator=g)
            lengths = torch.randint(0, shape[1] + 1, (batch,), generator=g)
            pos = torch.arange(shape[1])[None, :]
            out[t.name] = torch.where(pos >= shape[1] - lengths[:, None], seq, torch.zeros_like(seq))
    if INPUT_EXCLUDE in out:
        out[INPUT_EXCLUDE] = out[INPUT_SEQ].clone()
    if INPUT_AGES in spec.input_names:
        out[INPUT_AGES] = example_ages(out[INPUT_SEQ], g)
    return out


def example_ages(seq: Tensor, g: torch.Generator) -> Tensor:
    """Ages for left-padded `seq`: whole-second gaps from 1 s to about half a year between neighbours,
    log-uniform, half of them exactly 2^k - 1 s (1 + gap on a bucket's edge, where log2 alone errs),
    0 for padding."""
    shape = seq.shape
    spread = torch.pow(2.0, torch.rand(shape, generator=g) * 24).floor()
    edge = torch.pow(2.0, torch.randint(0, 25, shape, generator=g).double()).float() - 1
    gaps = torch.where(torch.rand(shape, generator=g) < 0.5, edge, spread)  # gaps[:, j]: event j to j + 1
    ages = torch.zeros_like(gaps)
    ages[:, :-1] = gaps[:, :-1].flip(1).cumsum(1).flip(1)  # the newest event is age 0
    return torch.where(seq > 0, ages, torch.zeros_like(ages))


def to_onnx(graph: ServingGraph, spec: GraphSpec, path: Path, *, opset: int = 18, dynamo: bool = True) -> None:
    """Trace and write the ONNX file (dynamo exporter by default; TorchScript as a fallback option)."""
    ex = example_inputs(spec, batch=2, n_items=graph.model.cfg.n_items)
    args = (ex[INPUT_SEQ],)
    kwargs = {n: ex[n] for n in spec.input_names[1:]}
    with eval_mode(graph), known_export_warnings_ignored(), _exporter_logs_at_warning():
        _export(graph, spec, path, args, kwargs, opset, dynamo)


class _DropKnownLogs(logging.Filter):
    """Drops the dynamo exporter's "torchvision is not installed. Skipping torchvision::nms" lines:
    it registers torchvision's ops when it can, and we export none of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed. Skipping")


@contextmanager
def _exporter_logs_at_warning() -> Iterator[None]:
    """The exporters' loggers at WARNING inside the block: their pass-by-pass INFO lines drown
    the user's output, their warnings do not (except the known-harmless ones above)."""
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [q.level for q in quiet]
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    drop = _DropKnownLogs()
    for q in quiet:
        q.setLevel(logging.WARNING)
    registration.addFilter(drop)
    try:
        yield
    finally:
        registration.removeFilter(drop)
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside; each one's own training flag restored on exit.

    Exporters restore only the top module's flag, recursively, which switches dropout back on
    in a model whose wrapper was in training mode; restoring per module returns exactly the
    caller's state.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


# Warnings that export raises on every correct model, each checked to be harmless; anything
# else (a model exported in training mode, a tracer warning from our code elsewhere) reaches
# the caller. (category, message regex, module regex)
KNOWN_EXPORT_WARNINGS = [
    # every input's axis 0 is the one "batch" dimension, so torch merges the equal names
    (UserWarning, r"# The axis name: batch will not be used, since it shares the same shape constraints", ""),
    # torch.export's pytree internals calling their own deprecated LeafSpec check
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", ""),
    # --torchscript: the legacy exporter calling its own deprecated helper (the user already
    # gets the exporter's own deprecation notice)
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function", r"torch\.onnx"),
    # --torchscript: the models' length checks (`if L > max_len` in SASRec.embed, the noise
    # reader's bounds check) compare a static axis (finalize_onnx checks axis 1 is static), so
    # the constant branch is right; parity on untraced batch sizes would catch a wrong trace
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean", r"genattn\.models\.(sasrec|sampling)$"),
]


@contextmanager
def known_export_warnings_ignored() -> Iterator[None]:
    """Ignore exactly KNOWN_EXPORT_WARNINGS (by category, message and module) inside the block."""
    with warnings.catch_warnings():
        for category, message, module in KNOWN_EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def _export(graph, spec, path, args, kwargs, opset, dynamo) -> None:
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=65536)
        torch.onnx.export(graph, args, str(path), kwargs=kwargs, input_names=spec.input_names,
                          output_names=spec.output_names, opset_version=opset, dynamo=True,
                          dynamic_shapes={n: {0: batch} for n in spec.input_names},
                          external_data=False, verbose=False)
    else:
        axes = {n: {0: "batch"} for n in spec.input_names + spec.output_names}
        torch.onnx.export(graph, args, str(path), kwargs=kwargs, input_names=spec.input_names,
                          output_names=spec.output_names, opset_version=opset, dynamo=False,
                          dynamic_axes=axes)


def finalize_onnx(path: Path, spec: GraphSpec, *, slim: bool = False) -> dict:
    """Checker + shape inference + name/shape check against the spec; optional onnxslim."""
    import onnx

    model = onnx.load(str(path))
    stats = {"nodes_before_slim": len(model.graph.node)}
    if slim:
        try:
            import onnxslim

            model = onnxslim.slim(model)
            stats["nodes_after_slim"] = len(model.graph.node)
        except ImportError:
            log.warning("onnxslim not installed; skipping graph slimming")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ExportError(f"graph I/O {got_in} -> {got_out} does not match the spec "
                          f"{spec.input_names} -> {spec.output_names}")
    for vi, ts in zip(list(model.graph.input) + list(model.graph.output), spec.inputs + spec.outputs):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[0].dim_param or dims[1].dim_value != ts.shape[1]:
            raise ExportError(f"{ts.name}: graph shape {[d.dim_param or d.dim_value for d in dims]} "
                              f"is not [batch, {ts.shape[1]}]")
    onnx.save(model, str(path))
    stats["nodes"] = len(model.graph.node)
    stats["op_counts"] = _op_counts(model)
    return stats


def _op_counts(model) -> dict[str, int]:
    from collections import Counter

    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
