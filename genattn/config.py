"""Typed configuration. Modules take these dataclasses, never argparse namespaces.

Checkpoints store `asdict(cfg)` and rebuild with `ModelConfig(**saved)` (every field explicit).
The fields that depend on the attention kind default to None and resolve from KIND_DEFAULTS
in `ModelConfig.__post_init__` (TrainConfig's from TRAIN_KIND_DEFAULTS in `RunConfig`'s), so
`ModelConfig(attention="vae")`, `genattn train --attention vae` and `genattn/configs/vae.toml`
all give the same model (docs/model.md, "Per-kind defaults").
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

ATTENTION_KINDS = ("softmax", "vae", "diffusion")
# Catalog losses and negative samplers (implemented in models/loss.py, which imports these names:
# validating a config never imports torch).
LOSSES = ("full", "sampled", "bce")
SAMPLERS = ("uniform", "popularity", "mixed")
MAX_TIME_BUCKETS = 64  # log2 buckets of seconds: 64 cover any gap a float64 clock can hold

# What ModelConfig gave these fields before they became per kind: the first generative objective
# (every block generative, a prior the prior-path CE trains through, no posterior skip), whose
# prior collapsed to a deterministic map. Softmax uses none of them and keeps these values, so
# its configs compare equal to those its earlier runs recorded.
_FIRST_OBJECTIVE: dict[str, Any] = {
    "generative_blocks": "all", "pair_hidden": 16, "beta_warmup_steps": 1000,
    "posterior_gain": 0.0, "prior_ce": "through", "train_prior_noise": False, "posterior_ce": "all",
}
# The defaults of every field that depends on the attention kind are what the equal-budget
# search selected on ML-100K validation NDCG@10 under full CE (benchmarks/results/search_ml100k.md:
# 8 trials per kind, one budget; docs/model.md, "Per-kind defaults"). The generative kinds keep
# the objective against collapse (the posterior leans on the target affinity, the prior-path CE
# trains the backbone only) with only the last block generative (serving cost).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # search trial 5: valid 0.1275, 3 seeds test NDCG@10 0.1160 +- 0.0032. The generative fields
    # are unused; they keep the values the earlier runs recorded so that those configs compare equal.
    # recency_bias came after the search: validation chose it in every paired comparison (ML-100K
    # full CE 0.1287 vs 0.1248 and BCE 0.1115 vs 0.1071, ML-1M BCE 0.1466 vs 0.1420; 3 seeds each).
    "softmax": {"max_len": 100, "d_model": 32, "n_blocks": 3, "dropout": 0.2, "beta": 0.1, "gamma": 1.0,
                "recency_bias": True, **_FIRST_OBJECTIVE},
    # trial 1: valid 0.1226, test 0.1025 +- 0.0024
    "vae": {"max_len": 50, "d_model": 32, "n_blocks": 1, "dropout": 0.5, "generative_blocks": "last",
            "pair_hidden": 16, "beta": 0.1, "beta_warmup_steps": 500, "gamma": 2.0, "posterior_gain": 2.0,
            "prior_ce": "backbone", "train_prior_noise": False,
            # after the search, as softmax's: ML-100K full CE validation 0.1284 vs 0.1212 (3 paired seeds)
            "recency_bias": True,
            # after the search: ML-1M full CE validation 0.1960 vs 0.1604 (one paired seed); level on
            # ML-100K (0.1282 vs 0.1284, 3 paired seeds), so the dataset that tells them apart decides
            "posterior_ce": "generative"},
    # trial 5: valid 0.1136 on its one seed; three seeds: valid 0.1096 +- 0.0047, test 0.0930 +- 0.0097
    "diffusion": {"max_len": 100, "d_model": 32, "n_blocks": 3, "dropout": 0.2, "generative_blocks": "last",
                  "pair_hidden": 16, "beta": 0.3, "beta_warmup_steps": 2000, "gamma": 1.0, "posterior_gain": 2.0,
                  # no paired run with the recency bias yet: off, as the search trained it
                  "prior_ce": "backbone", "train_prior_noise": False, "recency_bias": False,
                  # no paired run with "generative" under this objective: "all", as the search trained it
                  "posterior_ce": "all"},
}
# TrainConfig's per-kind fields (same trials), resolved by RunConfig from the model's kind.
TRAIN_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "softmax": {"lr": 2e-3, "weight_decay": 0.01},
    "vae": {"lr": 1e-3, "weight_decay": 0.01},
    "diffusion": {"lr": 2e-3, "weight_decay": 0.01},
}
# A checkpoint's config.json lists every field it was trained with, except fields added after
# it was written: those it was trained with at what the dataclasses then defaulted to, these
# values (checkpoint.read_config fills them in, never today's per-kind defaults).
# recency_bias: no kind had one before the option existed.
SAVED_DEFAULTS: dict[str, Any] = {**_FIRST_OBJECTIVE, "recency_bias": False}
# share_negatives: before the option existed each CE term drew its own negatives.
SAVED_TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0, "share_negatives": False}


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field."""


@dataclass
class ModelConfig:
    n_items: int = 0                 # catalog size; internal item indices 1..n_items, 0 = padding
    # None = the attention kind's default (KIND_DEFAULTS), filled in by __post_init__.
    max_len: int | None = None       # sequences are left-padded / truncated to this length
    d_model: int | None = None       # embedding and hidden width D
    n_heads: int = 2                 # attention heads H (d_head = D / H)
    n_blocks: int | None = None      # transformer blocks
    dropout: float | None = None     # dropout on embeddings, attention output and FFN
    attention: str = "softmax"       # "softmax" | "vae" | "diffusion" (docs/model.md)
    generative_blocks: str | None = None   # which blocks generate attention: "all" | "last"
    pair_hidden: int | None = None   # width of the per-pair MLPs (prior, posterior, denoiser)
    logstd_min: float = -5.0         # clamp of predicted log std-devs, for stability
    logstd_max: float = 2.0
    # Objective weights shared by both generative kinds.
    beta: float | None = None        # weight of KL (vae) / diffusion bound (diffusion)
    beta_warmup_steps: int | None = None  # linear KL annealing from 0 to beta
    gamma: float | None = None       # weight of the prior-path CE (hybrid objective)
    prior_ce: str | None = None      # "through": the prior-path CE also trains the prior (can buy a
                                     # deterministic prior); "backbone": it trains only the rest of the
                                     # network, the prior learns from the KL / diffusion bound alone
    posterior_ce: str | None = None  # "all": the posterior-path CE trains every parameter; "generative":
                                     # only the posterior and prior (the backbone learns from the served path)
    posterior_gain: float | None = None    # initial gain of the posterior's target-affinity skip path
    train_prior_noise: bool | None = None  # prior path in training samples (vae: mu + sigma*eps; diffusion:
                                     # noise start, eta 1) instead of running the deterministic mode
    # Diffusion prior.
    diffusion_steps: int = 100       # T, training timesteps
    schedule: str = "cosine"         # "cosine" | "linear" betas
    train_sample_steps: int = 2      # DDIM steps used by the prior-path CE during training
    # Time between events (docs/model.md, "Time gaps"): > 0 buckets the gap t_i - t_j between a
    # query's event and each key's by log2 of seconds into this many buckets; every kind adds a
    # learned per-head bias of the bucket to S (as TiSASRec), the generative kinds' pair MLPs
    # also see an embedding of it. 0 = off. Not exportable yet (the bundle has no event times).
    time_buckets: int = 0
    # A learned per-head bias of the recency i - j added to S (zero at the start); any kind can
    # have it. The generative kinds' pair MLPs see recency anyway; with it softmax has the same
    # information (docs/results.md, "What the generated maps are"). None = the kind's default.
    recency_bias: bool | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        for name, value in KIND_DEFAULTS[self.attention].items():  # explicit values win
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.generative_blocks not in ("all", "last"):
            raise ConfigError(f"generative_blocks must be 'all' or 'last', got {self.generative_blocks!r}")
        if self.posterior_ce not in ("all", "generative"):
            raise ConfigError(f"posterior_ce must be 'all' or 'generative', got {self.posterior_ce!r}")
        if self.prior_ce not in ("through", "backbone"):
            raise ConfigError(f"prior_ce must be 'through' or 'backbone', got {self.prior_ce!r}")
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        for name in ("max_len", "d_model", "n_heads", "n_blocks", "pair_hidden", "diffusion_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.logstd_min >= self.logstd_max:
            raise ConfigError(f"logstd_min ({self.logstd_min}) must be below logstd_max ({self.logstd_max})")
        for name in ("beta", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.time_buckets <= MAX_TIME_BUCKETS:
            raise ConfigError(f"time_buckets must be in 0..{MAX_TIME_BUCKETS}, got {self.time_buckets}")
        if not 1 <= self.train_sample_steps <= self.diffusion_steps:
            raise ConfigError("train_sample_steps must be in 1..diffusion_steps")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class TrainConfig:
    epochs: int = 200                # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    # None = the model's attention kind's default (TRAIN_KIND_DEFAULTS), filled in by RunConfig.
    lr: float | None = None
    weight_decay: float | None = None  # AdamW's
    grad_clip: float = 5.0
    patience: int = 20               # epochs without validation NDCG@10 improvement before stopping
                                     # (one budget for every kind: genattn/configs/*.toml say the same)
    eval_every: int = 1              # validate every N epochs
    seed: int = 0
    device: str = "auto"             # "auto" (CUDA when present) | "cpu" | "cuda"
    threads: int = 0                 # torch intra-op threads; 0 = all cores
    max_minutes: float = 0.0         # wall-time budget; 0 = none
    # Catalog loss (models/loss.py). "full": exact CE over every item, the default, right for
    # catalogs up to ~10^5 items; "sampled": sampled softmax with logQ correction, for larger ones.
    loss: str = "full"               # "full" | "sampled" | "bce" (SASRec's: one uniform negative per position)
    negatives: int = 1024            # sampled: shared negatives per batch (drawn with replacement)
    negative_sampler: str = "uniform"  # sampled: "uniform" | "popularity" | "mixed" (even mixture)
    in_batch_negatives: bool = True  # sampled: the batch's other targets are negatives too
    # sampled / bce: every CE term of a step (a generative kind's posterior and prior paths) ranks
    # against one draw, so no kind sees more negatives per step than softmax's single term;
    # false: each term draws its own (results recorded before this option: docs/results.md,
    # "One negative per position for every kind").
    share_negatives: bool = True
    # Speed.
    precision: str = "auto"          # "auto" (bf16 autocast on a CUDA card that has it, else fp32) | "fp32" | "bf16"
    compile: bool = False            # torch.compile the model (first steps pay the compile time)
    eval_users: int = 0              # validate / test on a fixed random subset of users; 0 = all


    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.negative_sampler not in SAMPLERS:
            raise ConfigError(f"negative_sampler must be one of {SAMPLERS}, got {self.negative_sampler!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("epochs", "batch_size", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("negatives", "threads", "eval_users"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss == "sampled" and self.negatives == 0 and not self.in_batch_negatives:
            raise ConfigError("loss 'sampled' needs negatives >= 1 or in_batch_negatives = true")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


def shared_draws(attention: str | None, train: Mapping[str, Any]) -> bool | None:
    """Whether a run's CE terms of one step ranked against one draw of negatives, from its train
    settings (a TrainConfig's fields or a saved record of them): None where `share_negatives`
    changes nothing (full CE draws nothing; softmax has one CE term a step); a record without the
    field predates the option (SAVED_TRAIN_DEFAULTS)."""
    if train.get("loss", "full") == "full" or attention == "softmax":
        return None
    return bool(train.get("share_negatives", SAVED_TRAIN_DEFAULTS["share_negatives"]))


@dataclass
class DataConfig:
    source: str = "auto"             # "auto" (ML-100K when installed, else synthetic) | "ml-100k" | "synthetic" | a file path
                                     # | "ml-1m" (after `genattn data fetch ml-1m`; read from $GENATTN_DATA or ~/.cache/genattn)
    fmt: str = "auto"                # reader format for a file path
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    min_user_events: int = 3
    k_core: int = 0
    synthetic_users: int = 1000
    synthetic_items: int = 500
    synthetic_seed: int = 0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        # The training fields left at None take the model's kind's defaults (a copy: the
        # TrainConfig passed in may be shared with another RunConfig of another kind).
        unset = {k: v for k, v in TRAIN_KIND_DEFAULTS[self.model.attention].items() if getattr(self.train, k) is None}
        if unset:
            self.train = dataclasses.replace(self.train, **unset)


def _build(cls: type, values: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


TABLES = ("model", "train", "data")


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`TABLE.KEY=VALUE` strings (`genattn train --set`, the benchmarks' `--set`) -> override tables.
    A value is read as JSON when it parses (true, 50, 1e-3, "x"), else kept as the string
    (`model.posterior_ce=generative`); unknown keys are caught when the config is built."""
    out: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    for item in items:
        key, eq, raw = item.partition("=")
        table, _, field_name = key.partition(".")
        if table not in out or not field_name or not eq or not raw:
            raise ConfigError(f"expected TABLE.KEY=VALUE with TABLE one of {', '.join(TABLES)}, got {item!r}")
        try:
            out[table][field_name] = json.loads(raw)
        except json.JSONDecodeError:
            out[table][field_name] = raw
    return out


def load_run_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Read a TOML file with [model], [train], [data] tables, then apply overrides."""
    raw: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {}}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from e
        extra = sorted(set(loaded) - set(raw))
        if extra:
            raise ConfigError(f"{p}: unknown table(s) {extra}; expected [model], [train], [data]")
        for k in raw:
            raw[k].update(loaded.get(k, {}))
    for k, v in (overrides or {}).items():
        raw[k].update({kk: vv for kk, vv in v.items() if vv is not None})
    return RunConfig(
        model=_build(ModelConfig, raw["model"], "model"),
        train=_build(TrainConfig, raw["train"], "train"),
        data=_build(DataConfig, raw["data"], "data"),
    )
