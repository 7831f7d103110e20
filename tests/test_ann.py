"""ANN bundles (`genattn export --ann`): exact top-k on a small catalog, seen items, tampering,
the recall refusal, the missing library, load-time search parameters and the benchmark's --quick."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_fixtures import K, MAX_LEN, bundle, bundle_root, checkpoint, rewrite_manifest  # noqa: F401 (fixture)

pytest.importorskip("faiss", reason="the ann extra (faiss-cpu) is not installed")

from genattn_export import ExportError, ExportOptions, export_bundle  # noqa: E402
from genattn_export.ann import AnnOptions, AnnRecallError  # noqa: E402
from genattn_runtime import BundleError, InputError, Recommender  # noqa: E402
from genattn_runtime.ann import AnnUnavailableError, top_k_excluding  # noqa: E402

pytestmark = pytest.mark.slow

_ann: dict[str, Path] = {}


def ann_bundle(root: Path, kind: str = "softmax", index: str = "hnsw", stochastic: bool = False) -> Path:
    """An ANN bundle of the runtime fixtures' checkpoint, exported once per process. The recall
    floor is 1.0: export then keeps the search wide enough to give exact scoring's lists, which
    the tests compare with (at the default floor it narrows the search to recall 0.95)."""
    key = f"{kind}-{index}-{stochastic}"
    if key not in _ann:
        out = root / f"ann-{key}"
        opts = ExportOptions(steps=2, k=K, verify_users=16, start="noise" if stochastic else "zeros",
                             ann=AnnOptions(kind=index, recall_users=100, min_recall=1.0))
        export_bundle(checkpoint(root, kind), out, opts)
        _ann[key] = out
    return _ann[key]


def _histories(ids: list, n: int, seed: int, max_len: int = 25) -> list[list]:
    rng = np.random.default_rng(seed)
    return [[ids[j] for j in rng.integers(0, len(ids), size=int(rng.integers(1, max_len + 1)))] for _ in range(n)]


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- same answers as exact scoring

@pytest.mark.parametrize("index", ["hnsw", "ivfpq", "flat-fp16"])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommendations_equal_exact_topk(bundle_root, index, exclude_seen):
    exact = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1)
    ann = Recommender.load(ann_bundle(bundle_root, index=index), backend="cpu", threads=1)
    m = ann.manifest.raw
    assert m["format_version"] == 3 and m["ann"]["kind"] == index
    assert m["ann"]["recall"]["recall_at_10"] == 1.0 and m["ann"]["recall"]["source"] == "real"
    assert [t["name"] for t in m["graph"]["outputs"]] == ["user_state"]
    assert ann.backend == "cpu+ann"
    hists = _histories(list(exact.items.item_ids), 40, seed=3)  # many longer than max_len 12
    for a, e in zip(ann.recommend(hists, k=10, exclude_seen=exclude_seen),
                    exact.recommend(hists, k=10, exclude_seen=exclude_seen)):
        if index == "flat-fp16":  # fp16 rounding may swap near-ties: the same scores rank by rank
            assert len(set(a.items) & set(e.items)) >= 8
            np.testing.assert_allclose(a.scores, e.scores, rtol=2e-3, atol=2e-3)
        else:
            assert a.items == e.items
            np.testing.assert_allclose(a.scores, e.scores, rtol=1e-4, atol=1e-5)
        assert (a.partial, a.truncated) == (e.partial, e.truncated)
    ia, sa = ann.recommend_indices(np.zeros((2, MAX_LEN), dtype=np.int64), k=5)
    ie, se = exact.recommend_indices(np.zeros((2, MAX_LEN), dtype=np.int64), k=5)
    assert np.allclose(sa, se, rtol=2e-3, atol=2e-3) and (index == "flat-fp16" or np.array_equal(ia, ie))


def test_seen_items_excluded(bundle_root):
    ann = Recommender.load(ann_bundle(bundle_root), backend="cpu", threads=1)
    ids = list(ann.items.item_ids)
    hists = _histories(ids, 30, seed=5, max_len=40)
    for h, r in zip(hists, ann.recommend(hists, k=K)):
        assert not set(h) & set(r.items)
        assert len(r.items) == len(set(r.items))
        assert r.partial == (len(r.items) < K)
    # 50 of the 60 items excluded in the search: 10 remain, all of them returned, best first
    state = ann._backend.states({"item_seq": np.zeros((1, MAX_LEN), dtype=np.int64)})
    items, scores = top_k_excluding(ann._backend.index, state, K, np.arange(1, 51)[None])
    assert sorted(items[0, :10].tolist()) == list(range(51, 61)) and (items[0, 10:] == 0).all()
    assert np.isneginf(scores[0, 10:]).all() and (np.diff(scores[0, :10]) <= 0).all()
    # a call that reads k slots searches for k (plus excluded), not the bundle's K; the rest is padding
    out = ann._backend.run({"item_seq": np.zeros((1, MAX_LEN), dtype=np.int64)}, need=3)
    items, scores = out["top_items"], out["top_scores"]
    assert items.shape == (1, K) and (items[0, :3] > 0).all() and (items[0, 3:] == 0).all()
    assert np.isneginf(scores[0, 3:]).all()
    # seen items older than the window (max_len) are excluded in the search too: an exact bundle drops
    # them from its K (3 of 20 left here), the ANN bundle returns every unseen item, best first
    exact = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1)
    a, e = ann.recommend(ids[:50], k=K), exact.recommend(ids[:50], k=K)
    assert sorted(a.items) == sorted(ids[50:]) and a.partial and a.items[:len(e.items)] == e.items


def test_over_fetch_grows_until_enough():
    """An index that returns fewer usable neighbours than asked is searched again with more."""
    n = 100
    vecs = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)

    class Lossy:  # returns only every other neighbour (the rest as missing), like a narrow search
        n_items, calls = n, []

        def search(self, states, m, exclude=None):
            self.calls.append(m)
            s = states @ vecs.T
            if exclude is not None and len(exclude):
                s[:, exclude - 1] = -np.inf
            order = np.argsort(-s, axis=1)[:, :m]
            items, scores = order + 1, np.take_along_axis(s, order, 1).astype(np.float32)
            items[:, 1::2], scores[:, 1::2] = 0, -np.inf
            items[np.isneginf(scores)] = 0
            return scores, items

    idx = Lossy()
    q = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    exclude = np.zeros((2, 4), dtype=np.int64)
    exclude[0, :2] = np.argsort(-(q[0] @ vecs.T))[:2] + 1  # the row's two best items were seen
    items, scores = top_k_excluding(idx, q, 5, exclude)
    assert idx.calls[0] == 5 + 2 and len(idx.calls) > 1
    assert (items > 0).all() and np.isfinite(scores).all()
    assert not set(items[0].tolist()) & set(exclude[0].tolist())
    assert (np.diff(scores, axis=1) <= 0).all()


def _previous_top_k_excluding(index, states, k, exclude):
    """The search as it was: k + every excluded item in one search, filtered afterwards (doubling
    for short rows). The reference the margin-first search must equal on an exact index."""
    B = len(states)
    out_items, out_scores = np.zeros((B, k), dtype=np.int64), np.full((B, k), -np.inf, dtype=np.float32)
    excl = [frozenset(r[r > 0].tolist()) for r in exclude]
    fetch, todo = k + max(len(e) for e in excl), np.arange(B)
    while len(todo):
        scores, items = index.search(states[todo], fetch)
        short = []
        for r, s, it in zip(todo, scores, items):
            keep = [(i, v) for i, v in zip(it.tolist(), s.tolist()) if i > 0 and i not in excl[r]][:k]
            if len(keep) < k and fetch < index.n_items:
                short.append(r)
                continue
            if keep:
                out_items[r, :len(keep)], out_scores[r, :len(keep)] = [i for i, _ in keep], [v for _, v in keep]
        todo, fetch = np.asarray(short, dtype=np.int64), min(2 * fetch, index.n_items)
    return out_items, out_scores


def _flat_index(n: int, d: int, seed: int):
    import faiss

    from genattn_runtime.ann import AnnIndex

    vecs = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    flat = faiss.IndexFlatIP(d)
    flat.add(vecs)
    return AnnIndex(index=flat, kind="flat-fp16", n_items=n, dim=d, params={}), vecs


def test_margin_first_search_equals_the_previous_one_on_an_exact_index():
    """Rows with many seen items, the best-scoring ones among them (so most rows come back short and
    are searched again with the seen items filtered in the index): the same items as before."""
    from genattn_runtime.ann import SEEN_MARGIN

    index, vecs = _flat_index(3000, 16, seed=0)
    rng = np.random.default_rng(1)
    states = rng.standard_normal((60, 16)).astype(np.float32)
    exclude = np.zeros((60, 400), dtype=np.int64)
    for r in range(60):
        n_seen = [0, 3, 40, 150, 400][r % 5]
        best = np.argsort(-(states[r] @ vecs.T))[: n_seen // 2] + 1  # half of them among the row's best
        rest = rng.choice(3000, n_seen - len(best), replace=False) + 1
        exclude[r, :n_seen] = np.concatenate([best, rest])
        exclude[r, n_seen // 3: n_seen // 3 + 2] = 0  # padding between the ids is ignored
    calls = []
    search = index.search
    index.search = lambda st, n, exclude=None: calls.append((len(st), n, exclude is not None)) or search(st, n, exclude)
    for k in (1, 10, 25):
        calls.clear()
        got_items, got_scores = top_k_excluding(index, states, k, exclude)
        new_calls = list(calls)
        ref_items, ref_scores = _previous_top_k_excluding(index, states, k, exclude)
        np.testing.assert_array_equal(got_items, ref_items)
        np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
        assert (got_items > 0).all()  # every row gets k items
        for r in range(60):
            assert not set(got_items[r].tolist()) & set(exclude[r].tolist())
        # one batched search for k + the margin, not k + 400; the retries one row each, for k
        assert new_calls[0] == (60, k + SEEN_MARGIN, False)
        assert all(c == (1, k, True) for c in new_calls[1:]) and 0 < len(new_calls) - 1 < 60


def test_seen_items_older_than_the_window_go_to_the_search(bundle_root):
    """An ANN bundle's search takes every seen item (not only the window's), and micro-batched calls
    whose exclusions differ in width run together with the same answers as alone."""
    ann = Recommender.load(ann_bundle(bundle_root), backend="cpu", threads=1)
    exact = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", threads=1)
    ids = list(ann.items.item_ids)
    long, short = ids[:45], ids[50:53]
    p = ann.prepare(long, k=5)
    assert p.exclude.shape == (1, 45) and not p.rows[0].post_exclude  # 12 in the window + 33 older
    assert sorted(x for x in p.exclude[0].tolist() if x) == sorted(range(1, 46))
    preps = [ann.prepare([long, short], k=5), ann.prepare(short, k=5), ann.prepare(ids[:20], k=5)]
    together = ann.run_prepared(preps)
    alone = [ann.run_prepared([q])[0] for q in preps]
    assert together == alone
    assert [r.items for r in together[0]] == [r.items for r in exact.recommend([long, short], k=5)]


def test_plain_id_encoding_equals_the_general_path(monkeypatch):
    """All-int / all-str histories take one C-level map (ints through an int-keyed dict): the same
    indices and unknown ids as the per-item path, on a catalog of ints, integer-like and other strings."""
    import random

    from genattn_runtime.bundle import ItemTable
    from genattn_runtime.recommender import Recommender as R

    ids = [5, 60_000_000, "007", "-3", "--5", "-", "12", "0", "-0", "\u0663", "1_000"] + [f"s{i}" for i in range(20)]
    rec = R.__new__(R)
    rec.items = ItemTable(item_ids=ids, popularity=[0] * (len(ids) + 1), index={str(x): i + 1 for i, x in enumerate(ids)})
    rec._lut = None  # not every id is an int: no lookup table
    ints = [5, 60_000_000, 7, -3, 12, 0, 3, -5, 10**30]
    strs = [str(x) for x in ids] + ["5", "ghost", "7", "-0", "+5", " 12"]
    rng = random.Random(0)
    hists = [[rng.choice(pool) for _ in range(rng.randint(0, 30))] for pool in (ints, strs, ints + strs) for _ in range(300)]
    fast = [rec._encode(h, "history") for h in hists]
    monkeypatch.setattr(R, "_encode_plain", lambda self, hist: None)
    assert fast == [rec._encode(h, "history") for h in hists]
    assert fast[0] != ([], []) and any(u for _, u in fast)


def test_tuning_widens_the_search_to_the_floor(bundle_root, tmp_path):
    """Start parameters that miss the floor: export widens nprobe / k_factor until recall@10 reaches
    it, serves with the chosen ones and records the search in the manifest."""
    out = tmp_path / "tuned"
    opts = ExportOptions(k=K, verify_users=0, ann=AnnOptions(kind="ivfpq", nprobe=1, k_factor=1.0, nlist=8,
                                                             recall_users=100, min_recall=0.95))
    m = export_bundle(checkpoint(bundle_root, "softmax"), out, opts)
    a = m["ann"]
    t = a["tuning"]
    assert t["start"] == {"nprobe": 1, "k_factor": 1.0} and t["trials"][0]["recall_at_10"] < 0.95
    assert t["chosen"] == {"nprobe": a["params"]["nprobe"], "k_factor": a["params"]["k_factor"]} != t["start"]
    assert a["recall"]["recall_at_10"] >= 0.95 == a["recall"]["min_recall"]
    assert a["recall"]["recall_at_10"] == t["trials"][[(x["nprobe"], x["k_factor"]) for x in t["trials"]].index(
        (t["chosen"]["nprobe"], t["chosen"]["k_factor"]))]["recall_at_10"]
    assert 0 <= t["seconds"] <= t["budget_seconds"] + 60
    saved = json.loads((out / "manifest.json").read_text())["ann"]
    assert saved["tuning"] == t and saved["params"] == a["params"]
    rec = Recommender.load(out, backend="cpu", threads=1)
    assert rec.metadata()["ann"]["search"]["nprobe"] == a["params"]["nprobe"]
    # defaults above the floor: narrowed while it holds; each halving of the chosen setting misses
    # the floor or is no faster
    wide = export_bundle(checkpoint(bundle_root, "softmax"), tmp_path / "wide", ExportOptions(
        k=K, verify_users=0, ann=AnnOptions(kind="ivfpq", nlist=8, recall_users=100)))["ann"]
    ok = wide["tuning"]
    assert ok["trials"][0]["recall_at_10"] >= 0.95 and wide["recall"]["recall_at_10"] >= 0.95
    assert ok["chosen"]["nprobe"] <= 8 and ok["chosen"]["k_factor"] <= ok["start"]["k_factor"]
    final = next(t for t in ok["trials"] if (t["nprobe"], t["k_factor"]) == tuple(ok["chosen"].values()))
    for t in ok["trials"]:
        if (t["nprobe"], t["k_factor"]) in ((ok["chosen"]["nprobe"] // 2, ok["chosen"]["k_factor"]),
                                            (ok["chosen"]["nprobe"], ok["chosen"]["k_factor"] / 2)):
            assert t["recall_at_10"] < 0.95 or t["search_ms_per_user"] >= final["search_ms_per_user"]
    # no budget: refused as before, nothing written
    with pytest.raises(AnnRecallError, match="below --ann-min-recall"):
        export_bundle(checkpoint(bundle_root, "softmax"), tmp_path / "nobudget", ExportOptions(
            k=K, verify_users=0, ann=AnnOptions(kind="ivfpq", nprobe=1, k_factor=1.0, nlist=8, recall_users=100,
                                                tune_seconds=0.0)))
    assert not (tmp_path / "nobudget").exists()


def test_tune_search_on_a_synthetic_catalog():
    """hnsw doubles efSearch; ivfpq takes the faster of the settings that reach the floor."""
    import faiss

    from genattn_export.ann import AnnOptions, build_index, exact_top, tune_search
    from genattn_runtime.ann import AnnIndex

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((4000, 16)).astype(np.float32)
    states = rng.standard_normal((200, 16)).astype(np.float32)
    truth = exact_top(states, vecs, 10)
    faiss.omp_set_num_threads(1)
    for kind, start in (("hnsw", dict(m=4, ef_construction=16, ef_search=1)),
                        ("ivfpq", dict(nlist=64, nprobe=1, k_factor=1.0, pq_m=4))):
        opts = AnnOptions(kind=kind, threads=1, **start)
        index, params = build_index(vecs, opts)
        searcher = AnnIndex(index=index, kind=kind, n_items=len(vecs), dim=16, params={})
        chosen, recall, record = tune_search(searcher, params, states, truth, 0.9, budget_s=120)
        assert recall >= 0.9 and record["trials"][0]["recall_at_10"] < 0.9 and record["trials"][-1]
        key = "ef_search" if kind == "hnsw" else "nprobe"
        assert chosen[key] >= params[key] and searcher.params[key] == chosen[key]
        assert record["chosen"] == {k: chosen[k] for k in record["start"]}
        assert len({tuple(sorted(t.items())) for t in record["trials"]}) == len(record["trials"])  # each once
    # Started wider than needed: narrowed to a cheaper setting that still reaches the floor.
    for kind, start in (("hnsw", dict(m=8, ef_construction=64, ef_search=1024)),
                        ("ivfpq", dict(nlist=64, nprobe=64, k_factor=32.0, pq_m=4))):
        index, params = build_index(vecs, AnnOptions(kind=kind, threads=1, **start))
        searcher = AnnIndex(index=index, kind=kind, n_items=len(vecs), dim=16, params={})
        knobs = ("ef_search",) if kind == "hnsw" else ("nprobe", "k_factor")
        kept = tune_search(searcher, params, states, truth, 0.9, budget_s=120)  # nothing may narrow: kept
        assert kept[0] == params and len(kept[2]["trials"]) == 1
        chosen, recall, record = tune_search(searcher, params, states, truth, 0.9, budget_s=120, narrow=knobs)
        assert record["trials"][0]["recall_at_10"] >= 0.9 and recall >= 0.9
        assert all(chosen[k] <= params[k] and searcher.params[k] == chosen[k] for k in knobs)
        assert any(chosen[k] < params[k] for k in knobs)
        assert recall == next(t["recall_at_10"] for t in record["trials"] if all(t[k] == chosen[k] for k in knobs))


def test_stochastic_state_keeps_its_noise(bundle_root):
    """Generative kinds: the noise input changes the state; same seed, same list as the exact bundle."""
    exact = Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    ann = Recommender.load(ann_bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    assert ann.noise_size == exact.noise_size > 0
    hists = _histories(list(exact.items.item_ids), 10, seed=7)
    for seed in (1, 2):
        a, e = ann.recommend(hists, k=10, seed=seed), exact.recommend(hists, k=10, seed=seed)
        assert [r.items for r in a] == [r.items for r in e]
    assert ann.recommend(hists[0], k=10, seed=1).items == ann.recommend(hists[0], k=10, seed=1).items


# ---------------------------------------------------------------- load-time search parameters

def test_search_parameters_at_load(bundle_root):
    r = Recommender.load(ann_bundle(bundle_root), backend="cpu", threads=1, ef_search=16)
    assert r.metadata()["ann"]["search"] == {"kind": "hnsw", "ef_search": 16}
    tuned = json.loads((ann_bundle(bundle_root) / "manifest.json").read_text())["ann"]["params"]["ef_search"]
    assert Recommender.load(ann_bundle(bundle_root), backend="cpu").metadata()["ann"]["search"]["ef_search"] == tuned
    r = Recommender.load(ann_bundle(bundle_root, index="ivfpq"), backend="cpu", nprobe=1)
    assert r.metadata()["ann"]["search"]["nprobe"] == 1
    with pytest.raises(InputError, match="nprobe applies to ivfpq"):
        Recommender.load(ann_bundle(bundle_root), backend="cpu", nprobe=4)
    with pytest.raises(InputError, match="do not apply to a flat-fp16 index"):
        Recommender.load(ann_bundle(bundle_root, index="flat-fp16"), backend="cpu", ef_search=4)
    with pytest.raises(InputError, match="ef_search must be an integer"):
        Recommender.load(ann_bundle(bundle_root), backend="cpu", ef_search=0)
    with pytest.raises(ValueError, match="apply to bundles exported with --ann"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", ef_search=16)


# ---------------------------------------------------------------- tampering

def test_index_and_manifest_tamper_detected(bundle_root, tmp_path):
    src = ann_bundle(bundle_root)
    name = json.loads((src / "manifest.json").read_text())["ann"]["file"]

    b = _copy(src, tmp_path / "flip")
    data = bytearray((b / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"sha256 of {name} does not match"):
        Recommender.load(b, backend="cpu")

    b = _copy(src, tmp_path / "unlisted")  # the index dropped from the file table (digest recomputed)
    rewrite_manifest(b, lambda m: m["files"].pop(name))
    with pytest.raises(BundleError, match=f"does not list {name}"):
        Recommender.load(b, backend="cpu")

    b = _copy(src, tmp_path / "hand-edit")  # edited without recomputing the digest
    m = json.loads((b / "manifest.json").read_text())
    m["ann"]["params"]["ef_search"] = 1
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest_digest does not match"):
        Recommender.load(b, backend="cpu")

    for edit, match in [
        (lambda m: m["ann"].update(dim=8), "ann.dim"),
        (lambda m: m["ann"].update(kind="lsh"), "ann.kind"),
        (lambda m: m["ann"].update(id_offset=0), "ann.id_offset"),
        (lambda m: m["ann"]["recall"].update(recall_at_10=1.5), "recall_at_10"),
        (lambda m: m["ann"].update(file="../items.hnsw.faiss"), "not a plain file name"),
        (lambda m: m.update(format_version=2), "needs format_version 3"),
        (lambda m: m.pop("ann"), "missing field 'ann'"),
    ]:
        b = _copy(src, tmp_path / "schema")
        rewrite_manifest(b, edit)
        with pytest.raises(BundleError, match=match):
            Recommender.load(b, backend="cpu")


def test_index_parsed_from_the_verified_bytes(bundle_root, monkeypatch):
    """faiss parses the bytes the loader read and hashed, never the file a second time."""
    import faiss

    read = faiss.read_index  # deserialize_index parses through it, from a buffer reader

    def from_path_refused(src, *a):
        if isinstance(src, (str, Path)):
            pytest.fail("the index file was read again")
        return read(src, *a)

    monkeypatch.setattr(faiss, "read_index", from_path_refused)
    rec = Recommender.load(ann_bundle(bundle_root), backend="cpu", threads=1)
    assert len(rec.recommend(list(rec.items.item_ids[:3]), k=5).items) == 5


def test_index_of_another_catalog_refused(bundle_root, tmp_path):
    """A swapped index file, re-hashed by someone who knows the format, is still refused by its size."""
    import faiss

    from genattn_runtime.bundle import file_entry

    b = _copy(ann_bundle(bundle_root), tmp_path / "swap")
    name = json.loads((b / "manifest.json").read_text())["ann"]["file"]
    other = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    other.add(np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32))
    faiss.write_index(other, str(b / name))
    rewrite_manifest(b, lambda m: m["files"].update({name: file_entry(b / name)}))
    with pytest.raises(BundleError, match="holds 7 vectors"):
        Recommender.load(b, backend="cpu")


# ---------------------------------------------------------------- export refusals

def test_poor_recall_refused_nothing_written(bundle_root, tmp_path):
    out = tmp_path / "poor"
    out.mkdir()
    (out / "keep.txt").write_text("an existing folder is left as it was")
    opts = ExportOptions(k=K, verify_users=0, ann=AnnOptions(kind="ivfpq", nprobe=1, k_factor=1.0, pq_m=16,
                                                             pq_bits=1, nlist=8, min_recall=0.99, tune=False))
    with pytest.raises(AnnRecallError, match=r"recall@10 0\.\d+ .* below --ann-min-recall 0.99"):
        export_bundle(checkpoint(bundle_root, "softmax"), out, opts)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".poor")]  # no temporary folder left


def test_incompatible_options_refused(bundle_root, tmp_path):
    ck = checkpoint(bundle_root, "softmax")
    with pytest.raises(ExportError, match="--ann cannot be combined with --fp16, --full-scores"):
        export_bundle(ck, tmp_path / "x", ExportOptions(fp16=True, full_scores=True, ann=AnnOptions()))
    with pytest.raises(ExportError, match="--ann-pq-m 5 must divide d_model 16"):
        export_bundle(ck, tmp_path / "x", ExportOptions(verify_users=0, ann=AnnOptions(kind="ivfpq", pq_m=5)))
    with pytest.raises(ExportError, match="--ann-min-recall must be in"):
        export_bundle(ck, tmp_path / "x", ExportOptions(ann=AnnOptions(min_recall=1.5)))
    assert not (tmp_path / "x").exists()


def test_missing_library(bundle_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(AnnUnavailableError, match=r"pip install 'genattn\[ann\]'"):
        Recommender.load(ann_bundle(bundle_root), backend="cpu")
    with pytest.raises(ExportError, match=r"--ann builds an ANN index, which needs faiss"):
        export_bundle(checkpoint(bundle_root, "softmax"), tmp_path / "x", ExportOptions(ann=AnnOptions()))
    assert not (tmp_path / "x").exists()


def test_cli_export_ann(bundle_root, tmp_path):
    from genattn.cli import main

    out = tmp_path / "cli-ann"
    res = CliRunner().invoke(main, ["export", str(checkpoint(bundle_root, "softmax")), "-o", str(out), "-k", "20",
                                    "--verify-users", "0", "--ann", "hnsw", "--ann-m", "8",
                                    "--ann-ef-search", "64", "--ann-recall-users", "50"])
    assert res.exit_code == 0, res.output
    assert "hnsw index recall@10 1.0000 (real users)" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["ann"]["params"] == {"m": 8, "ef_construction": 200, "ef_search": 64}
    assert m["ann"]["recall"]["queries"] == 50 and m["ann"]["tuning"]["chosen"] == {"ef_search": 64}  # given: kept
    res = CliRunner().invoke(main, ["export", str(checkpoint(bundle_root, "softmax")), "-o", str(tmp_path / "tuned"),
                                    "-k", "20", "--verify-users", "0", "--ann", "hnsw", "--ann-recall-users", "50"])
    m = json.loads((tmp_path / "tuned" / "manifest.json").read_text())["ann"]
    assert res.exit_code == 0 and m["tuning"]["start"] == {"ef_search": 128} and m["recall"]["recall_at_10"] >= 0.95
    # not given: narrowing tried, and kept only where the floor held and the search got faster
    chosen = m["params"]["ef_search"]
    assert chosen == m["tuning"]["chosen"]["ef_search"] <= 128 and len(m["tuning"]["trials"]) > 1
    timed = {t["ef_search"]: t for t in m["tuning"]["trials"]}
    assert all(t["recall_at_10"] < 0.95 or t["search_ms_per_user"] >= timed[chosen]["search_ms_per_user"]
               for ef, t in timed.items() if ef < chosen and ef in (chosen // 2, int(chosen * 0.75),
                                                                     int(chosen * 0.875)))
    res = CliRunner().invoke(main, ["export", str(checkpoint(bundle_root, "softmax")), "-o", str(tmp_path / "y"),
                                    "--ann", "hnsw", "--ann-min-recall", "2"])
    assert res.exit_code != 0 and "--ann-min-recall must be in [0, 1]" in res.output


# ---------------------------------------------------------------- benchmark

def test_benchmark_quick(bundle_root, tmp_path):
    from benchmarks import ann as bench

    assert bench.main(["--quick", "--n-items", "3000", "--queries", "30", "--checkpoint",
                       str(checkpoint(bundle_root, "softmax")), "--results-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "serving_scale.json").read_text())["ann"]
    for key in ("n_items", "recall@10", "p50_ms", "exact_p50_ms", "index", "machine", "command", "rows"):
        assert key in doc
    assert doc["n_items"] == 3000
    by = {(r["variant"], r["library"]): r for r in doc["rows"]}
    assert by[("exact fp32", "faiss")]["recall@10"] == 1.0
    assert {"hnsw", "ivfpq", "exact fp16", "exact int8"} <= {v for v, _ in by}
    assert "## ann" in (tmp_path / "serving_scale.md").read_text()


def test_benchmark_end_to_end_quick(bundle_root, tmp_path):
    """--end-to-end: exports over an expanded catalog, serves the ANN bundle from two runtimes
    (this one, and git HEAD's as --before) in alternating rounds, writes ann_end_to_end.*."""
    from benchmarks import ann as bench

    assert bench.main(["--end-to-end", "--quick", "--n-items", "2000", "--queries", "12", "--rounds", "2",
                       "--before", "HEAD", "--checkpoint", str(checkpoint(bundle_root, "softmax")),
                       "--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    doc = json.loads((tmp_path / "ann_end_to_end.json").read_text())["n2000"]
    assert doc["n_items"] == 2000 and doc["tuning"]["chosen"] == {k: doc["ann_params"][k] for k in ("nprobe", "k_factor")}
    runtimes = [r["runtime"] for r in doc["rows"]]
    start = doc["tuning"]["start"]["nprobe"]  # narrowed by export: that start is timed too, same rounds
    extra = [] if start == doc["ann_params"]["nprobe"] else [f"after, nprobe {start} (the tuning's start)"]
    assert runtimes == ["after", "before (HEAD)", "after"] + extra
    for r in doc["rows"][1:]:
        assert r["requests"] == 24 and r["p50_ms"] > 0 and r["search_p50_ms"] > 0 and r["state_p50_ms"] > 0
        assert 0.5 <= r["top10_overlap_with_exact"] <= 1
    for key in ("command", "commit", "machine", "histories", "exports"):
        assert doc[key]
    assert "| ivfpq (export defaults, tuned) | before (HEAD) |" in (tmp_path / "ann_end_to_end.md").read_text()
    # --tuning: export's widening timed on that catalog, from start settings the index misses
    assert bench.main(["--tuning", "--quick", "--n-items", "2000", "--checkpoint", str(checkpoint(bundle_root, "softmax")),
                       "--results-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    tuned = json.loads((tmp_path / "ann_end_to_end.json").read_text())["tuning-n2000"]
    assert [r["floor"] for r in tuned["runs"]] == [0.95, 0.95, 0.99]
    for r in tuned["runs"]:
        assert r["trials"][0] == {**r["trials"][0], **r["start"]} and r["seconds"] >= 0
        assert (r["recall_at_10"] >= r["floor"]) or len(r["trials"]) > 1
    assert "## Export tuning at 2,000 items" in (tmp_path / "ann_end_to_end.md").read_text()


def test_cli_recommend_takes_the_search_breadth(bundle_root):
    from genattn_runtime.cli import recommend_cmd

    ivf = ann_bundle(bundle_root, index="ivfpq")
    ids = Recommender.load(ivf, backend="cpu").items.item_ids
    hist = ",".join(str(x) for x in ids[:5])
    runner = CliRunner()
    wide = runner.invoke(recommend_cmd, [str(ivf), "--history", hist, "-k", "5", "--nprobe", "64", "--threads", "1"])
    assert wide.exit_code == 0, wide.output
    exact = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu").recommend(ids[:5], k=5)
    assert json.loads(wide.output)["items"] == exact.items  # every list searched: the exact answer
    # An option the bundle cannot take is one clear error line, not a traceback.
    res = runner.invoke(recommend_cmd, [str(ivf), "--history", hist, "--ef-search", "8"])
    assert res.exit_code != 0 and "ef_search" in res.output and "Traceback" not in res.output
    res = runner.invoke(recommend_cmd, [str(bundle(bundle_root, "softmax")), "--history", hist, "--nprobe", "4"])
    assert res.exit_code != 0 and "exported with --ann" in res.output
    res = runner.invoke(recommend_cmd, [str(ivf), "--history", hist, "--nprobe", "0"])
    assert res.exit_code != 0 and "--nprobe" in res.output


def test_cli_serve_refuses_a_search_breadth_the_bundle_cannot_take(bundle_root):
    from genattn_runtime.cli import serve_cmd

    res = CliRunner().invoke(serve_cmd, [str(bundle(bundle_root, "softmax")), "--port", "0", "--nprobe", "4"])
    assert res.exit_code != 0 and "exported with --ann" in res.output and "Traceback" not in res.output
