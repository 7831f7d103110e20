"""The equal-budget search's bookkeeping: paired draws and selection over equal trial counts."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.search import SPACE, draw_trials, select  # noqa: E402


def test_shared_knobs_are_paired_across_kinds_and_trial_0_is_defaults():
    soft, vae, diff = (draw_trials(5, 3, k) for k in ("softmax", "vae", "diffusion"))
    assert soft[0] == vae[0] == diff[0] == {"model": {}, "train": {}}
    for t in range(1, 5):
        for table, key in SPACE:
            assert soft[t][table][key] == vae[t][table][key] == diff[t][table][key]
    assert "beta" in vae[1]["model"] and "beta" not in soft[1]["model"]
    assert "train_sample_steps" in diff[1]["model"] and "train_sample_steps" not in vae[1]["model"]
    assert draw_trials(5, 4, "vae") != vae  # another seed, other draws


def _row(kind: str, trial: int, valid: float, loss: str = "full") -> dict:
    return {"kind": kind, "loss": loss, "trial": trial, "valid_ndcg@10": valid,
            "params": {"model": {"dropout": 0.1 * (trial + 1)}, "train": {}},
            "budget": {"patience": 20, "epochs": 200, "max_minutes": 0.0}}


def test_selection_only_among_trials_every_kind_finished(tmp_path):
    # vae has an extra trial 2 (the search was cut mid-round): its better score must not count
    doc = {"trials": [_row("softmax", 0, 0.11), _row("softmax", 1, 0.12),
                      _row("vae", 0, 0.10), _row("vae", 1, 0.09), _row("vae", 2, 0.20)]}
    select(doc, tmp_path)
    assert doc["trial_counts"] == {"softmax": 2, "vae": 2}
    assert doc["selected"]["softmax"] == _row("softmax", 1, 0)["params"]
    assert doc["selected"]["vae"] == _row("vae", 0, 0)["params"]
    written = tomllib.loads((tmp_path / "vae.toml").read_text())
    assert written["model"]["dropout"] == 0.1 and written["train"]["patience"] == 20


def test_losses_are_selected_separately(tmp_path):
    doc = {"trials": [_row("softmax", 0, 0.11), _row("vae", 0, 0.10),
                      _row("softmax", 0, 0.08, "bce"), _row("softmax", 1, 0.09, "bce")]}
    select(doc, tmp_path)
    assert doc["trial_counts"] == {"softmax": 1, "softmax_bce": 2, "vae": 1}
    assert tomllib.loads((tmp_path / "softmax_bce.toml").read_text())["train"]["loss"] == "bce"


def test_park_and_unpark_carry_unfinished_trials(tmp_path):
    """--park copies only unfinished trials' checkpoints (and drops parked ones since finished);
    a trial without its own checkpoint resumes from the parked copy, never over a newer one."""
    import json

    from benchmarks.inflight import park, unpark

    runs, carried = tmp_path / "runs", tmp_path / "inflight"
    for name, test in (("vae_full_trial3", False), ("softmax_full_trial3", True), ("diffusion_full_trial3", False)):
        d = runs / name
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"progress": {"epoch": 7}}))
        (d / "metrics.json").write_text(json.dumps({"test": {}} if test else {"best_epoch": 5}))
    (carried / "vae_full_trial1").mkdir(parents=True)  # parked earlier, finished since
    parked = park(runs, carried, finished={"vae_full_trial1", "diffusion_full_trial3"}, pattern="*_trial*")
    assert parked == ["vae_full_trial3"]
    assert sorted(p.name for p in carried.iterdir()) == ["vae_full_trial3"]
    assert json.loads((carried / "vae_full_trial3" / "state.json").read_text())["progress"]["epoch"] == 7
    fresh = tmp_path / "fresh" / "vae_full_trial3"
    assert unpark(carried, fresh) and (fresh / "state.json").is_file()
    (fresh / "state.json").write_text(json.dumps({"progress": {"epoch": 9}}))
    assert not unpark(carried, fresh)  # its own, newer checkpoint wins
    assert json.loads((fresh / "state.json").read_text())["progress"]["epoch"] == 9
    assert not unpark(carried, tmp_path / "fresh" / "vae_full_trial4")  # nothing parked


def test_parked_runs_carry_their_origin_and_finished_ones_are_dropped(tmp_path):
    """benchmarks.accuracy's runs: the provenance file beside a run folder travels with it, and a
    parked copy whose run has since finished here is dropped at the next park."""
    import json

    from benchmarks.inflight import park, unpark

    runs, carried = tmp_path / "runs", tmp_path / "inflight"
    d = runs / "vae_full_seed1"
    d.mkdir(parents=True)
    (d / "state.json").write_text("{}")
    (runs / "vae_full_seed1.origin.json").write_text(json.dumps({"commit": "abc"}))
    assert park(runs, carried, set(), "*_seed*") == ["vae_full_seed1"]
    assert json.loads((carried / "vae_full_seed1.origin.json").read_text()) == {"commit": "abc"}
    fresh = tmp_path / "fresh"
    assert unpark(carried, fresh / "vae_full_seed1")
    assert json.loads((fresh / "vae_full_seed1.origin.json").read_text()) == {"commit": "abc"}
    (d / "metrics.json").write_text(json.dumps({"test": {}}))  # finished here since
    assert park(runs, carried, set(), "*_seed*") == []
    assert not carried.joinpath("vae_full_seed1").exists()
    assert not carried.joinpath("vae_full_seed1.origin.json").exists()


def test_paired_table_compares_each_trial_across_kinds():
    from benchmarks.search import paired

    doc = {"trials": [_row("softmax", 0, 0.11), _row("vae", 0, 0.12), _row("softmax", 1, 0.10),
                      _row("vae", 1, 0.07), _row("vae", 2, 0.30), _row("softmax", 0, 0.05, "bce")]}
    text = "\n".join(paired(doc))
    assert "| 0 | 0.1100 | 0.1200 |" in text and "| 2 |  | 0.3000 |" in text
    # trial 2 has no softmax run: the wins and the mean are over trials 0 and 1 only
    assert "vae against softmax: ahead in 1 of 2 paired trials, mean difference -0.0100." in text
    assert "Paired by trial (bce)" in text
