"""The quality benchmarks end to end on tiny synthetic data: accuracy (seeds, sweeps,
results schema), the accuracy–diversity frontier, the collapse measures, and the
equal-budget search's paired trials."""
from __future__ import annotations

import copy
import json
import shutil
import time

import numpy as np
import pytest
import torch

from benchmarks import accuracy, collapse, curves, frontier, search, users
from genattn.config import ModelConfig

TINY = ["model.max_len=8", "model.d_model=16", "model.pair_hidden=4", "model.diffusion_steps=10",
        "model.train_sample_steps=2", "train.epochs=2", "train.threads=1", "train.max_minutes=0",
        "data.synthetic_users=60", "data.synthetic_items=40"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    argv = ["--data", "synthetic", "--configs", "softmax,vae,diffusion", "--seeds", "0,1", "--sample-seeds", "0",
            "--steps", "1,2", "--runs", str(d / "runs"), "--out", str(d / "acc")]
    for s in TINY:
        argv += ["--set", s]
    res = accuracy.main(argv)
    return d, res


def test_accuracy_results_schema(bench):
    d, res = bench
    on_disk = json.loads((d / "acc.json").read_text())
    assert on_disk["data"] == "synthetic" and "/" not in on_disk["data"]
    for kind in ("softmax", "vae", "diffusion"):
        e = on_disk[f"{kind}_full"]  # keys name the configuration and the training loss
        assert e["config"]["attention"] == kind and e["config"]["train"]["loss"] == "full"
        assert not e["config"]["file"].startswith("/")  # results never name this machine's paths
        assert len(e["per_seed_test"]) == 2 and e["seeds"] == [0, 1]
        for m in ("ndcg@10", "hr@10", "coverage@10", "ild@10"):
            assert set(e["test"][m]) == {"mean", "std"} and 0.0 <= e["test"][m]["mean"] <= 1.0
        assert e["config"]["model"]["max_len"] == 8  # the --set overrides reached training
        # How each seed's training went: parallel to `seeds`.
        assert e["best_epochs"] == [p["best_epoch"] for p in e["per_seed"].values()]
        assert e["epochs_run"] == [2, 2] and e["stopped_by"] == ["epochs", "epochs"]
        assert all(1 <= b <= 2 for b in e["best_epochs"])
        for curve in e["valid_curves"]:
            assert curve["epoch"] == [1, 2] and len(curve["ndcg@10"]) == len(curve["coverage@10"]) == 2
        assert all(p["commit"] for p in e["per_seed"].values())
        # Each run's provenance sits beside its folder (a checkpoint save replaces the folder whole).
        for s in (0, 1):
            started = json.loads((d / "runs" / "synthetic" / f"{kind}_full_seed{s}.origin.json").read_text())
            assert started["commit"] == e["per_seed"][str(s)]["commit"] and "benchmarks.accuracy" in started["command"]
    assert "stochastic" not in on_disk["softmax_full"]
    assert {"samples_1", "samples_4", "samples_16"} <= set(on_disk["vae_full"]["sweeps_test"])
    assert {"steps_1", "steps_2", "steps_2_stochastic"} <= set(on_disk["diffusion_full"]["sweeps_test"])
    md = (d / "acc.md").read_text()
    assert "| diffusion_full | diffusion |" in md and "python -m benchmarks.accuracy" in md
    # both protocols side by side: one row per configuration, BCE not run here
    assert accuracy.protocols(on_disk)["softmax"] == {"full": "softmax_full"}
    row = next(x for x in md.splitlines() if x.startswith("| softmax | softmax |"))
    assert row.endswith("| – | – |") and f"{on_disk['softmax_full']['test']['ndcg@10']['mean']:.4f}" in row
    # The verdict row is derived from the entries, selected on validation.
    v = {row["loss"]: row for row in accuracy.verdict(on_disk)}["full"]
    gen = max(("vae_full", "diffusion_full"), key=lambda k: on_disk[k]["valid"]["ndcg@10"]["mean"])
    assert v["generative"] == gen and v["softmax"] == "softmax_full"
    assert v["beats"] == (v["gain"] > v["margin"])
    # An entry trained under another budget (here a longer patience) is never compared with this one.
    doctored = copy.deepcopy(on_disk)
    longer = copy.deepcopy(on_disk["vae_full"])
    longer["config"]["train"]["patience"] = 60
    longer["valid"]["ndcg@10"]["mean"] = 1.0
    doctored["vae_p60_full"] = longer
    assert [(row["generative"], row["patience"]) for row in accuracy.verdict(doctored) if row["loss"] == "full"] == \
        [(v["generative"], v["patience"])]
    # Another sequence length competes where a search selected max_len, and is its own protocol
    # where none did (ML-1M: the max_len-50 proxy never stands in for the anchors' 200).
    shorter = copy.deepcopy(on_disk)
    shorter["vae_l7_full"] = copy.deepcopy(on_disk["vae_full"])
    shorter["vae_l7_full"]["config"]["model"]["max_len"] += 7
    shorter["vae_l7_full"]["valid"]["ndcg@10"]["mean"] = 1.0
    assert [row["generative"] for row in accuracy.verdict(shorter) if row["loss"] == "full"] == ["vae_l7_full"]
    by_length = [(row["generative"], row["max_len"]) for row in accuracy.verdict(shorter, max_len_selected=False)
                 if row["loss"] == "full"]
    assert by_length == [(v["generative"], on_disk["vae_full"]["config"]["model"]["max_len"])]
    assert not accuracy.searched_max_len("synthetic") and accuracy.searched_max_len("ml-100k")
    # Under bce, a generative entry whose CE terms drew their own negatives (recorded before
    # share_negatives) learned from twice softmax's negatives: it never enters the verdict.
    bce = {}
    for k in ("softmax_full", "vae_full"):
        e = copy.deepcopy(on_disk[k])
        e["config"]["train"]["loss"] = "bce"
        bce[k.replace("full", "bce")] = e
    old_draws = copy.deepcopy(bce["vae_bce"])
    del old_draws["config"]["train"]["share_negatives"]
    old_draws["valid"]["ndcg@10"]["mean"] = 1.0
    bce["vae_old_bce"] = old_draws
    assert accuracy.per_term_negatives(old_draws) and not accuracy.per_term_negatives(bce["vae_bce"])
    assert not accuracy.per_term_negatives(bce["softmax_bce"] | {"config": {**bce["softmax_bce"]["config"],
                                                                           "train": {"loss": "bce"}}})
    assert [row["generative"] for row in accuracy.verdict(bce)] == ["vae_bce"]
    # A budget where one kind has only a one-seed entry still gets its row, from the one-seed
    # entries, with no seed-std margin: a gain that is not positive is a "no" whatever the std,
    # a positive one stays undecided (only the users' interval can be read there).
    one = copy.deepcopy(on_disk)
    one["softmax_full"]["seeds"] = [0]
    one["softmax_full"]["per_seed"] = {"0": one["softmax_full"]["per_seed"]["0"]}
    for softmax_test, beats, shown in ((1.0, False, "| no (one seed) |"), (0.0, None, "| undecided (one seed: no std) |")):
        one["softmax_full"]["test"]["ndcg@10"]["mean"] = softmax_test
        [row] = [row for row in accuracy.verdict(one) if row["loss"] == "full"]
        assert row["softmax"] == "softmax_full" and row["margin"] is None and row["beats"] is beats
        assert row["gain"] == one[row["generative"]]["test"]["ndcg@10"]["mean"] - softmax_test
        assert shown in accuracy.render(one)
    assert "(one seed" not in accuracy.render(on_disk)  # two seeds each: decided by the margin


def test_curves_pair_recorded_seeds_and_a_run_still_training(bench, tmp_path):
    d, _ = bench
    res = json.loads((d / "acc.json").read_text())
    # a run still training: only its checkpointed state holds the history so far
    live = tmp_path / "runs" / "synthetic" / "vae_live_full_seed1"  # not the fixture's: later tests park its runs
    live.mkdir(parents=True)
    hist = [{"epoch": 1, "ce": 3.5, "ce_posterior": 3.1, "bound": 0.4, "valid_ndcg@10": 0.25, "valid_coverage@10": 0.5}]
    (live / "state.json").write_text(json.dumps({"progress": {"history": hist, "best_epoch": 1}}))
    out = tmp_path / "curves"
    doc = curves.main(["--data", "synthetic", "--seed", "1", "--results", str(d / "acc"), "--runs", str(tmp_path / "runs"),
                       "--out", str(out), "--curves", "softmax=softmax_full,vae=vae_full,live=vae_live_full"])
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["curves"] == json.loads(json.dumps(doc["curves"])) and out.with_suffix(".png").stat().st_size > 0
    sm, vae, live_c = (on_disk["curves"][k] for k in ("softmax", "vae", "live"))
    rec = res["vae_full"]["per_seed"]["1"]
    assert [h["epoch"] for h in vae["history"]] == rec["valid_curve"]["epoch"] == [1, 2]
    assert [h["valid_ndcg@10"] for h in vae["history"]] == rec["valid_curve"]["ndcg@10"]
    assert [h["ce_posterior"] for h in vae["history"]] == rec["train_curve"]["ce_posterior"]
    assert "bound" not in sm["history"][0] and sm["finished"] and vae["best_epoch"] == rec["best_epoch"]
    assert live_c["history"] == hist and not live_c["finished"]
    # paired by epoch over the epochs both reached: every pair, the later curve minus the earlier
    gaps = on_disk["paired_gaps"]
    assert set(gaps) == {"vae − softmax", "live − softmax", "live − vae"}
    diffs = [v["valid_ndcg@10"] - s["valid_ndcg@10"] for v, s in zip(vae["history"], sm["history"])]
    assert gaps["vae − softmax"]["mean"] == pytest.approx(sum(diffs) / 2) and gaps["vae − softmax"]["n"] == 2
    assert gaps["vae − softmax"]["last"]["ahead"] == sum(x > 0 for x in diffs)
    assert gaps["live − vae"]["epochs"] == [1, 1] and gaps["live − vae"]["mean"] == pytest.approx(0.25 - vae["history"][0]["valid_ndcg@10"])
    assert on_disk["curves"]["softmax"]["trained_by"]["command"] == res["softmax_full"]["per_seed"]["1"]["command"]
    md = out.with_suffix(".md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| 2 |"))  # epoch 2: the live run never got there
    gap = vae["history"][1]["valid_ndcg@10"] - sm["history"][1]["valid_ndcg@10"]
    assert row.split(" | ")[-2:] == [f"{gap:+.4f}", "– |"] and "1, unfinished" in md
    with pytest.raises(curves.CurveError, match="no_such_entry"):
        curves.main(["--data", "synthetic", "--results", str(d / "acc"), "--runs", str(d / "runs"),
                     "--out", str(tmp_path / "x"), "--curves", "a=softmax_full,b=no_such_entry"])
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(curves.CurveError, match="distinct names"):
        curves.parse_curves("a=softmax_full,a=vae_full")


def test_seed_records_keep_per_user_ranks_and_the_verdict_bounds_the_gain_over_users(bench, tmp_path):
    # before the test below replaces softmax_full; on a copy, so that the tests after see the fixture's files
    shutil.copytree(bench[0], tmp_path / "q")
    d = tmp_path / "q"
    on_disk = json.loads((d / "acc.json").read_text())
    for kind in ("softmax", "vae", "diffusion"):
        for rec in on_disk[f"{kind}_full"]["per_seed"].values():
            for split in ("valid", "test"):  # one character per user, reproducing the recorded metric
                code = rec[accuracy.RANKS][split]
                assert len(code) == on_disk["n_users"]
                assert users.ndcg(code).mean() == pytest.approx(rec[split]["ndcg@10"], abs=1e-9)
            # the objective's terms per epoch: the served path's CE, and the generative kinds' other two
            curve = rec[accuracy.TRAIN_CURVE]
            assert curve["epoch"] == [1, 2] and all(np.isfinite(curve["ce"]))
            assert set(curve) == ({"epoch", "ce"} if kind == "softmax" else {"epoch", "ce", "ce_posterior", "bound"})
    v = {row["loss"]: row for row in accuracy.verdict(on_disk)}["full"]
    ci = v["users_ci"]
    # all seeds shared: the mean per-user difference is the difference of the entries' means
    assert ci["seeds"] == 2 and ci["users"] == on_disk["n_users"]
    assert ci["diff"] == pytest.approx(v["gain"], abs=1e-9) and ci["lo"] <= ci["diff"] <= ci["hi"]
    assert "gain's 95% interval over users" in (d / "acc.md").read_text()
    # A record without ranks or curve (recorded before they were kept) gets them back from its run
    # folder, the same values; nothing else in the file changes.
    stripped = copy.deepcopy(on_disk)
    del stripped["vae_full"]["per_seed"]["1"][accuracy.RANKS]
    del stripped["vae_full"]["per_seed"]["1"][accuracy.TRAIN_CURVE]
    del stripped["softmax_full"]["per_seed"]["0"][accuracy.TRAIN_CURVE]
    (d / "acc.json").write_text(json.dumps(stripped))
    assert accuracy.over_users(stripped["softmax_full"], stripped["vae_full"])["seeds"] == 1
    argv = ["--data", "synthetic", "--runs", str(d / "runs"), "--out", str(d / "acc"), "--backfill"]
    for s in TINY:
        argv += ["--set", s]
    assert accuracy.main(argv) == on_disk
    assert json.loads((d / "acc.json").read_text()) == on_disk


def test_one_more_seed_merges_into_its_entry_and_another_config_replaces_it(bench):
    d, _ = bench
    before = json.loads((d / "acc.json").read_text())["softmax_full"]
    argv = ["--data", "synthetic", "--configs", "softmax", "--seeds", "2", "--runs", str(d / "runs"),
            "--out", str(d / "acc")]
    for s in TINY:
        argv += ["--set", s]
    accuracy.main(argv)
    after = json.loads((d / "acc.json").read_text())["softmax_full"]
    assert after["seeds"] == [0, 1, 2] and after["per_seed_test"][:2] == before["per_seed_test"]
    # A reused run (e.g. a search trial copied in as a seed) keeps the commit that trained it.
    origin = d / "runs" / "synthetic" / "softmax_full_seed2.origin.json"
    origin.write_text(json.dumps({"command": "python -m benchmarks.search", "commit": "abc1234", "machine": "m"}))
    accuracy.main(argv)
    kept = json.loads((d / "acc.json").read_text())["softmax_full"]["per_seed"]["2"]
    assert kept["commit"] == "abc1234" and kept["evaluated_by"]["commit"] != "abc1234"
    # ...and the results page names the machine each seed was trained on (e.g. a lent GPU).
    row = next(x for x in (d / "acc.md").read_text().splitlines() if x.startswith("| softmax_full | full |"))
    assert "m" in [m.strip() for m in row.split("|")[-3].split(";")]
    assert len(after["valid_curves"]) == 3
    with pytest.raises(SystemExit, match="another configuration"):  # never reuse a run of other settings
        accuracy.main(argv + ["--set", "train.lr=0.004"])
    other = [a if a != str(d / "runs") else str(d / "runs2") for a in argv]
    accuracy.main(other + ["--set", "train.lr=0.004"])  # a different configuration: not a seed of the old one
    replaced = json.loads((d / "acc.json").read_text())["softmax_full"]
    assert replaced["seeds"] == [2] and replaced["config"]["train"]["lr"] == 0.004
    # A fresh checkout (no run folders): a seed recorded with this configuration is not retrained...
    fresh = [a if a != str(d / "runs") else str(d / "runs3") for a in argv]
    accuracy.main(fresh + ["--set", "train.lr=0.004"])
    assert not (d / "runs3" / "synthetic" / "softmax_full_seed2").exists()
    assert json.loads((d / "acc.json").read_text())["softmax_full"] == replaced
    # ...but one recorded with another configuration is (and replaces the entry).
    accuracy.main(fresh + ["--set", "train.lr=0.005"])
    assert (d / "runs3" / "synthetic" / "softmax_full_seed2" / "metrics.json").is_file()
    assert json.loads((d / "acc.json").read_text())["softmax_full"]["config"]["train"]["lr"] == 0.005


def test_frontier_points_and_verdict(bench):
    d, _ = bench
    runs = d / "runs" / "synthetic"
    both = lambda kind: f"{runs / f'{kind}_full_seed0'},{runs / f'{kind}_full_seed1'}"  # noqa: E731
    r = frontier.main(["--softmax", both("softmax"), "--vae", both("vae"), "--diffusion", str(runs / "diffusion_full_seed0"),
                       "--sample-seeds", "0", "--out", str(d / "fr")])
    pts = json.loads((d / "fr.json").read_text())["points"]
    assert (d / "fr.png").stat().st_size > 0 and (d / "fr.md").is_file()
    methods = {(p["family"], p["method"]) for p in pts}
    assert {("softmax", "plain"), ("softmax", "gumbel"), ("softmax", "mmr"), ("softmax", "mc_dropout"),
            ("vae", "temperature"), ("vae", "samples"), ("diffusion", "eta"), ("vae", "interleave"),
            ("vae", "vote"), ("diffusion", "interleave")} <= methods
    for p in pts:
        assert set(p) >= {"method", "family", "knob", "value", "ndcg@10", "coverage@10", "ild@10", "cc@10", "seeds",
                          "ndcg@10_std"}
        assert p["seeds"] == (1 if p["family"] == "diffusion" else 2)
        if p["seeds"] == 1:
            assert p["ndcg@10_std"] == 0.0
    # A point is the mean over the training seeds: the plain softmax point is the mean of the two
    # checkpoints' own test NDCG@10 (their final evaluation), its std the std between them.
    tests = [json.loads((runs / f"softmax_full_seed{s}" / "metrics.json").read_text())["test"]["ndcg@10"]
             for s in (0, 1)]
    plain = next(p for p in pts if p["family"] == "softmax" and p["method"] == "plain")
    assert plain["ndcg@10"] == pytest.approx(np.mean(tests)) and plain["ndcg@10_std"] == pytest.approx(np.std(tests, ddof=1))
    # The verdict is computed from the points, not asserted: re-derive it.
    s = r["summary"]
    floor = 0.99 * max(p["ndcg@10"] for p in pts if p["family"] == "softmax")
    assert s["ndcg_floor"] == pytest.approx(floor)
    gen_ok = [p["coverage@10"] for p in pts if p["family"] != "softmax" and p["ndcg@10"] >= floor]
    soft_ok = [p["coverage@10"] for p in pts if p["family"] == "softmax" and p["ndcg@10"] >= floor]
    assert s["generative_wins"] == bool(gen_ok and max(gen_ok) > max(soft_ok))
    # Temperature 0.1 vs 2: more prior noise changes the lists (coverage moves).
    vt = {p["value"]: p for p in pts if p["family"] == "vae" and p["method"] == "temperature"}
    assert vt[0.1]["coverage@10"] != vt[2.0]["coverage@10"] or vt[0.1]["ndcg@10"] != vt[2.0]["ndcg@10"]


def test_collapse_measures(bench):
    d, _ = bench
    runs = d / "runs" / "synthetic"
    r = collapse.main([str(runs / "diffusion_full_seed0"), str(runs / "vae_full_seed0"), "--repeats", "2",
                       "--out", str(d / "col")])
    dif, vae = r["checkpoints"]
    for e in (dif, vae):
        assert 0.0 <= e["top10_overlap"] <= 1.0 and e["attention_tv"] >= 0.0
        assert e["posterior_std"] > 0
    assert set(dif["denoiser_sensitivity_by_t"]) == {"1", "5", "10"}
    assert "denoiser_sensitivity_by_t" not in vae
    assert set(dif["ndcg@10_by_steps_stochastic"]) == {"1", "2", "4", "8"}


def test_search_trials_are_paired_and_selected_on_validation(tmp_path):
    a, b = search.draw_trials(4, seed=3, kind="vae"), search.draw_trials(4, seed=3, kind="vae")
    assert a == b and a[0] == {"model": {}, "train": {}} and a[1] != a[0]
    soft, diff = search.draw_trials(4, seed=3), search.draw_trials(4, seed=3, kind="diffusion")
    for t in range(1, 4):  # paired: the shared knobs are the same draw for every kind
        shared = {f"{tab}.{k}" for tab, k in search.SPACE}
        flat = lambda trial: {f"{tab}.{k}": v for tab, kv in trial.items() for k, v in kv.items()}  # noqa: E731
        assert {k: v for k, v in flat(a[t]).items() if k in shared} == flat(soft[t])
        assert {k: v for k, v in flat(diff[t]).items() if k in shared} == flat(soft[t])
        assert "model.beta_warmup_steps" in flat(a[t]) and "model.train_sample_steps" in flat(diff[t])
    out = tmp_path / "s"
    argv = ["--data", "synthetic", "--kinds", "softmax,vae", "--trials", "2", "--runs", str(tmp_path / "runs"),
            "--out", str(out)] + [x for s in TINY for x in ("--set", s)]
    r = search.main(argv + ["--worker", "0/2"])  # tasks 0 and 2: trial 0 of softmax, trial 1 of softmax
    assert sorted((row["kind"], row["trial"]) for row in r["trials"]) == [("softmax", 0), ("softmax", 1)]
    r = search.main(argv + ["--worker", "1/2"])
    assert len(r["trials"]) == 4 and r["trial_counts"] == {"softmax": 2, "vae": 2}
    for row in r["trials"]:
        assert set(row) >= {"kind", "loss", "params", "valid_ndcg@10", "best_epoch", "seconds"}
        assert row["budget"] == {"patience": 20, "epochs": 2, "max_minutes": 0}  # one budget, recorded
        assert row["params"] == search.draw_trials(2, seed=0, kind=row["kind"])[row["trial"]]
    for kind in ("softmax", "vae"):
        rows = [row for row in r["trials"] if row["kind"] == kind]
        assert r["selected"][kind] == max(rows, key=lambda row: row["valid_ndcg@10"])["params"]
        text = (tmp_path / "s_selected" / f"{kind}.toml").read_text()
        assert f'attention = "{kind}"' in text
    # Resumable: asking again trains nothing (the finished trials are read from the results file).
    before = (out.with_suffix(".json")).read_text()
    t0 = time.perf_counter()
    search.main(argv)
    assert time.perf_counter() - t0 < 5 and len(json.loads(out.with_suffix(".json").read_text())["trials"]) == 4
    assert json.loads(before)["selected"] == json.loads(out.with_suffix(".json").read_text())["selected"]
    # Two paired seeds per trial: each trial is retrained on seed 1 too (seed 0's run is reused) and
    # ranked on the mean; its row replaces the one-seed row, so one row per trial is ranked.
    r2 = search.main(argv + ["--kinds", "softmax", "--seeds-per-trial", "2"])
    rows = [row for row in r2["trials"] if row["kind"] == "softmax"]
    assert len(rows) == 2 and all(row["seeds"] == [0, 1] for row in rows)
    for row in rows:
        assert row["valid_ndcg@10"] == pytest.approx(np.mean(row["valid_per_seed"]))
        one = next(x for x in json.loads(before)["trials"] if x["kind"] == "softmax" and x["trial"] == row["trial"])
        assert row["valid_per_seed"][0] == one["valid_ndcg@10"]  # seed 0: the same run
        second = tmp_path / "runs" / "synthetic" / search.run_name("softmax", "full", row["trial"], 1)
        assert (second / "metrics.json").is_file()
    assert r2["selected"]["softmax"] == max(rows, key=lambda row: row["valid_ndcg@10"])["params"]
    assert "| 0, 1 |" in out.with_name("s.md").read_text()


def test_serving_ratio_interleaves_every_kind(tmp_path):
    from benchmarks import serving_ratio

    r = serving_ratio.main(["--iters", "20", "--threads", "1", "--cache", str(tmp_path / "cache"),
                            "--out", str(tmp_path / "ratio"), "--recency-bias-off-too"])
    # Each kind whose default has the recency bias is also timed without it, the same model otherwise.
    biased = [k for k in ("softmax", "vae", "diffusion") if ModelConfig(attention=k).recency_bias]
    assert biased and set(r["kinds"]) == {"softmax", "vae", "diffusion", *(f"{k}, no recency bias" for k in biased)}
    for k in biased:
        assert r["kinds"][k]["model"]["recency_bias"] is True
        assert r["kinds"][f"{k}, no recency bias"]["model"] == {**r["kinds"][k]["model"], "recency_bias": False}
        served = {json.loads(m.read_text())["model"]["recency_bias"]
                  for m in (tmp_path / "cache").glob(f"{k}-*/**/manifest.json")}
        assert served == {True, False}
    assert r["kinds"]["softmax"]["ratio_to_softmax_p50"] == pytest.approx(1.0)
    for v in r["kinds"].values():
        assert 0 < v["p50_ms"] <= v["p90_ms"] <= v["p99_ms"]
    assert set(r["target"]["met"]) == {"vae", "diffusion"}
    assert "p50 / softmax p50" in (tmp_path / "ratio.md").read_text()
    # Each kind is served in its own default shape (the VAE's selected backbone is one block at max_len 50).
    assert r["kinds"]["vae"]["model"] == {"max_len": 50, "d_model": 32, "n_heads": 2, "n_blocks": 1,
                                         "generative_blocks": "last", "recency_bias": True}
    assert r["kinds"]["softmax"]["model"]["generative_blocks"] is None
    assert r["kinds"]["softmax"]["model"]["max_len"] == 100


def test_auroc_and_tail_hits_against_brute_force():
    from benchmarks.confidence import auroc, tail_hits

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, ya in zip(s, y) for b, yb in zip(s, y) if ya and not yb]
    assert auroc(s, y) == pytest.approx(np.mean(pairs))
    assert auroc(np.arange(10.0), np.arange(10) >= 5) == 1.0
    top, bottom = tail_hits(np.arange(10.0), np.arange(10) >= 8)
    assert (top, bottom) == (1.0, 0.0)


def test_confidence_benchmark_rows_and_selection(bench, tmp_path):
    from benchmarks import confidence

    d, _ = bench
    runs = d / "runs" / "synthetic"
    r = confidence.main(["--softmax", f"{runs / 'softmax_full_seed0'},{runs / 'softmax_full_seed1'}",
                         "--vae", f"{runs / 'vae_full_seed0'},{runs / 'vae_full_seed1'}",
                         "--samples", "4", "--out", str(tmp_path / "conf")])
    fams = {(row["family"], row["signal"]) for row in r["rows"]}
    assert {("softmax", "max_prob"), ("softmax", "neg_entropy"), ("vae", "agreement"), ("vae", "neg_score_std")} <= fams
    assert ("softmax", "agreement") not in fams
    for row in r["rows"]:
        assert set(row) >= {"family", "signal", "auroc", "auroc_std", "hit@10_top20", "hit@10_bottom20"}
        assert row["seeds"] == 2
    for fam in ("softmax", "vae"):
        mine = [row for row in r["rows"] if row["family"] == fam]
        assert max(mine, key=lambda row: row["valid_auroc"])["selected_on_valid"]
    v = r["verdict"]
    assert v["beats"] == (v["gain"] > v["margin"]) and v["generative"].split()[1] in ("agreement", "neg_score_std")
    assert "AUROC" in (tmp_path / "conf.md").read_text()


def test_diagnose_variants_depart_from_the_defaults_they_were_run_on(tmp_path):
    """The step-3 diagnostics: a fixed number of epochs, the last block's attention swapped on the
    checkpoint, and the variants defined against the kinds' earlier defaults (the VAE drew its
    prior in training then), so `vae_no_train_noise` still differs from `vae`."""
    from benchmarks import diagnose
    from genattn.checkpoint import read_config

    argv = ["--variants", "vae,vae_no_train_noise", "--epochs", "2", "--data", "synthetic",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "diag")]
    for s in TINY:
        if not s.startswith("train.epochs"):
            argv += ["--set", s]
    diagnose.main(argv)
    v = json.loads((tmp_path / "diag.json").read_text())["variants"]
    assert set(v) == {"vae", "vae_no_train_noise"}
    for name, r in v.items():
        assert r["config"] == "benchmarks/configs/earlier_defaults/vae.toml" and r["epochs_run"] == 2
        assert r["valid_curve"]["epoch"] == [1, 2]
        assert set(r["ablation_valid"]) == {"as_trained", "softmax", "uniform", "newest", "recency"}
        # each row of the map sums to one, so the mean weights by recency of a head do too
        prof = r["last_block_attention_valid"]
        assert 0 < sum(prof["weight_by_recency"]) <= 1 + 1e-9 and 0 <= prof["entropy_vs_uniform"] <= 1 + 1e-9
        noise = read_config(tmp_path / "runs" / "synthetic" / name).model.train_prior_noise
        assert noise is (name == "vae")
    # A run trained elsewhere is ablated as it is (no training), under the name given, and its
    # entry says who trained it; a folder holding no finished training is refused by name.
    run_dir = tmp_path / "runs" / "synthetic" / "vae"
    (tmp_path / "runs" / "synthetic" / "vae.origin.json").write_text(
        json.dumps({"command": "python -m benchmarks.accuracy --seeds 0", "commit": "abc1234", "machine": "m"}))
    before = (run_dir / "metrics.json").read_text()
    diagnose.main(["--data", "synthetic", "--checkpoints", f"elsewhere={run_dir}", "--out", str(tmp_path / "diag")])
    assert (run_dir / "metrics.json").read_text() == before
    e = json.loads((tmp_path / "diag.json").read_text())["variants"]["elsewhere"]
    assert e["trained_by"]["commit"] == "abc1234" and e["ablation_valid"] == v["vae"]["ablation_valid"]
    assert "trained by `python -m benchmarks.accuracy --seeds 0`" in (tmp_path / "diag.md").read_text()
    for bad, says in ((f"x={tmp_path}", "no finished training"), ("x", "is not NAME=RUN_DIR")):
        with pytest.raises(SystemExit, match=says):
            diagnose.main(["--data", "synthetic", "--checkpoints", bad, "--out", str(tmp_path / "diag")])
    with pytest.raises(SystemExit, match="trained on 'synthetic'"):
        diagnose.main(["--data", "ml-100k", "--checkpoints", f"x={run_dir}", "--out", str(tmp_path / "diag")])


def test_recency_ablation_is_a_fixed_map_by_position_and_stats_measure_the_scoring_query():
    """A kernel all on recency 0 is the newest-only map; the statistics hook reads the scoring
    query's row (the last) and its per-head kernel sums to one."""
    from benchmarks import diagnose
    from genattn.models.attention import AttnInputs

    L, H = 6, 2
    i = torch.arange(L)
    rel = (i[:, None] - i[None, :]).clamp(0, L - 1)
    allowed = (i[None, :] <= i[:, None])[None, None].expand(3, 1, L, L).clone()
    allowed[0, :, :, :2] = False  # a user whose history is shorter (left padding)
    allowed[0, :, :, :2] |= torch.eye(L, dtype=torch.bool)[:, :2]
    x = AttnInputs(s=torch.randn(3, H, L, L), allowed=allowed, valid_q=torch.ones(3, 1, L, 1, dtype=torch.bool),
                   rel=rel)
    one_hot = torch.zeros(H, L)
    one_hot[:, 0] = 1.0
    newest, _ = diagnose.FixedWeights("newest")(x)
    assert torch.allclose(diagnose.FixedWeights("recency", one_hot)(x)[0], newest)
    stats = diagnose.AttentionStats(L)
    a, aux = diagnose.FixedWeights("softmax")(x)
    stats(None, (x,), (a, aux))
    k = stats.kernel()
    assert k.shape == (H, L) and torch.allclose(k.sum(-1), torch.ones(H, dtype=k.dtype))
    want = torch.zeros(H, L, dtype=torch.float64)
    for r in range(L):  # recency r of the last query is key L - 1 - r
        want[:, r] = a[:, :, -1, L - 1 - r].double().mean(0)
    assert torch.allclose(k, want)
    assert stats.summary()["largest_weight"] == pytest.approx(float(a[:, :, -1].amax(-1).mean()))
    # the map by recency, applied, renormalises over each user's own history
    back = diagnose.FixedWeights("recency", k.float())(x)[0]
    assert torch.allclose(back.sum(-1)[allowed.any(-1).expand(3, H, L)], torch.ones(1))


def test_train_precision_times_both_precisions_and_records_provenance(tmp_path):
    from benchmarks import train_precision

    r = train_precision.main(["--kinds", "softmax", "--repeats", "1", "--batch", "4", "--items", "30",
                              "--out", str(tmp_path / "tp")])
    k = r["kinds"]["softmax"]
    assert k["fp32_ms"] > 0 and k["bf16_ms"] > 0 and k["speedup"] == pytest.approx(k["fp32_ms"] / k["bf16_ms"])
    on_disk = json.loads((tmp_path / "tp.json").read_text())
    assert on_disk["configs"] == "benchmarks/results/search_ml100k_selected" and on_disk["commit"]
    assert set(on_disk["cpu_bf16_flags"]) <= set(train_precision.BF16_FLAGS)
    assert "| softmax | 100 |" in (tmp_path / "tp.md").read_text()


def test_records_from_before_share_negatives_stay_seeds_of_their_entry_where_it_changes_nothing():
    """A record without the field drew per term: the same training for softmax or full CE (one
    term, or no draw), another for a generative kind under a sampled loss."""
    def cfg(kind, loss, **train):
        return {"model": {"attention": kind, "max_len": 8}, "train": {"loss": loss, "seed": 0, **train}}

    for kind, loss in (("softmax", "bce"), ("softmax", "sampled"), ("vae", "full"), ("diffusion", "full")):
        assert accuracy.same_config(cfg(kind, loss), cfg(kind, loss, share_negatives=True))
    for kind, loss in (("vae", "bce"), ("diffusion", "sampled")):
        assert not accuracy.same_config(cfg(kind, loss), cfg(kind, loss, share_negatives=True))
        assert accuracy.same_config(cfg(kind, loss), cfg(kind, loss, share_negatives=False))
    assert accuracy.same_config(cfg("vae", "bce", seed=3, share_negatives=True), cfg("vae", "bce", share_negatives=True))


def test_paired_bootstrap_over_users():
    rng = np.random.default_rng(1)
    a = [users.encode(rng.integers(0, 30, size=500)) for _ in range(2)]
    assert users.paired_ci(a, a) | {"se": 0.0} == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "se": 0.0, "users": 500,
                                                     "seeds": 2, "level": 0.95, "resamples": 4000}
    # b puts every user's target one place higher than a (a hit at 0 stays at 0)
    b = [users.encode(np.maximum(np.array([10 if c == "-" else int(c) for c in x]) - 1, 0)) for x in a]
    ci = users.paired_ci(a, b)
    assert ci["diff"] > 0 and ci["lo"] > 0
    # the interval's half width is about 1.96 standard errors of the per-user mean difference
    x = np.mean([users.ndcg(q) - users.ndcg(p) for p, q in zip(a, b)], axis=0)
    se = x.std() / np.sqrt(len(x))
    assert ci["se"] == pytest.approx(se, rel=0.1) and (ci["hi"] - ci["lo"]) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert users.encode(np.array([0, 9, 10, 250])) == "09--"
    with pytest.raises(ValueError, match="not the same users"):
        users.paired_ci(a, [b[0][:-1], b[1]])
    with pytest.raises(ValueError, match="same number"):
        users.paired_ci(a, b[:1])
    with pytest.raises(ValueError, match="rank string"):
        users.ndcg("0x1")
