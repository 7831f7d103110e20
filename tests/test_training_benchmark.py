"""benchmarks/training.py --quick: cells measured in their own processes, results written."""
from __future__ import annotations

import json

import pytest

from benchmarks import training as bench

pytestmark = pytest.mark.slow


def test_quick_training_benchmark_writes_cells(tmp_path):
    # A tiny memory budget: every full-CE cell is refused with the size it would need,
    # the sampled cells still run (the point of the sampled loss).
    r = bench.main(["--quick", "--threads", "1", "--mem-budget-gb", "0.00001", "--out", str(tmp_path)])
    assert {"training_quick.json", "training_quick.md", "training_quick.png"} <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "training_quick.json").read_text())
    assert saved["cells"] == r["cells"] and len(r["cells"]) == 4
    for c in r["cells"]:
        assert {"device", "kind", "loss", "n_items", "batch", "events_per_s", "peak_mem_mb"} <= set(c)
        if c["loss"] == "full":
            assert c["events_per_s"] is None and "GiB" in c["skipped"]
        else:
            assert c["events_per_s"] > 0 and c["peak_mem_mb"] > 50 and c["steps"] >= 2
            assert c["negatives"] == 64
    assert "/work" not in (tmp_path / "training_quick.md").read_text()


def test_bad_kind_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--kinds", "softmax,lstm", "--out", str(tmp_path)])
