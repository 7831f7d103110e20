"""The documented per-kind defaults are what the code gives when nothing else is said:
`genattn train --attention K`, `ModelConfig(attention=K)` and genattn/configs/K.toml all
build the same configuration; explicit values (a file, an override, a saved checkpoint
config) always win, and a checkpoint of an older version loads exactly as it was saved."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

import genattn.training
from genattn.checkpoint import load_checkpoint, read_config, save_checkpoint
from genattn.cli import main
from genattn.config import (ATTENTION_KINDS, KIND_DEFAULTS, ConfigError, ModelConfig, RunConfig, TrainConfig,
                            load_run_config, parse_overrides)
from genattn.models import SASRec

CONFIGS = Path(__file__).resolve().parents[1] / "genattn" / "configs"

# Written out by hand (docs/model.md, "Per-kind defaults"), not read from the code, so that a
# change of a default in code fails here. They are the equal-budget search's selection on ML-100K
# validation (benchmarks/results/search_ml100k_selected/).
SHARED = dict(n_items=0, n_heads=2, logstd_min=-5.0, logstd_max=2.0,
              diffusion_steps=100, schedule="cosine", train_sample_steps=2, time_buckets=0)
# Softmax uses none of the generative fields; it keeps the values its earlier runs recorded.
FIRST_OBJECTIVE = dict(generative_blocks="all", pair_hidden=16, beta_warmup_steps=1000, posterior_gain=0.0,
                       prior_ce="through", train_prior_noise=False, posterior_ce="all")
DOCUMENTED_MODEL = {
    "softmax": {**SHARED, "attention": "softmax", "max_len": 100, "d_model": 32, "n_blocks": 3, "dropout": 0.2,
                "beta": 0.1, "gamma": 1.0, "recency_bias": True, **FIRST_OBJECTIVE},
    "vae": {**SHARED, "attention": "vae", "max_len": 50, "d_model": 32, "n_blocks": 1, "dropout": 0.5,
            "generative_blocks": "last", "pair_hidden": 16, "beta": 0.1, "beta_warmup_steps": 500, "gamma": 2.0,
            "posterior_gain": 2.0, "prior_ce": "backbone", "train_prior_noise": False, "recency_bias": True,
            "posterior_ce": "generative"},
    "diffusion": {**SHARED, "attention": "diffusion", "max_len": 100, "d_model": 32, "n_blocks": 3, "dropout": 0.2,
                  "generative_blocks": "last", "pair_hidden": 16, "beta": 0.3, "beta_warmup_steps": 2000,
                  "gamma": 1.0, "posterior_gain": 2.0, "prior_ce": "backbone", "train_prior_noise": False,
                  "recency_bias": False, "posterior_ce": "all"},
}
BUDGET = dict(epochs=200, batch_size=128, patience=20, max_minutes=0.0, loss="full")  # one budget for every kind
DOCUMENTED_TRAIN = {
    "softmax": {**BUDGET, "lr": 2e-3, "weight_decay": 0.01},
    "vae": {**BUDGET, "lr": 1e-3, "weight_decay": 0.01},
    "diffusion": {**BUDGET, "lr": 2e-3, "weight_decay": 0.01},
}
# What the backbone and training defaulted to before they became per kind (old checkpoints).
OLD_BACKBONE = dict(max_len=50, d_model=64, n_blocks=2, dropout=0.2, beta=0.1, gamma=1.0)

# A config.json model table written by a version whose dataclass defaults were the first
# objective: every field explicit, as save_checkpoint writes it.
OLD_SAVED_VAE = {**SHARED, **OLD_BACKBONE, "n_items": 40, "attention": "vae", "recency_bias": False,
                 **FIRST_OBJECTIVE}


def cli_run_config(*args) -> RunConfig:
    """The RunConfig `genattn train ARGS` builds, through the command itself (training stubbed)."""
    seen = []

    def fake_train(run, out, resume=False, progress=True):
        seen.append(run)
        return SimpleNamespace(metrics={"valid": {}, "test": {}}, checkpoint=SimpleNamespace(metrics={}))

    mp = pytest.MonkeyPatch()
    mp.setattr(genattn.training, "train", fake_train)
    try:
        res = CliRunner().invoke(main, ["train", *map(str, args)])
    finally:
        mp.undo()
    assert res.exit_code == 0, res.output
    assert len(seen) == 1
    return seen[0]


def test_cli_set_reaches_any_field_over_the_config_file_and_agrees_with_named_options(tmp_path):
    cfg = tmp_path / "vae.toml"
    cfg.write_text('[model]\nattention = "vae"\nrecency_bias = false\nmax_len = 200\n[train]\nlr = 0.001\n')
    run = cli_run_config("-c", cfg, "-o", tmp_path / "ck", "--no-progress", "--set", "model.posterior_ce=generative",
                         "--set", "model.recency_bias=true", "--set", "train.lr=2e-3", "--set", "model.max_len=50",
                         "--max-len", 50)
    assert run.model.posterior_ce == "generative" and run.model.recency_bias is True and run.model.max_len == 50
    assert run.train.lr == 0.002 and run.model.attention == "vae"  # the file's, where --set says nothing
    # the same as the benchmarks' --set over the same file
    assert run == load_run_config(cfg, {"model": {"posterior_ce": "generative", "recency_bias": True, "max_len": 50},
                                        "train": {"lr": 2e-3}})
    assert parse_overrides(["data.source=ml-1m", "train.patience=60"]) == {
        "model": {}, "train": {"patience": 60}, "data": {"source": "ml-1m"}}
    for bad in ("model.max_len", "max_len=50", "optim.lr=1", "model.=3", "model.max_len="):
        with pytest.raises(ConfigError, match="TABLE.KEY=VALUE"):
            parse_overrides([bad])


@pytest.mark.parametrize("args, needle", [
    (["--set", "model.no_such_field=1"], "unknown key(s) in [model]: no_such_field"),
    (["--set", "model.max_len"], "TABLE.KEY=VALUE"),
    (["--set", "model.max_len=100", "--max-len", "50"], "model.max_len is given twice"),
])
def test_cli_set_errors_are_one_clear_line_and_train_nothing(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["train", "--data", "synthetic", "-o", str(tmp_path / "ck"), *args])
    assert res.exit_code != 0 and "Traceback" not in res.output and needle in res.output, res.output
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_cli_attention_gives_the_documented_defaults(tmp_path, kind):
    run = cli_run_config("--attention", kind, "-o", tmp_path / "ck", "--no-progress")
    assert asdict(run.model) == DOCUMENTED_MODEL[kind]
    train = asdict(run.train)
    assert {k: train[k] for k in DOCUMENTED_TRAIN[kind]} == DOCUMENTED_TRAIN[kind]
    assert run.data.source == "auto"
    assert run == load_run_config(None, {"model": {"attention": kind}})


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_python_api_gives_the_documented_defaults(kind):
    cfg = ModelConfig(attention=kind)
    assert asdict(cfg) == DOCUMENTED_MODEL[kind]
    assert None not in asdict(cfg).values()
    assert asdict(load_run_config(None, {"model": {"attention": kind}}).model) == DOCUMENTED_MODEL[kind]
    assert RunConfig(model=ModelConfig(attention=kind)) == load_run_config(None, {"model": {"attention": kind}})


def test_default_kind_and_train_budget():
    assert asdict(ModelConfig()) == DOCUMENTED_MODEL["softmax"]
    tc = asdict(RunConfig().train)
    assert {k: tc[k] for k in DOCUMENTED_TRAIN["softmax"]} == DOCUMENTED_TRAIN["softmax"]
    # Alone, a TrainConfig leaves the per-kind fields open; a RunConfig fills them from its model's kind.
    assert TrainConfig().lr is None and TrainConfig().weight_decay is None


def test_train_defaults_follow_the_model_kind_and_explicit_values_win():
    shared = TrainConfig(patience=7)
    vae = RunConfig(model=ModelConfig(attention="vae"), train=shared)
    soft = RunConfig(model=ModelConfig(attention="softmax"), train=shared)
    assert (vae.train.lr, soft.train.lr) == (1e-3, 2e-3)
    assert shared.lr is None  # resolved on a copy: one TrainConfig can serve runs of several kinds
    assert vae.train.patience == soft.train.patience == 7
    explicit = RunConfig(model=ModelConfig(attention="vae"), train=TrainConfig(lr=5e-4, weight_decay=0.0))
    assert (explicit.train.lr, explicit.train.weight_decay) == (5e-4, 0.0)
    run = load_run_config(None, {"model": {"attention": "diffusion"}, "train": {"lr": 3e-4}})
    assert (run.train.lr, run.train.weight_decay) == (3e-4, 0.01)
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(weight_decay=-1.0)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_kind_toml_equals_the_in_code_defaults(kind):
    path = CONFIGS / f"{kind}.toml"
    assert load_run_config(path) == load_run_config(None, {"model": {"attention": kind}})
    assert load_run_config(path) == RunConfig(model=ModelConfig(attention=kind))
    text = path.read_text()
    assert text.startswith(f"# Example {kind} config")
    model = tomllib.loads(text)["model"]
    if kind != "softmax":  # the file spells out every per-kind default it documents
        assert set(KIND_DEFAULTS[kind]) <= set(model)


def test_kind_defaults_cover_exactly_the_none_fields():
    none_fields = {f.name for f in fields(ModelConfig) if f.default is None}
    for kind in ATTENTION_KINDS:
        assert set(KIND_DEFAULTS[kind]) == none_fields


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
def test_explicit_values_win(tmp_path, kind):
    for name, value in FIRST_OBJECTIVE.items():  # each one alone, the others stay at the kind's default
        assert asdict(ModelConfig(attention=kind, **{name: value})) == {**DOCUMENTED_MODEL[kind], name: value}
        run = load_run_config(None, {"model": {"attention": kind, name: value}})
        assert asdict(run.model) == {**DOCUMENTED_MODEL[kind], name: value}
    # A file's value wins over the kind's default; the command line's kind and flags over the file.
    f = tmp_path / "cfg.toml"
    f.write_text('[model]\nattention = "softmax"\nposterior_gain = 0.5\nprior_ce = "through"\n'
                 '[train]\npatience = 7\n')
    run = cli_run_config("-c", f, "--attention", kind, "--max-len", 20, "-o", tmp_path / "ck")
    assert asdict(run.model) == {**DOCUMENTED_MODEL[kind], "max_len": 20, "posterior_gain": 0.5, "prior_ce": "through"}
    assert run.train.patience == 7
    # An override of None means "not given".
    assert load_run_config(None, {"model": {"attention": kind, "posterior_gain": None}}).model.posterior_gain == 2.0


def test_old_saved_config_round_trips_unchanged(tmp_path):
    cfg = ModelConfig(**OLD_SAVED_VAE)
    assert asdict(cfg) == OLD_SAVED_VAE
    # Through a checkpoint: written, read back, the model rebuilt with the weights it was saved with.
    cfg = ModelConfig(**{**OLD_SAVED_VAE, **TINY, "n_items": 40, **FIRST_OBJECTIVE})
    model = SASRec(cfg)
    assert sum(b.attn.weights.kind == "vae" for b in model.blocks) == cfg.n_blocks  # every block generative
    save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), item_ids=list(range(40)),
                    popularity=np.zeros(41, dtype=np.int64), n_users=10)
    ck = load_checkpoint(tmp_path / "ck")
    assert asdict(ck.run.model) == asdict(cfg)
    saved = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert saved["model"] == asdict(cfg)


def test_checkpoint_written_before_a_field_existed_keeps_the_old_value(tmp_path):
    """posterior_gain, prior_ce and train_prior_noise came after the first checkpoints; such a
    config.json lacks them and was trained with the then defaults, not today's per-kind ones
    (a gain of 1.0 would even add a parameter the weights do not have)."""
    cfg = ModelConfig(**{**TINY, "n_items": 40, "attention": "vae", **FIRST_OBJECTIVE})
    save_checkpoint(tmp_path / "ck", SASRec(cfg), RunConfig(model=cfg), item_ids=list(range(40)),
                    popularity=np.zeros(41, dtype=np.int64), n_users=10)
    f = tmp_path / "ck" / "config.json"
    raw = json.loads(f.read_text())
    for name in ("posterior_gain", "prior_ce", "train_prior_noise", "posterior_ce"):
        del raw["model"][name]
    # lr and weight_decay always were in config.json; were one missing, it was the then default
    # (1e-3, 0.0), not today's per-kind one (the resumed optimiser would change otherwise).
    assert raw["train"]["weight_decay"] == 0.01
    del raw["train"]["weight_decay"], raw["train"]["lr"]
    f.write_text(json.dumps(raw))
    assert read_config(tmp_path / "ck").model == cfg
    assert (read_config(tmp_path / "ck").train.lr, read_config(tmp_path / "ck").train.weight_decay) == (1e-3, 0.0)
    assert load_checkpoint(tmp_path / "ck").run.model == cfg


def test_softmax_checkpoint_from_before_the_recency_bias_loads_without_it(tmp_path):
    """Softmax now defaults to a recency bias; a checkpoint whose config.json predates the field
    was trained without one and must load as it was (its weights have no bias to load)."""
    cfg = ModelConfig(**{**TINY, "n_items": 40, "attention": "softmax", "recency_bias": False})
    save_checkpoint(tmp_path / "ck", SASRec(cfg), RunConfig(model=cfg), item_ids=list(range(40)),
                    popularity=np.zeros(41, dtype=np.int64), n_users=10)
    f = tmp_path / "ck" / "config.json"
    raw = json.loads(f.read_text())
    del raw["model"]["recency_bias"]
    f.write_text(json.dumps(raw))
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.run.model == cfg and ModelConfig(**{**TINY, "attention": "softmax"}).recency_bias
    assert not any("recency_bias" in name for name, _ in ck.model.named_parameters())


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
def test_default_generative_model_generates_in_the_last_block_only(kind):
    model = SASRec(ModelConfig(**{**TINY, "attention": kind, "pair_hidden": None}))
    assert [b.attn.weights.kind for b in model.blocks] == ["softmax", kind]
    assert model.cfg.pair_hidden == 16
    if kind == "vae":  # the posterior's skip path exists (posterior_gain 2.0)
        assert any(name.endswith(".gain") for name, _ in model.named_parameters())


def test_validating_a_config_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys; from genattn.config import load_run_config, TrainConfig; "
            "load_run_config(None, {'model': {'attention': 'vae'}, 'train': {'loss': 'bce'}}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Chosen on validation after the search, by paired runs that differ in this field alone:
# field -> (its value before the option existed, the alternative).
AFTER_SEARCH = {"recency_bias": (False, True), "posterior_ce": ("all", "generative")}
DATASETS = ("ml100k", "ml1m")


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_defaults_are_the_search_selection(kind):
    """Defaults follow validation: each kind's defaults are the equal-budget search's pick on
    ML-100K validation (full CE), as written to its results, except the fields chosen after it
    (next test). A new selection fails this until the defaults (and docs/model.md's table) follow it."""
    chosen = load_run_config(RESULTS / "search_ml100k_selected" / f"{kind}.toml")
    default = load_run_config(None, {"model": {"attention": kind}})
    after = {name: getattr(default.model, name) for name in AFTER_SEARCH}
    assert dataclasses.replace(chosen.model, **after) == default.model and chosen.train == default.train


def paired_gains(data: str, kind: str, name: str) -> list[float]:
    """Validation NDCG@10 of the alternative minus the earlier value of the model field `name`,
    one mean over shared seeds per pair of full-CE result entries of `kind` in
    accuracy_<data>.json that differ in that field alone (by the benchmark's own `same_config`)."""
    from benchmarks.accuracy import same_config
    earlier, alternative = AFTER_SEARCH[name]
    results = json.loads((RESULTS / f"accuracy_{data}.json").read_text())
    entries = [v for v in results.values() if isinstance(v, dict) and "per_seed" in v
               and v["config"]["model"]["attention"] == kind and v["config"]["train"].get("loss") == "full"]

    def value(entry):  # absent in records older than the option: they trained with the earlier value
        return entry["config"]["model"].get(name, earlier)

    def without(entry):  # the entry's config with the field set aside
        return {**entry["config"], "model": {**entry["config"]["model"], name: earlier}}

    gains = []
    for off in (e for e in entries if value(e) == earlier):
        for on in (e for e in entries if value(e) == alternative and same_config(without(e), without(off))):
            seeds = sorted(set(off["per_seed"]) & set(on["per_seed"]))
            if seeds:
                gains.append(float(np.mean([on["per_seed"][s]["valid"]["ndcg@10"]
                                            - off["per_seed"][s]["valid"]["ndcg@10"] for s in seeds])))
    return gains


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_fields_chosen_after_the_search_follow_paired_validation(kind):
    """A field chosen after the search defaults to the value that won on validation (full CE, the
    defaults' loss) in paired runs differing in it alone, summed over both datasets' pairs (a gap
    ML-100K's 943 users cannot resolve weighs what it measures); with no such runs, to what the
    search trained."""
    searched = load_run_config(RESULTS / "search_ml100k_selected" / f"{kind}.toml").model
    default = ModelConfig(attention=kind)
    for name, (earlier, alternative) in AFTER_SEARCH.items():
        gains = {data: paired_gains(data, kind, name) for data in DATASETS}
        total = [g for found in gains.values() for g in found]
        expected = (alternative if sum(total) > 0 else earlier) if total else getattr(searched, name)
        assert getattr(default, name) == expected, (name, gains)

