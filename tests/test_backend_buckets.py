"""The CUDA backend's fast defaults, on CPU: CUDA graph buckets (which bucket a request runs on,
padding and chunking), the runner that replays one bound graph per bucket, and `auto`'s
batch-size rule (cpu_route_limit and the routed backend). No GPU here: ONNX Runtime CPU
OrtValues stand in for device buffers, so what is checked is the host-side logic; the GPU
replay itself is checked by benchmarks/device_check.sh on a lent GPU."""
from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import K, MAX_LEN, N_ITEMS, bundle, bundle_root  # noqa: F401 (fixture)

from genattn_runtime.backends import (CUDA_EP, DEFAULT_GRAPH_BUCKETS, BackendOptions, OrtBackend, RoutedBackend,
                                      bucket_plan, check_buckets, cpu_route_limit, graph_buckets)
from genattn_runtime.backends.ort import _CudaGraphRunner, with_cpu_route

BUCKETS = (1, 8, 64, 256)


# ---------------------------------------------------------------- bucket selection (pure)

@pytest.mark.parametrize("n, want", [
    (0, []),
    (1, [(0, 1, 1)]),
    (2, [(0, 2, 8)]),
    (8, [(0, 8, 8)]),
    (9, [(0, 9, 64)]),
    (65, [(0, 65, 256)]),
    (256, [(0, 256, 256)]),
    (300, [(0, 256, 256), (256, 300, 64)]),
    (513, [(0, 256, 256), (256, 512, 256), (512, 513, 1)]),
])
def test_bucket_plan_examples(n, want):
    assert bucket_plan(n, BUCKETS) == want


def test_bucket_plan_covers_every_row_once_on_the_smallest_bucket():
    for buckets in (BUCKETS, (4,), (3, 5), (256, 1, 8, 8)):
        sizes = sorted(set(buckets))
        for n in range(0, 3 * sizes[-1] + 2):
            plan = bucket_plan(n, buckets)
            assert [r for s, e, _ in plan for r in range(s, e)] == list(range(n))  # contiguous, in order
            for start, stop, b in plan[:-1]:
                assert stop - start == b == sizes[-1]  # only the last run may be short
            if plan:
                start, stop, b = plan[-1]
                assert b == min(x for x in sizes if x >= stop - start)


@pytest.mark.parametrize("bad", [[0], [-1], [8, 1.5], [True], ["8"]])
def test_bad_buckets_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="positive integers"):
        check_buckets(bad)
    with pytest.raises(ValueError):
        bucket_plan(3, bad)


def test_bucket_plan_refuses_no_buckets_and_negative_rows():
    with pytest.raises(ValueError, match="no CUDA graph buckets"):
        bucket_plan(1, ())
    with pytest.raises(ValueError, match="n_rows"):
        bucket_plan(-1, BUCKETS)


def test_graph_buckets_default_on_with_off_switches():
    assert DEFAULT_GRAPH_BUCKETS == BUCKETS
    assert graph_buckets(BackendOptions()) == BUCKETS
    assert graph_buckets(BackendOptions(cuda_graph_buckets=(64, 8, 8))) == (8, 64)
    assert graph_buckets(BackendOptions(cuda_graph_batch=16)) == (16,)  # one fixed batch, as before
    assert graph_buckets(BackendOptions(cuda_graph_batch=0)) == ()
    assert graph_buckets(BackendOptions(cuda_graph_buckets=())) == ()
    for off in ("0", 0, "false", False):
        assert graph_buckets(BackendOptions(provider_options={CUDA_EP: {"enable_cuda_graph": off}})) == ()


def _bare_backend(opts: BackendOptions, bundle_dir) -> OrtBackend:
    """An OrtBackend with no session: enough to read the provider options it would ask for."""
    from genattn_runtime.bundle import read_manifest

    be = OrtBackend.__new__(OrtBackend)
    be.opts, be.manifest = opts, read_manifest(bundle_dir)
    return be


def test_cuda_provider_options_enable_graphs_by_default(bundle_root, tmp_path):
    b = bundle(bundle_root, "softmax")
    cuda, _ = _bare_backend(BackendOptions(), b)._providers("cuda", b / "model.onnx")
    assert cuda == (CUDA_EP, {"device_id": "0", "enable_cuda_graph": "1"})
    cuda, _ = _bare_backend(BackendOptions(cuda_graph_buckets=()), b)._providers("cuda", b / "model.onnx")
    assert "enable_cuda_graph" not in cuda[1]
    opts = BackendOptions(trt_cache_dir=tmp_path)  # the CUDA EP behind TensorRT captures nothing
    trt, cuda, _ = _bare_backend(opts, b)._providers("tensorrt-ep", b / "model.onnx")
    assert "enable_cuda_graph" not in cuda[1]


# ---------------------------------------------------------------- the runner (CPU OrtValues)

def _feeds(n: int, seed: int, names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, N_ITEMS + 1, size=(n, MAX_LEN)).astype(np.int64)
    return {name: seq for name in names}  # item_seq and exclude_items: exclude the history


def test_runner_replays_one_bound_graph_per_bucket(bundle_root):
    be = OrtBackend(bundle(bundle_root, "softmax") / "model.onnx", _manifest(bundle_root), "cpu",
                    BackendOptions(threads=1))
    names = [i.name for i in be.session.get_inputs()]
    runner = _CudaGraphRunner(be, (8, 1, 4), device="cpu")
    assert runner.buckets == (1, 4, 8)
    ids = {b: slot[3].get_run_config_entry("gpu_graph_id") for b, slot in runner.slots.items()}
    assert ids == {1: "1", 4: "2", 8: "3"}  # one graph id per bucket, never 0 (reserved) or -1 (off)
    for n in (1, 2, 4, 5, 8, 9, 20):
        feeds = _feeds(n, seed=n, names=names)
        want_items, want_scores = be.session.run(be.output_names, feeds)
        out = runner.run(feeds)
        assert list(out) == ["top_items", "top_scores"]
        assert out["top_items"].shape == (n, K) and out["top_scores"].shape == (n, K)
        np.testing.assert_array_equal(out["top_items"], want_items)
        np.testing.assert_allclose(out["top_scores"], want_scores, rtol=1e-5, atol=1e-6)
    out = runner.run(_feeds(0, seed=0, names=names))
    assert out["top_items"].shape == (0, K) and out["top_scores"].dtype == np.float32


def _manifest(bundle_root):
    from genattn_runtime.bundle import read_manifest

    return read_manifest(bundle(bundle_root, "softmax"))


# ---------------------------------------------------------------- auto's batch-size rule

@pytest.mark.parametrize("timings, want", [
    ({}, 0),
    ({1: (0.30e-3, 0.29e-3)}, 0),                                         # GPU faster at 1: GPU for all
    ({1: (0.27e-3, 0.29e-3)}, 0),                                         # CPU within the 10% margin: GPU
    ({1: (0.25e-3, 0.29e-3)}, 1),                                         # the H100 figures: CPU at 1
    ({1: (0.20e-3, 0.29e-3), 8: (0.60e-3, 0.31e-3)}, 1),                  # CPU for single users only
    ({1: (0.1e-3, 0.3e-3), 8: (0.2e-3, 0.3e-3), 64: (2e-3, 0.4e-3)}, 8),
    ({1: (0.1e-3, 0.3e-3), 8: (0.5e-3, 0.3e-3), 64: (0.1e-3, 0.4e-3)}, 1),  # stops at the first GPU win
    ({8: (0.1e-3, 0.3e-3), 1: (0.1e-3, 0.3e-3)}, 8),                      # order of the dict does not matter
])
def test_cpu_route_limit(timings, want):
    assert cpu_route_limit(timings) == want


class _Fake:
    """A backend whose run time is set by the test (no sleeping: time is measured, not asserted)."""

    def __init__(self, name, inner):
        self.name, self.providers, self.inner, self.rows = name, [name], inner, []
        self.session = inner.session

    def run(self, feeds, need=None):
        self.rows.append(len(next(iter(feeds.values()))))
        return self.inner.run(feeds, need)

    def close(self):
        pass


def test_routed_backend_sends_small_batches_to_the_cpu(bundle_root):
    m = _manifest(bundle_root)
    path = bundle(bundle_root, "softmax") / "model.onnx"
    a, b = (OrtBackend(path, m, "cpu", BackendOptions(threads=1)) for _ in range(2))
    gpu, cpu = _Fake("cuda", a), _Fake("cpu", b)
    names = [i.name for i in a.session.get_inputs()]
    routed = RoutedBackend(gpu, cpu, cpu_rows=8, timings={1: (1e-4, 3e-4), 8: (2e-4, 3e-4), 64: (9e-4, 3e-4)})
    assert routed.name == "cuda" and routed.providers == ["cuda"]
    for n in (1, 8, 9, 64):
        feeds = _feeds(n, seed=n, names=names)
        np.testing.assert_array_equal(routed.run(feeds)["top_items"], a.session.run(a.output_names, feeds)[0])
    assert cpu.rows == [1, 8] and gpu.rows == [9, 64]
    d = routed.describe()["cpu_route"]
    assert d["cpu_up_to_rows"] == 8 and d["calibration_ms"][1] == {"cpu": pytest.approx(0.1), "gpu": pytest.approx(0.3)}


def test_calibration_times_both_backends_and_stops_at_the_first_gpu_win(bundle_root):
    m = _manifest(bundle_root)
    path = bundle(bundle_root, "softmax") / "model.onnx"
    a, b = (OrtBackend(path, m, "cpu", BackendOptions(threads=1)) for _ in range(2))
    gpu, cpu = _Fake("cuda", a), _Fake("cpu", b)
    routed = RoutedBackend.calibrate(gpu, cpu, BUCKETS)
    measured = sorted(routed.timings)
    assert measured == sorted(set(cpu.rows)) == sorted(set(gpu.rows))  # each size on both backends
    runs = 2 + RoutedBackend.CALIBRATION_RUNS
    assert all(cpu.rows.count(x) == runs == gpu.rows.count(x) for x in measured)
    # the rule applied to what was measured; timings past the first GPU win are not taken
    assert routed.cpu_rows == cpu_route_limit(routed.timings)
    last = measured[-1]
    assert measured == [x for x in BUCKETS if x <= last]  # smallest first, none skipped
    if last != BUCKETS[-1]:  # stopped early: the GPU won at `last`, or the CPU got slow there
        assert routed.cpu_rows < last or routed.timings[last][0] > RoutedBackend.CALIBRATION_MAX_S


def test_auto_keeps_a_cpu_backend_alone(bundle_root):
    m = _manifest(bundle_root)
    be = OrtBackend(bundle(bundle_root, "softmax") / "model.onnx", m, "cpu", BackendOptions(threads=1))
    assert with_cpu_route(be, bundle(bundle_root, "softmax") / "model.onnx", m, BackendOptions()) is be


def test_cuda_graph_refusal_falls_back_to_plain_cuda(bundle_root, monkeypatch, caplog):
    """ONNX Runtime refuses graph capture when a node lands on the CPU: the backend then opens
    the session without graphs instead of failing (simulated: no CUDA here)."""
    import logging

    import onnxruntime as ort

    real = ort.InferenceSession
    asked = []

    def session(path, so, providers):
        opts = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
        asked.append(opts.get("enable_cuda_graph"))
        if opts.get("enable_cuda_graph") == "1":
            raise RuntimeError("graph capture needs every node on the CUDA EP")
        return real(path, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_EP, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with caplog.at_level(logging.WARNING, logger="genattn_runtime"):
        be = OrtBackend(bundle(bundle_root, "softmax") / "model.onnx", _manifest(bundle_root), "cuda",
                        BackendOptions(threads=1))
    assert asked == ["1", None] and graph_buckets(be.opts) == () and be._graph is None
    assert "CUDA graphs refused" in caplog.text
    assert be.run(_feeds(3, seed=1, names=be.input_names))["top_items"].shape == (3, K)


def test_auto_skips_a_gpu_pick_that_would_fall_back(bundle_root, monkeypatch, tmp_path, caplog):
    """onnxruntime-gpu lists TensorRT even where its libraries are missing; ONNX Runtime then runs
    the TensorRT pick on CUDA without the CUDA backend's graphs. auto moves on to the next pick
    instead (simulated: both GPU providers listed, neither can start here)."""
    import logging

    import onnxruntime as ort

    from genattn_runtime.backends import TRT_EP, create_backend

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, "CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="genattn_runtime"):
        be = create_backend(_manifest(bundle_root), BackendOptions(threads=1, trt_cache_dir=tmp_path))
    assert be.name == "cpu"
    tried = [r.getMessage() for r in caplog.records if "trying the next backend" in r.getMessage()]
    assert len(tried) == 2 and "'tensorrt-ep'" in tried[0] and "'cuda'" in tried[1], tried
