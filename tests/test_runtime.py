"""The torch-free runtime: parity with torch, bad inputs, tampered bundles, threads, CLI."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_fixtures import (K, KINDS, MAX_LEN, N_ITEMS, bundle, bundle_root,  # noqa: F401 (fixture)
                              checkpoint, export_options, ids, rec, rewrite_manifest, string_id_bundle)

from genattn_runtime import (BackendUnavailableError, BundleError, InputError, Recommendation, Recommender,
                             UnknownItemError)
from genattn_runtime.cli import recommend_cmd

pytestmark = pytest.mark.slow


def _histories(ids: list, n: int, seed: int, max_len: int = 25) -> list[list]:
    rng = np.random.default_rng(seed)
    return [[ids[j] for j in rng.integers(0, len(ids), size=int(rng.integers(1, max_len + 1)))] for _ in range(n)]


# ---------------------------------------------------------------- parity with torch

def _torch_topk(ck, kind: str, histories: list[list], k: int, exclude_seen: bool):
    import torch

    index = {str(v): i + 1 for i, v in enumerate(ck.item_ids)}
    seq = np.zeros((len(histories), MAX_LEN), dtype=np.int64)
    for b, h in enumerate(histories):
        w = [index[str(x)] for x in h][-MAX_LEN:]
        seq[b, MAX_LEN - len(w):] = w
    with torch.no_grad():
        scores = ck.model.eval().scores(torch.from_numpy(seq), export_options().sampling(kind), None).numpy()
    scores[:, 0] = -np.inf
    if exclude_seen:
        for b, h in enumerate(histories):
            scores[b, [index[str(x)] for x in h]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    raw = [None, *ck.item_ids]
    return [[raw[i] for i in row] for row in order], np.take_along_axis(scores, order, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_topk_equals_torch(bundle_root, kind, exclude_seen):
    from genattn.checkpoint import load_checkpoint

    r = Recommender.load(bundle(bundle_root, kind), backend="cpu", threads=1)
    ck = load_checkpoint(checkpoint(bundle_root, kind))
    hists = _histories(list(ck.item_ids), 40, seed=1)  # lengths 1..25: many longer than max_len 12
    recs = r.recommend(hists, k=10, exclude_seen=exclude_seen)
    want_items, want_scores = _torch_topk(ck, kind, hists, 10, exclude_seen)
    for b, (got, items, scores) in enumerate(zip(recs, want_items, want_scores)):
        assert got.items == items, f"user {b}"
        np.testing.assert_allclose(got.scores, scores, rtol=1e-4, atol=1e-5)
        assert got.truncated == (len(hists[b]) > MAX_LEN)
        assert not got.partial and got.fallback is None
        if exclude_seen:
            assert not set(got.items) & set(hists[b])


def test_recommend_indices_equals_torch(bundle_root):
    import torch

    from genattn.checkpoint import load_checkpoint

    r = Recommender.load(bundle(bundle_root, "diffusion"), backend="cpu", threads=1)
    ck = load_checkpoint(checkpoint(bundle_root, "diffusion"))
    seq = np.random.default_rng(3).integers(0, N_ITEMS + 1, size=(9, MAX_LEN)).astype(np.int64)
    items, scores = r.recommend_indices(seq, k=5, exclude=seq)
    with torch.no_grad():
        full = ck.model.eval().scores(torch.from_numpy(seq), export_options().sampling("diffusion"), None)
        full = full.scatter(1, torch.from_numpy(seq), float("-inf"))
        ref_scores, ref_items = full.topk(5, dim=1)
    np.testing.assert_array_equal(items, ref_items.numpy())
    np.testing.assert_allclose(scores, ref_scores.numpy(), rtol=1e-4, atol=1e-5)
    assert items.dtype == np.int64 and scores.dtype == np.float32 and items.shape == (9, 5)
    full_items, _ = r.recommend_indices(seq)
    assert full_items.shape == (9, K)


# ---------------------------------------------------------------- inputs users send

def test_single_and_batch_forms(rec, ids):
    one = rec.recommend(ids[:5], k=3)
    assert isinstance(one, Recommendation) and len(one.items) == 3 and len(one.scores) == 3
    batch = rec.recommend([ids[:5], ids[5:9]], k=3)
    assert isinstance(batch, list) and batch[0] == one
    assert rec.recommend(tuple(ids[:5]), k=3) == one
    assert rec.recommend(np.asarray(ids[:5]), k=3) == one
    assert rec.recommend_batch([], k=3) == []
    assert json.loads(json.dumps(one.to_dict()))["items"] == one.items


def test_ids_as_int_or_string(bundle_root, rec, ids):
    as_int = rec.recommend(ids[:6], k=5)
    as_str = rec.recommend([str(x) for x in ids[:6]], k=5)
    as_np = rec.recommend([np.int64(x) for x in ids[:6]], k=5)
    assert as_int == as_str == as_np
    assert all(type(x) is int for x in as_int.items)  # returned in the stored type
    srec = Recommender.load(string_id_bundle(bundle_root), backend="cpu", threads=1)
    s = srec.recommend(ids[:6], k=5)  # ints find the stored strings
    assert s.items == [str(x) for x in as_int.items] and all(type(x) is str for x in s.items)
    assert s.scores == as_int.scores


def test_empty_history_popularity_fallback(rec):
    pop = rec.items.popularity
    want = [rec.items.item_ids[i - 1] for i in np.argsort(-pop[1:], kind="stable")[:4] + 1]
    r = rec.recommend([], k=4)
    assert r.fallback == "popularity" and r.items == want
    assert r.scores == sorted(r.scores, reverse=True)
    mixed = rec.recommend([[], [rec.items.item_ids[0]], []], k=4)
    assert [m.fallback for m in mixed] == ["popularity", None, "popularity"]


def test_unknown_items_skip_and_error(bundle_root, rec, ids):
    r = rec.recommend([ids[0], "nope", 10**9, ids[1], "nope"], k=5)
    assert r.unknown_items == ["nope", 10**9] and r.fallback is None
    assert r.items == rec.recommend([ids[0], ids[1]], k=5).items
    only_unknown = rec.recommend(["x", "y"], k=3)
    assert only_unknown.fallback == "popularity" and only_unknown.unknown_items == ["x", "y"]
    with pytest.raises(UnknownItemError, match="nope") as e:
        rec.recommend([ids[0], "nope"], k=5, unknown_items="error")
    assert e.value.unknown == ["nope"]
    strict = Recommender.load(bundle(bundle_root, "softmax"), backend="cpu", unknown_items="error", threads=1)
    with pytest.raises(UnknownItemError, match=r"histories \[1\].*'zz'") as e:
        strict.recommend([[ids[0]], [ids[1], "zz", 10**9]], k=5)
    assert e.value.unknown == ["zz", 10**9]
    assert isinstance(e.value, InputError)


def test_long_history_keeps_newest_and_filters_older_seen(rec, ids):
    old, new = ids[:30], ids[30:40]
    h = old + new  # 40 events, max_len 12
    r = rec.recommend(h, k=10, exclude_seen=True)
    assert r.truncated and not set(r.items) & set(h)
    no_excl = rec.recommend(h, k=10, exclude_seen=False)
    assert no_excl.items == rec.recommend(h[-MAX_LEN:], k=10, exclude_seen=False).items
    # 50 distinct items seen out of 60: at most 10 candidates remain, fewer than K survive in the graph's top-K
    many = rec.recommend(ids[:50], k=15)
    assert many.partial and len(many.items) < 15 and not set(many.items) & set(ids[:50])


def test_duplicates_are_events(rec, ids):
    r = rec.recommend([ids[3]] * 5 + [ids[4]], k=5)
    assert len(r.items) == 5 and ids[3] not in r.items and ids[4] not in r.items


@pytest.mark.parametrize("history, match", [
    (None, "got None"),
    ("12,7,33", "string"),
    (5, "got int"),
    (1.5, "got float"),
    ({"a": 1}, "got dict"),
    ([1, 2.5], r"item 1 is a float"),
    ([1, None], r"item 1 is a NoneType"),
    ([True, 1], "boolean"),
    ([1, {"x": 1}], "item 1 is a dict"),
    ([[1], 2], "element 0 is a list but element 1 is an item id"),
    ([[1, [2]]], r"histories\[0\]: item 1 is a list"),
    ([[1], None], "element 0 is a list"),
])
def test_bad_histories(rec, history, match):
    with pytest.raises(InputError, match=match):
        rec.recommend(history, k=5)


@pytest.mark.parametrize("kw, match", [
    ({"k": 0}, r"k must be in 1\.\.20"),
    ({"k": -3}, r"k must be in 1\.\.20"),
    ({"k": K + 1}, r"1\.\.20 \(the bundle's K\), got 21"),
    ({"k": 2.0}, "k must be a positive integer, got float"),
    ({"k": "10"}, "got str"),
    ({"k": True}, "got bool"),
    ({"k": None}, "got NoneType"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"seed": 1.5}, "seed must be"),
    ({"exclude_seen": "yes"}, "exclude_seen must be true or false"),
    ({"unknown_items": "ignore"}, "unknown_items must be one of"),
])
def test_bad_arguments(rec, ids, kw, match):
    with pytest.raises(InputError, match=match):
        rec.recommend(ids[:3], **{"k": 5, **kw})


def test_recommend_indices_validation(rec):
    good = np.zeros((2, MAX_LEN), dtype=np.int64)
    with pytest.raises(InputError, match="shape"):
        rec.recommend_indices(np.zeros((2, MAX_LEN + 1), dtype=np.int64))
    with pytest.raises(InputError, match="integers"):
        rec.recommend_indices(good.astype(np.float32))
    with pytest.raises(InputError, match=r"0\.\.60"):
        rec.recommend_indices(good + N_ITEMS + 1)
    with pytest.raises(InputError, match="numpy array"):
        rec.recommend_indices([[0] * MAX_LEN])
    with pytest.raises(InputError, match="deterministic"):
        rec.recommend_indices(good, noise=np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(InputError, match="k must be"):
        rec.recommend_indices(good, k=K + 1)
    assert rec.recommend_indices(good[:0], k=3)[0].shape == (0, 3)


def test_load_argument_errors(bundle_root):
    with pytest.raises(ValueError, match="backend must be one of"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="gpu")
    with pytest.raises(ValueError, match="unknown_items"):
        Recommender.load(bundle(bundle_root, "softmax"), unknown_items="drop")
    with pytest.raises(BundleError, match="not found"):
        Recommender.load(bundle_root / "no-such-bundle")
    with pytest.raises(BundleError, match="no FP16 graph"):
        Recommender.load(bundle(bundle_root, "softmax"), precision="fp16")


# ---------------------------------------------------------------- tampered bundles

def _copy(bundle_root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle(bundle_root, "softmax"), dst)
    return dst


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, match", [
    ("onnx_byte", "sha256 of model.onnx does not match"),
    ("items_byte", "sha256 of items.json does not match"),
    ("onnx_truncated", "model.onnx has .* bytes"),
    ("delete_items", "items.json listed in the manifest is missing"),
    ("delete_manifest", "manifest.json missing"),
    ("format_version", "format version 99 is not supported"),
    ("format_name", "is not 'genattn-bundle'"),
])
def test_tampered_bundle_refused(bundle_root, tmp_path, case, match):
    b = _copy(bundle_root, tmp_path)
    if case == "onnx_byte":
        _flip_byte(b / "model.onnx", (b / "model.onnx").stat().st_size // 2)
    elif case == "items_byte":
        _flip_byte(b / "items.json", 20)
    elif case == "onnx_truncated":
        (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-10])
    elif case.startswith("delete_"):
        (b / f"{case.split('_')[1]}.json").unlink()
    else:
        m = json.loads((b / "manifest.json").read_text())
        if case == "format_version":
            m["format_version"] = 99
        else:
            m["format"] = "other"
        (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match):
        Recommender.load(b, backend="cpu")


def test_inconsistent_items_refused_even_without_verify(bundle_root, tmp_path):
    b = _copy(bundle_root, tmp_path)
    items = json.loads((b / "items.json").read_text())
    items["item_ids"] = items["item_ids"][:-1]
    (b / "items.json").write_text(json.dumps(items))
    with pytest.raises(BundleError, match="items.json has 500 bytes, manifest says 505"):  # sizes: checked always
        Recommender.load(b, backend="cpu", verify=False)
    size = (b / "items.json").stat().st_size  # the size made to match, the hash left stale
    rewrite_manifest(b, lambda m: m["files"]["items.json"].update(bytes=size))
    with pytest.raises(BundleError, match="items.json has 59 ids"):
        Recommender.load(b, backend="cpu", verify=False)


# ---------------------------------------------------------------- lightweight

def test_runtime_never_imports_torch(bundle_root, ids):
    b = bundle(bundle_root, "diffusion")
    code = ("import sys, genattn_runtime, genattn_runtime.cli, genattn_runtime.service, genattn_runtime.signing\n"
            f"r = genattn_runtime.Recommender.load({str(b)!r}, threads=1)\n"
            f"out = r.recommend({ids[:5]!r}, k=5)\n"
            "assert len(out.items) == 5\n"
            "bad = sorted(m for m in sys.modules if m in ('torch', 'genattn') or m.startswith(('torch.', "
            "'genattn.', 'genattn_export', 'pandas')))\n"
            "assert not bad, bad\n"
            "print('ok', r.backend)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok cpu"


def test_measure_overhead_reports_stages(rec):
    res = rec.measure_overhead(repeats=5, warmup=1)
    for key in ("prepare_us_p50", "session_us_p50", "decode_us_p50", "python_overhead_us_p50", "total_us_p50"):
        assert res[key] > 0
    assert res["backend"] == "cpu" and res["batch"] == 1


def _bare_recommender(item_ids: list, k: int = 5):
    """A Recommender over `item_ids` with no graph: enough to encode histories and decode outputs."""
    from types import SimpleNamespace

    from genattn_runtime.bundle import ItemTable

    items = ItemTable(item_ids=item_ids, popularity=list(range(len(item_ids) + 1)),
                      index={str(x): i + 1 for i, x in enumerate(item_ids)})
    manifest = SimpleNamespace(max_len=5, n_items=len(item_ids), k=k, noise_size=0, time_buckets=0,
                               exclude_in_graph=True, ann=None)
    return Recommender(manifest, items, backend=None)


def test_int_catalog_encodings_equal_the_general_path(monkeypatch):
    """Int histories on an integer catalog: a small catalog encodes them through a dict, a large one
    through a lookup table (forced here by lowering the size limit); both give the per-item path's
    indices and unknown ids, for known, unknown, 0, negative, just-too-large and overflowing ids."""
    import random

    from genattn_runtime import recommender as R

    ids = [0, 3, 5, 7, 12, 40, 41, 99, 1000]
    small = _bare_recommender(ids)
    monkeypatch.setattr(R, "INT_DICT_MAX_IDS", 0)
    large = _bare_recommender(ids)
    assert small._lut is None and large._lut is not None
    every = (list(range(1, len(ids) + 1)), [])
    assert small._encode_plain(ids) == every and large._encode_fast(ids) == every  # the fast paths take them
    pool = ids + [1, 2, 999, 1001, 1002, -1, -3, 10**30, -10**30, 2**63, 2**63 - 1]
    rng = random.Random(0)
    hists = [[rng.choice(pool) for _ in range(rng.randint(0, 30))] for _ in range(500)] + [[-1], [10**30], [1001]]
    got_small = [small._encode(h, "history") for h in hists]
    got_large = [large._encode(h, "history") for h in hists]
    monkeypatch.setattr(R.Recommender, "_encode_plain", lambda self, hist: None)
    monkeypatch.setattr(R.Recommender, "_encode_fast", lambda self, hist: None)
    general = [small._encode(h, "history") for h in hists]
    assert got_small == general and got_large == general
    assert any(u for _, u in general) and any(i and not u for i, u in general)


def test_decode_drops_non_finite_scores():
    """A top-k with a NaN, +inf or -inf score loses that entry (the next finite ones fill it, or the
    list is partial); one with finite scores is taken whole."""
    from genattn_runtime.recommender import PreparedRequest, _Row

    ids = [f"i{j}" for j in range(8)]
    rec = _bare_recommender(ids, k=6)
    items = np.array([[3, 1, 4, 2, 5, 6]] * 4, dtype=np.int64)
    scores = np.array([[6, 5, 4, 3, 2, 1]] * 4, dtype=np.float32)
    scores[1, 1], scores[2, 0], scores[3, 2:] = np.nan, np.inf, -np.inf
    rows = [_Row(unknown=[], truncated=False, fallback=None, post_exclude=None) for _ in range(4)]
    prep = PreparedRequest(rows=rows, k=3, single=False, seq=np.zeros((4, 5), np.int64), exclude=None, noise=None)
    got = rec._decode(prep, (items, scores, None))
    assert [r.items for r in got] == [["i2", "i0", "i3"], ["i2", "i3", "i1"], ["i0", "i3", "i1"], ["i2", "i0"]]
    assert [r.scores for r in got] == [[6, 5, 4], [6, 4, 3], [5, 4, 3], [6, 5]]
    assert [r.partial for r in got] == [False, False, False, True]

# ---------------------------------------------------------------- backends

def test_strict_cuda_refused_on_cpu_only_onnxruntime(bundle_root):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="cuda", strict=True)
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="tensorrt-ep", strict=True)


def test_non_strict_falls_back_and_says_so(bundle_root, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with caplog.at_level(logging.WARNING, logger="genattn_runtime"):
        r = Recommender.load(bundle(bundle_root, "softmax"), backend="cuda", threads=1)
    assert r.backend == "cpu" and r.providers == ["CPUExecutionProvider"]
    assert "falling back to CPU" in caplog.text


def test_native_tensorrt_without_engine(bundle_root):
    with pytest.raises(BackendUnavailableError, match="no TensorRT engine"):
        Recommender.load(bundle(bundle_root, "softmax"), backend="tensorrt", strict=True)
    r = Recommender.load(bundle(bundle_root, "softmax"), backend="tensorrt", threads=1)  # falls back to ORT
    assert r.backend == "cpu"


def test_native_tensorrt_engine_unusable_here(bundle_root, tmp_path, caplog):
    """A bundle with an engine: strict 'tensorrt' says what is missing; 'auto' moves on to ONNX Runtime."""
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from genattn_runtime.bundle import file_entry

    b = _copy(bundle_root, tmp_path)
    (b / "model.engine").write_bytes(b"not a real engine")

    def add_engine(m):
        m["tensorrt"] = {"file": "model.engine", "tensorrt_version": "10.9.0", "compute_capability": "9.0"}
        m["files"]["model.engine"] = file_entry(b / "model.engine")

    rewrite_manifest(b, add_engine)
    with pytest.raises(BackendUnavailableError, match="needs the tensorrt package"):
        Recommender.load(b, backend="tensorrt", strict=True)
    with caplog.at_level(logging.INFO, logger="genattn_runtime"):
        r = Recommender.load(b, threads=1)
    assert r.backend == "cpu" and "native TensorRT engine not usable" in caplog.text
    assert "backend auto -> cpu" in caplog.text


def test_auto_and_session_options(bundle_root, ids):
    opts = {"intra_op_num_threads": 1, "config": {"session.intra_op.allow_spinning": "0"}}
    r = Recommender.load(bundle(bundle_root, "softmax"), session_options=opts)
    assert r.backend == "cpu" and r.metadata()["backend"] == "cpu"
    assert len(r.recommend(ids[:3], k=3).items) == 3
    with pytest.raises(ValueError, match="no attribute 'bogus'"):
        Recommender.load(bundle(bundle_root, "softmax"), session_options={"bogus": 1})


def test_gpu_paths_host_logic_on_cpu(bundle_root, ids):
    """IO binding and the CUDA-graph runner's fixed-batch padding / chunking, on CPU OrtValues.

    Only the host-side logic is checked here; the GPU paths themselves are unverified on hardware.
    """
    from genattn_runtime.backends.ort import _CudaGraphRunner

    r = Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    be = r._backend
    fixed = _CudaGraphRunner(be, 4, device="cpu")
    for B in (1, 4, 9):
        feeds = r._feeds([r.prepare(_histories(ids, B, seed=B), k=5, seed=1)])
        assert len(feeds) == 3  # item_seq, exclude_items, noise
        want_items, want_scores = be.session.run(be.output_names, feeds)
        for out in (be.run_iobinding(feeds), fixed.run(feeds)):
            items, scores = out["top_items"], out["top_scores"]
            assert items.shape == (B, K)
            np.testing.assert_array_equal(items, want_items)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- stochastic bundle

def test_stochastic_bundle_seeds(bundle_root, ids):
    r = Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    assert r.noise_size > 0 and not r.metadata()["deterministic"]
    h = ids[:8]
    a, b = r.recommend(h, k=10, seed=7), r.recommend(h, k=10, seed=7)
    assert a == b
    c = r.recommend(h, k=10, seed=8)
    assert c.scores != a.scores
    d, e = r.recommend(h, k=10), r.recommend(h, k=10)  # fresh entropy each call
    assert d.scores != e.scores
    # a user's noise does not depend on who else is in the batch
    batch = r.recommend([h, ids[10:14]], k=10, seed=7)
    assert batch[0].items == a.items
    np.testing.assert_allclose(batch[0].scores, a.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="noise must be float32"):
        r.recommend_indices(np.zeros((2, MAX_LEN), dtype=np.int64), noise=np.zeros((2, 3), dtype=np.float32))


def test_diversity_scales_the_prior_noise(bundle_root, ids):
    """diversity = tau draws the noise from N(0, tau^2): 0 is the deterministic mode
    (the zero-start bundle's answer), 1 the default, and it only exists where noise does."""
    noisy = Recommender.load(bundle(bundle_root, "diffusion", stochastic=True), backend="cpu", threads=1)
    det = Recommender.load(bundle(bundle_root, "diffusion"), backend="cpu", threads=1)
    h = ids[:8]
    zero, plain = noisy.recommend(h, k=10, seed=3, diversity=0), det.recommend(h, k=10)
    assert zero.items == plain.items
    np.testing.assert_allclose(zero.scores, plain.scores, rtol=1e-5, atol=1e-5)
    assert noisy.recommend(h, k=10, seed=3, diversity=1.0) == noisy.recommend(h, k=10, seed=3)
    assert noisy.recommend(h, k=10, seed=3, diversity=3.0).scores != noisy.recommend(h, k=10, seed=3).scores
    # The same scale through a prepared batch (the service's path) as through recommend.
    prep = noisy.prepare([h], k=10, seed=3, diversity=2.0)
    assert noisy.run_prepared([prep])[0][0] == noisy.recommend([h], k=10, seed=3, diversity=2.0)[0]
    for bad in (-0.1, float("nan"), float("inf"), 11.0, "1", True):
        with pytest.raises(InputError, match="diversity"):
            noisy.recommend(h, k=10, diversity=bad)
    with pytest.raises(InputError, match="deterministic"):
        det.recommend(h, k=10, diversity=0.5)
    assert det.recommend(h, k=10, diversity=None) == plain


# ---------------------------------------------------------------- threads

def test_threads_equal_serial(rec, ids):
    hists = _histories(ids, 50, seed=5)
    serial = [rec.recommend(h, k=10) for h in hists]
    errors, mismatches = [], []

    def worker(t: int) -> None:
        try:
            for n in range(200):
                i = (t * 31 + n) % len(hists)
                if rec.recommend(hists[i], k=10) != serial[i]:
                    mismatches.append((t, n))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not mismatches


# ---------------------------------------------------------------- CLI

def test_cli_single(bundle_root, rec, ids):
    b = str(bundle(bundle_root, "softmax"))
    res = CliRunner().invoke(recommend_cmd, [b, "--history", ",".join(map(str, ids[:4])) + ",nope", "-k", "5",
                                             "--backend", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["items"] == rec.recommend(ids[:4], k=5).items and out["unknown_items"] == ["nope"]
    res = CliRunner().invoke(recommend_cmd, [b, "--history", "1,nope", "--unknown", "error", "--threads", "1"])
    assert res.exit_code == 1 and "unknown item id(s): 'nope'" in res.output
    res = CliRunner().invoke(recommend_cmd, [b, "--history", "1", "-k", "99", "--threads", "1"])
    assert res.exit_code == 1 and "k must be in 1..20" in res.output
    res = CliRunner().invoke(recommend_cmd, [b])
    assert res.exit_code == 2 and "--history or --input" in res.output


def test_cli_batch_jsonl(bundle_root, rec, ids, tmp_path):
    b = str(bundle(bundle_root, "softmax"))
    lines = [json.dumps({"history": ids[:3], "k": 3, "id": "u1"}), json.dumps(ids[3:7]), "",
             json.dumps({"history": "1,2"}), "{not json", json.dumps({"hisotry": [1]}), json.dumps([])]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(recommend_cmd, [b, "--input", str(src), "--output", str(out), "-k", "4",
                                             "--threads", "1", "--batch-size", "2"])
    assert res.exit_code == 1 and "3 of 6 line(s) failed" in res.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6, 7]
    assert rows[0]["id"] == "u1" and rows[0]["items"] == rec.recommend(ids[:3], k=3).items
    assert rows[1]["items"] == rec.recommend(ids[3:7], k=4).items
    assert "string" in rows[2]["error"] and "not valid JSON" in rows[3]["error"] and "hisotry" in rows[4]["error"]
    assert rows[5]["fallback"] == "popularity"
    # stdin, all good lines -> exit 0, JSON lines on stdout
    res = CliRunner().invoke(recommend_cmd, [b, "--input", "-", "--threads", "1"],
                             input=json.dumps(ids[:2]) + "\n" + json.dumps({"history": ids[2:5], "k": 2}) + "\n")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 2 and len(rows[0]["items"]) == 10 and len(rows[1]["items"]) == 2
