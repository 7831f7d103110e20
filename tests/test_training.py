"""Tests for genattn.training and genattn.checkpoint: windows, checkpoints, resume,
and small end-to-end training runs."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genattn.training as training
from conftest import randomize_generative, random_batch, tiny_config
from genattn.checkpoint import CheckpointError, load_checkpoint, load_train_state, save_checkpoint
from genattn.config import ModelConfig, RunConfig, TrainConfig
from genattn.data import (SequenceDataset, build_dataset, item_popularity, leave_one_out, pad_left,
                          synthetic_interactions)
from genattn.evaluation import eval_sets, evaluate, mask_seen
from genattn.metrics import rank_metrics, ranks_from_scores
from genattn.models import SASRec, Sampling
from genattn.models import default_sampling
from genattn.data import training_windows
from genattn.training import train

CKPT_FILES = {"model.safetensors", "config.json", "items.json", "metrics.json"}
STATE_FILES = {"state.safetensors", "state.json"}


def run_config(kind: str = "softmax", epochs: int = 2, **train_kw) -> RunConfig:
    # Every block generative with the first objective (explicit since the generative kinds'
    # defaults are the last block and the new objective).
    model = ModelConfig(max_len=8, d_model=16, n_heads=2, n_blocks=2, dropout=0.1, attention=kind,
                        pair_hidden=8, diffusion_steps=20, train_sample_steps=2, beta_warmup_steps=10,
                        generative_blocks="all", posterior_gain=0.0, prior_ce="through", train_prior_noise=False)
    tc = dict(epochs=epochs, batch_size=32, lr=5e-3, device="cpu", threads=1, patience=100, seed=0)
    return RunConfig(model=model, train=TrainConfig(**{**tc, **train_kw}))


def only_entry(parent: Path) -> list[str]:
    return sorted(os.listdir(parent))


# --------------------------------------------------------------------------- #
# training_windows
# --------------------------------------------------------------------------- #
def test_training_windows_hand_case():
    seqs = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([8, 9]), np.array([10]), np.array([11, 12, 13, 14, 15])]
    x, y = training_windows(seqs, max_len=3)
    assert x.dtype == np.int32 and y.dtype == np.int32  # half the memory of int64
    assert x.tolist() == [
        [4, 5, 6],    # newest window of the first user first
        [1, 2, 3],
        [0, 0, 8],    # left padded
        [12, 13, 14],  # (a one-item user has no pair: no window)
        [0, 0, 11],
    ]
    assert y.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 9], [13, 14, 15], [0, 0, 12]]


def test_training_windows_cover_every_pair_once():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(50)[: rng.integers(1, 40)] + 1 for _ in range(30)]
    for L in (1, 4, 8, 50):
        x, y = training_windows(seqs, L)
        assert x.shape == y.shape and x.shape[1] == L
        assert np.array_equal(x == 0, y == 0)  # inputs and targets pad together
        pairs = Counter(zip(x[x > 0].tolist(), y[y > 0].tolist()))
        expected = Counter((int(a), int(b)) for s in seqs for a, b in zip(s[:-1], s[1:]))
        assert pairs == expected
        assert all((row > 0).any() for row in x)  # no empty windows


# --------------------------------------------------------------------------- #
# Checkpoints written directly
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", ["softmax", "vae", "diffusion"])
def test_checkpoint_round_trip_gives_identical_scores(tmp_path, kind):
    torch.manual_seed(0)
    cfg = tiny_config(kind)
    model = randomize_generative(SASRec(cfg)).eval()
    run = RunConfig(model=cfg)
    item_ids = [f"item-{i}" for i in range(cfg.n_items)]
    pop = np.arange(cfg.n_items + 1)
    path = save_checkpoint(tmp_path / "ck", model, run, item_ids=item_ids, popularity=pop, n_users=7,
                           metrics={"test": {"ndcg@10": 0.5}})
    assert only_entry(tmp_path) == ["ck"]
    assert set(os.listdir(path)) == CKPT_FILES
    ck = load_checkpoint(path)
    assert not ck.model.training
    assert asdict(ck.run) == asdict(run)
    assert ck.item_ids == item_ids and ck.n_users == 7 and ck.metrics == {"test": {"ndcg@10": 0.5}}
    np.testing.assert_array_equal(ck.popularity, pop)
    seq = random_batch(5, cfg.max_len, cfg.n_items, seed=1)
    samp = Sampling(n_steps=4) if kind == "diffusion" else None
    assert torch.equal(ck.model.scores(seq, samp), model.scores(seq, samp))
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k


def test_failed_save_leaves_previous_checkpoint_untouched(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config("softmax")
    model = SASRec(cfg)
    kw = dict(item_ids=list(range(cfg.n_items)), popularity=np.zeros(cfg.n_items + 1, dtype=int), n_users=3)
    save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), metrics={"v": 1}, **kw)
    save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), metrics={"v": 2}, **kw)  # overwrite
    assert only_entry(tmp_path) == ["ck"]
    with torch.no_grad():
        model.item_emb.weight.add_(1.0)
    with pytest.raises(TypeError):  # metrics not JSON serialisable: fails mid-write
        save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), metrics={"v": object()}, **kw)
    assert only_entry(tmp_path) == ["ck"]  # no temporary folder left behind
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.metrics == {"v": 2}
    assert not torch.equal(ck.model.item_emb.weight, model.item_emb.weight)


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config("softmax")
    save_checkpoint(tmp_path / "ck", SASRec(cfg), RunConfig(model=cfg), item_ids=list(range(cfg.n_items)),
                    popularity=np.zeros(cfg.n_items + 1, dtype=int), n_users=3)
    return tmp_path / "ck"


def _edit_config(path: Path, fn) -> None:
    raw = json.loads((path / "config.json").read_text())
    fn(raw)
    (path / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: (p / "config.json").unlink(), id="no-config"),
    pytest.param(lambda p: (p / "model.safetensors").unlink(), id="no-weights"),
    pytest.param(lambda p: (p / "items.json").unlink(), id="no-items"),
    pytest.param(lambda p: _edit_config(p, lambda c: c.update(format="something-else")), id="wrong-format"),
    pytest.param(lambda p: _edit_config(p, lambda c: c.update(version=99)), id="wrong-version"),
    pytest.param(lambda p: _edit_config(p, lambda c: c["model"].update(n_blocks=3)), id="weights-missing-keys"),
    pytest.param(lambda p: [os.unlink(p / f) for f in os.listdir(p)], id="empty-folder"),
    pytest.param(lambda p: (p / "config.json").write_text("{not json"), id="config-not-json"),
    pytest.param(lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 64), id="weights-garbage"),
    pytest.param(lambda p: _edit_config(p, lambda c: c["model"].update(d_model=32)), id="weights-wrong-shape"),
    pytest.param(lambda p: _edit_config(p, lambda c: c["model"].update(colour="blue")), id="config-unknown-key"),
    pytest.param(lambda p: _edit_config(p, lambda c: c.pop("model")), id="config-no-model-table"),
])
def test_damaged_checkpoint_raises_checkpoint_error(saved_checkpoint, damage):
    damage(saved_checkpoint)
    with pytest.raises(CheckpointError):
        load_checkpoint(saved_checkpoint)


def test_missing_checkpoint_folder_and_missing_train_state(tmp_path, saved_checkpoint):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "nowhere")
    model = SASRec(tiny_config("softmax"))
    with pytest.raises(CheckpointError):  # saved without optimizer: nothing to resume
        load_train_state(saved_checkpoint, model, torch.optim.AdamW(model.parameters()))


def test_checkpoint_folder_is_not_owner_only(saved_checkpoint):
    """atomic_dir builds the folder with tempfile.mkdtemp (mode 0700); the published
    checkpoint must still be readable by a server running as another user."""
    mode = stat.S_IMODE(saved_checkpoint.stat().st_mode)
    assert mode & 0o055 == 0o055, oct(mode)


# --------------------------------------------------------------------------- #
# train(): checkpoint, resume
# --------------------------------------------------------------------------- #
def test_train_writes_a_loadable_checkpoint_with_its_metrics(tmp_path, tiny_dataset):
    run = run_config("softmax", epochs=2)
    res = train(run, tmp_path / "ck", progress=False, dataset=tiny_dataset)
    out = tmp_path / "ck"
    assert only_entry(tmp_path) == ["ck"]  # no temporary or '.old' leftovers
    assert set(os.listdir(out)) == CKPT_FILES | STATE_FILES
    ck = load_checkpoint(out)
    assert ck.item_ids == tiny_dataset.item_ids
    assert ck.run.model == dataclasses.replace(run.model, n_items=tiny_dataset.n_items)
    assert ck.run.train == run.train
    assert ck.n_users == tiny_dataset.n_users
    split = leave_one_out(tiny_dataset)
    np.testing.assert_array_equal(ck.popularity, item_popularity(split.train, tiny_dataset.n_items))
    assert [h["epoch"] for h in ck.metrics["history"]] == [1, 2]
    assert ck.metrics["test"] == res.metrics["test"] and ck.metrics["valid"] == res.metrics["valid"]
    # The returned metrics were computed in memory on the best weights: the loaded
    # weights reproduce them exactly, and the best epoch's validation score too.
    kw = dict(popularity=ck.popularity, n_users=ck.n_users, genres=tiny_dataset.item_genres)
    sets = eval_sets(split)
    for name in ("valid", "test"):
        assert evaluate(ck.model, sets[name], **kw) == res.metrics[name]
    assert res.metrics["valid"]["ndcg@10"] == ck.metrics["best_valid_ndcg@10"]
    seq = torch.from_numpy(pad_left(split.test_inputs[:10], run.model.max_len))
    assert torch.equal(ck.model.scores(seq), res.checkpoint.model.scores(seq))
    for v in res.metrics["test"].values():
        assert np.isfinite(v)


def test_resume_continues_the_epoch_count(tmp_path, tiny_dataset):
    out = tmp_path / "ck"
    first = train(run_config("softmax", epochs=2), out, progress=False, dataset=tiny_dataset)
    hist2 = first.checkpoint.metrics["history"]
    state2 = json.loads((out / "state.json").read_text())["progress"]
    assert state2["epoch"] == 2
    res = train(run_config("softmax", epochs=4), out, resume=True, progress=False, dataset=tiny_dataset)
    hist = res.checkpoint.metrics["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[:2] == hist2
    state4 = json.loads((out / "state.json").read_text())["progress"]
    assert state4["epoch"] == 4 and state4["step"] == 2 * state2["step"]
    assert only_entry(tmp_path) == ["ck"]
    for v in res.metrics["test"].values():
        assert np.isfinite(v)
    # Resuming a finished run is a no-op for the epoch count.
    again = train(run_config("softmax", epochs=4), out, resume=True, progress=False, dataset=tiny_dataset)
    assert [h["epoch"] for h in again.checkpoint.metrics["history"]] == [1, 2, 3, 4]


def test_resume_names_the_settings_that_differ_from_the_checkpoint(tmp_path, tiny_dataset, caplog):
    out = tmp_path / "ck"
    train(run_config("softmax", epochs=1), out, progress=False, dataset=tiny_dataset)
    with caplog.at_level(logging.WARNING, logger="genattn.training"):
        train(run_config("softmax", epochs=2), out, resume=True, progress=False, dataset=tiny_dataset)
    assert "differ from its checkpoint" not in caplog.text  # a longer budget is how a run is continued
    run = run_config("softmax", epochs=3, lr=2.5e-3)
    with caplog.at_level(logging.WARNING, logger="genattn.training"):
        train(run, out, resume=True, progress=False, dataset=tiny_dataset)
    warned = [r.getMessage() for r in caplog.records if "differ from its checkpoint" in r.getMessage()]
    assert len(warned) == 1 and "train.lr" in warned[0] and "train.epochs" not in warned[0]


def _unlearnable_valid_dataset() -> SequenceDataset:
    """Each validation target repeats an item of the user's training history, so it is
    masked as seen (score -inf) and validation NDCG@10 is 0 at every epoch: the best
    epoch is 1 whatever the run length, while the weights keep changing."""
    rng = np.random.default_rng(0)
    n = 30
    seqs = []
    for _ in range(40):
        start, k = int(rng.integers(1, n + 1)), int(rng.integers(5, 9))
        chain = [(start + j - 1) % n + 1 for j in range(k)]
        seqs.append(np.array(chain + [chain[0], int(rng.integers(1, n + 1))], dtype=np.int64))
    return SequenceDataset(item_ids=list(range(1, n + 1)), user_ids=list(range(len(seqs))), sequences=seqs)


def test_resume_state_holds_the_last_weights(tmp_path, monkeypatch):
    snapshots: list[dict[str, torch.Tensor]] = []
    real_save = training.save_checkpoint

    def recording_save(path, model, *args, **kw):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_save(path, model, *args, **kw)

    monkeypatch.setattr(training, "save_checkpoint", recording_save)
    out = tmp_path / "ck"
    res = train(run_config("softmax", epochs=3, lr=2e-2), out, progress=False, dataset=_unlearnable_valid_dataset())
    assert res.checkpoint.metrics["best_epoch"] == 1
    assert all(h["valid_ndcg@10"] == 0.0 for h in res.checkpoint.metrics["history"])
    assert len(snapshots) == 4  # one publish per epoch, then the final one
    last_epoch_weights = snapshots[2]
    state = load_file(out / "state.safetensors")
    for k, v in last_epoch_weights.items():
        assert torch.equal(state[f"model.{k}"], v), k


def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path, tiny_dataset):
    straight = train(run_config("softmax", epochs=4), tmp_path / "a", progress=False, dataset=tiny_dataset)
    train(run_config("softmax", epochs=2), tmp_path / "b", progress=False, dataset=tiny_dataset)
    resumed = train(run_config("softmax", epochs=4), tmp_path / "b", resume=True, progress=False,
                    dataset=tiny_dataset)
    h1, h2 = straight.checkpoint.metrics["history"], resumed.checkpoint.metrics["history"]
    assert h1[:2] == h2[:2]  # deterministic up to the interruption
    for a, b in zip(h1[2:], h2[2:]):
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-6), (h1, h2)


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #
@pytest.mark.slow
def test_model_beats_popularity_on_synthetic_data(tmp_path):
    ds = build_dataset(synthetic_interactions(n_users=300, n_items=100, n_topics=5, seq_len=(10, 30), seed=0))
    run = RunConfig(model=ModelConfig(max_len=20, d_model=32, n_heads=2, n_blocks=2, dropout=0.1),
                    train=TrainConfig(epochs=6, batch_size=64, lr=5e-3, device="cpu", threads=1, patience=100))
    res = train(run, tmp_path / "ck", progress=False, dataset=ds)
    # Popularity baseline, computed independently: score = training popularity, seen items masked.
    split = leave_one_out(ds)
    pop = item_popularity(split.train, ds.n_items).astype(np.float64)
    scores = np.tile(pop, (ds.n_users, 1))
    scores[:, 0] = -np.inf
    for u, seen in enumerate(split.test_inputs):
        scores[u, seen] = -np.inf
    baseline = rank_metrics(ranks_from_scores(scores, split.test_targets))
    model = res.metrics["test"]
    assert baseline["ndcg@10"] > 0.0
    print(f"test NDCG@10: model {model['ndcg@10']:.4f}, popularity {baseline['ndcg@10']:.4f}")
    assert model["ndcg@10"] >= 2 * baseline["ndcg@10"], (model, baseline)
    assert model["hr@10"] > baseline["hr@10"]
    # mask_seen agrees with the numpy masking above.
    t = torch.from_numpy(np.tile(pop, (ds.n_users, 1)))
    mask_seen(t, split.test_inputs)
    assert np.array_equal(np.isinf(t.numpy())[:, 1:], np.isinf(scores)[:, 1:])


@pytest.mark.parametrize("kind", ["vae", "diffusion"])
def test_generative_kinds_train_and_reload(tmp_path, tiny_dataset, kind):
    run = run_config(kind, epochs=1)
    res = train(run, tmp_path / "ck", progress=False, dataset=tiny_dataset)
    for name in ("valid", "test"):
        assert all(np.isfinite(v) for v in res.metrics[name].values())
    hist = res.checkpoint.metrics["history"]
    assert len(hist) == 1 and np.isfinite(hist[0]["ce"])
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.run.model.attention == kind
    samp = default_sampling(ck.run.model)
    assert samp is not None and samp.draws(kind) == 0  # validation selects on a deterministic mode
    assert ck.metrics["sampling"] == samp.__dict__
    split = leave_one_out(tiny_dataset)
    got = evaluate(ck.model, eval_sets(split)["test"], popularity=ck.popularity, n_users=ck.n_users,
                   genres=tiny_dataset.item_genres, sampling=samp)
    assert got == res.metrics["test"]


def test_default_sampling_per_kind():
    assert default_sampling(ModelConfig(attention="softmax")) is None
    assert default_sampling(ModelConfig(attention="vae")) == Sampling(mode="mean")
    assert default_sampling(ModelConfig(attention="diffusion", train_sample_steps=3)) == Sampling(n_steps=3)


def test_state_file_round_trips_optimizer(tmp_path):
    """save_checkpoint(optimizer=...) + load_train_state restore weights and AdamW moments."""
    torch.manual_seed(0)
    cfg = tiny_config("softmax")
    model = SASRec(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    full = random_batch(4, cfg.max_len + 1, cfg.n_items, seed=2)
    x, y = full[:, :-1].clone(), full[:, 1:].clone()
    y[x == 0] = 0
    for _ in range(2):
        opt.zero_grad()
        model(x, y)["loss"].backward()
        opt.step()
    save_checkpoint(tmp_path / "ck", model, RunConfig(model=cfg), item_ids=list(range(cfg.n_items)),
                    popularity=np.zeros(cfg.n_items + 1, dtype=int), n_users=1, optimizer=opt,
                    progress={"epoch": 5, "step": 10})
    torch.manual_seed(1)
    model2 = SASRec(cfg)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    progress = load_train_state(tmp_path / "ck", model2, opt2)
    assert progress == {"epoch": 5, "step": 10, "rng_states": {}}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    tuples = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in s2["param_groups"]]  # JSON turns AdamW's betas tuple into a list
    assert s1["param_groups"] == tuples
    for i, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][i][k])), (i, k)
    # One more identical step keeps both in lockstep.
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m.train()(x, y)["loss"].backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_metrics_record_why_and_when_a_run_stopped(tmp_path, tiny_dataset):
    res = train(run_config("softmax", epochs=3), tmp_path / "a", progress=False, dataset=tiny_dataset)
    m = res.checkpoint.metrics
    assert m["stopped_by"] == "epochs" and m["epochs_run"] == 3 and 1 <= m["best_epoch"] <= 3
    # The validation curve holds NDCG@10 and coverage@10 for every evaluated epoch.
    assert all(0 <= h["valid_coverage@10"] <= 1 and "valid_ndcg@10" in h for h in m["history"])
    clock = run_config("softmax", epochs=50)
    clock.train.max_minutes = 1e-9
    m = train(clock, tmp_path / "b", progress=False, dataset=tiny_dataset).checkpoint.metrics
    assert m["stopped_by"] == "wall_time" and m["epochs_run"] == 1
    # Resumed without the clock, the same run goes on and stops for its own reason.
    free = run_config("softmax", epochs=3)
    m = train(free, tmp_path / "b", resume=True, progress=False, dataset=tiny_dataset).checkpoint.metrics
    assert m["stopped_by"] == "epochs" and m["epochs_run"] == 3
    patient = run_config("softmax", epochs=200)
    patient.train.patience = 1
    m = train(patient, tmp_path / "c", progress=False, dataset=tiny_dataset).checkpoint.metrics
    assert m["stopped_by"] == "patience" and m["epochs_run"] < 200
    assert m["epochs_run"] == m["best_epoch"] + 1


def test_training_leaves_the_callers_config_as_given(tmp_path, tiny_dataset):
    run = run_config("softmax", epochs=1)
    before = dataclasses.asdict(run)
    res = train(run, tmp_path / "ck", progress=False, dataset=tiny_dataset)
    assert dataclasses.asdict(run) == before and run.model.n_items == 0
    assert res.checkpoint.run.model.n_items == tiny_dataset.n_items
