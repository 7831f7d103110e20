"""Command-line failures: every one is a single `Error: ...` line on stderr with a non-zero
exit, never a traceback; the output path is checked before the work and written atomically;
a successful run is quiet unless -v is given."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_fixtures import bundle, bundle_root, ids, rec  # noqa: F401 (fixtures)

from genattn.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _restore_root_level():
    """The commands set the root logger's level; keep other tests' logging as it was."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture(scope="module")
def b(bundle_root) -> str:
    return str(bundle(bundle_root, "softmax"))


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_error_line(res, *needles, code=None):
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


def broken_bundle(src: str, root: Path, variant: str) -> Path:
    """A copy of the bundle with a malformed manifest."""
    raw = json.loads((Path(src) / "manifest.json").read_text())
    content = {
        "null": b"null",
        "not-utf8": b"\xff\xfe{\"format\": 1}",
        "not-json": b"{\"format\": ",
        "missing-key": json.dumps({k: v for k, v in raw.items() if k != "sampler"}).encode(),
        "wrong-type": json.dumps({**raw, "graph": "x", "max_len": "abc"}).encode(),
        "list-files": json.dumps({**raw, "files": [1, 2]}).encode(),
    }[variant]
    dst = root / f"bundle-{variant}"
    shutil.copytree(src, dst)
    (dst / "manifest.json").write_bytes(content)
    return dst


# ---------------------------------------------------------------- quiet success, one-line failures

def test_success_prints_no_log_line_without_v(b, ids):
    """In a fresh process, through the `genattn` group (which sets up INFO logging for training)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genattn.cli", "recommend", b, "--history", f"{ids[0]},{ids[1]}", "-k", "3",
           "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(json.loads(r.stdout)["items"]) == 3
    r = subprocess.run(cmd + ["-v"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "INFO genattn_runtime" in r.stderr and "backend" in r.stderr


def test_input_errors(b, tmp_path):
    assert_one_error_line(run("recommend", b, "--input", tmp_path / "nope.jsonl"), "cannot read --input",
                          "No such file")
    assert_one_error_line(run("recommend", b, "--input", tmp_path), "is a directory")
    assert_one_error_line(run("recommend", b), "exactly one of --history or --input", code=2)
    assert_one_error_line(run("recommend", b, "--history", "1", "-k", "x"), "'x' is not a valid integer", code=2)
    assert_one_error_line(run("recommend", b, "--history", "[1,"), "not valid JSON", code=2)
    assert_one_error_line(run("recommend", b, "--history", "1", "-k", "999", "--threads", "1"), "k must be in")
    assert_one_error_line(run("recommend", tmp_path / "no-bundle", "--history", "1"), "no-bundle")


def test_undecodable_lines_fail_alone(b, rec, ids, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(ids[:2]).encode() + b"\n"  # a BOM on line 1 is fine
                    + b"\xff\xfe\x00garbage\n"
                    + b"{\"history\": [1, \n"
                    + json.dumps({"history": ids[2:4], "k": 2}).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    res = run("recommend", b, "--input", src, "--output", out, "--threads", "1")
    assert_one_error_line(res, "2 of 4 line(s) failed", code=1)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["items"] == rec.recommend(ids[:2], k=10).items
    assert "not valid UTF-8" in rows[1]["error"] and "not valid JSON" in rows[2]["error"]
    assert rows[3]["items"] == rec.recommend(ids[2:4], k=2).items
    # a binary file: every line answered with its error, still one line on stderr
    src.write_bytes(os.urandom(4096).replace(b"\n", b"\x00") + b"\n" + bytes(range(128, 256)) + b"\n")
    assert_one_error_line(run("recommend", b, "--input", src, "--threads", "1"), "2 of 2 line(s) failed")


@pytest.mark.parametrize("variant", ["null", "not-utf8", "not-json", "missing-key", "wrong-type", "list-files"])
def test_malformed_manifest_is_one_line(b, tmp_path, variant):
    bad = broken_bundle(b, tmp_path, variant)
    assert_one_error_line(run("recommend", bad, "--history", "1", "--threads", "1"))
    assert_one_error_line(run("inspect", bad))
    assert_one_error_line(run("runtime-timings", bad, "--repeats", "1", "--threads", "1"))
    assert_one_error_line(run("serve", bad, "--port", "0", "--threads", "1"))


def test_serve_port_in_use(b):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_error_line(run("serve", b, "--port", port), f"cannot listen on 127.0.0.1:{port}")


def test_triton_queue_policy_is_refused_on_the_fastapi_engine(b):
    assert_one_error_line(run("serve", b, "--triton-queue-policy"), "--triton-queue-policy applies to --engine triton")


def test_serve_keep_alive_reaches_uvicorn(b, monkeypatch):
    import genattn_runtime.service as service

    seen = {}
    monkeypatch.setattr(service, "serve", lambda rec, **kw: seen.update(kw))
    res = run("serve", b, "--port", "0", "--threads", "1", "--backend", "cpu", "--keep-alive-s", "30")
    assert res.exit_code == 0, res.output
    assert seen["keep_alive_s"] == 30.0
    assert_one_error_line(run("serve", b, "--keep-alive-s", "0"), "--keep-alive-s")


def test_engines_never_import_the_cli():
    """One way: the runtime's CLI imports the engines; an engine's `python -m` entry reaches the
    CLI through the package's entry point (genattn_runtime/__main__.py), never by an import."""
    import ast

    import genattn_runtime

    root = Path(genattn_runtime.__file__).parent
    for f in sorted(root.rglob("*.py")):
        if f.relative_to(root).as_posix() in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            else:
                continue
            assert not any(m.split(".")[-1] == "cli" for m in mods), f"{f.name}:{node.lineno} imports the CLI"


@pytest.mark.parametrize("module,args,needle", [
    ("genattn_runtime.service", ["{tmp}/missing", "--port", "0"], "Invalid value for 'BUNDLE'"),
    ("genattn_runtime.triton_engine", ["{tmp}", "--http-port", "8000", "--grpc-port", "8000"],
     "the Triton engine needs three different ports"),  # so --engine triton was applied
])
def test_engine_entry_points_are_serve(tmp_path, module, args, needle):
    r = subprocess.run([sys.executable, "-m", module, *(a.format(tmp=tmp_path) for a in args)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr


# ---------------------------------------------------------------- output: checked first, written atomically

@pytest.mark.parametrize("where", ["missing-folder", "file-as-folder", "directory"])
def test_unwritable_output_fails_before_the_work(b, tmp_path, where):
    (tmp_path / "plain-file").write_text("x")
    target = {"missing-folder": tmp_path / "no" / "out.jsonl",
              "file-as-folder": tmp_path / "plain-file" / "out.jsonl",
              "directory": tmp_path}[where]
    src = tmp_path / "in.jsonl"
    src.write_text("[1, 2]\n")
    assert_one_error_line(run("recommend", b, "--input", src, "--output", target), "--output")
    # checked before the bundle is even read: a broken bundle is not what gets reported
    bad = broken_bundle(b, tmp_path / "bad", "null")
    assert_one_error_line(run("recommend", bad, "--history", "1", "--output", target), "--output")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(b, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_one_error_line(run("recommend", b, "--history", "1", "--output", ro / "out.jsonl"),
                              "cannot write --output")
    finally:
        ro.chmod(0o755)


def test_output_is_atomic(b, rec, ids, tmp_path, monkeypatch):
    from genattn_runtime.recommender import Recommender

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(ids[i:i + 2]) + "\n" for i in range(6)))
    out = tmp_path / "out.jsonl"
    out.write_text("previous run\n")
    calls = []
    real = Recommender.run_prepared

    def failing_second_run(self, preps):
        calls.append(len(preps))
        if len(calls) == 2:
            raise RuntimeError("backend died\nmid-run")
        return real(self, preps)

    monkeypatch.setattr(Recommender, "run_prepared", failing_second_run)
    res = run("recommend", b, "--input", src, "--output", out, "--batch-size", "2", "--threads", "1")
    assert_one_error_line(res, "RuntimeError: backend died mid-run")
    assert out.read_text() == "previous run\n"  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary left
    monkeypatch.undo()

    res = run("recommend", b, "--input", src, "--output", out, "--batch-size", "2", "--threads", "1")
    assert res.exit_code == 0 and res.stderr == "", res.stderr
    assert len(out.read_text().splitlines()) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    new = tmp_path / "single.json"
    res = run("recommend", b, "--history", ids[0], "-k", "2", "--output", new, "--threads", "1")
    assert res.exit_code == 0 and json.loads(new.read_text())["items"] == rec.recommend([ids[0]], k=2).items
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it


def test_train_flags_reach_the_config_and_bad_values_are_one_line(tmp_path):
    out = tmp_path / "ck"
    res = run("train", "--data", "synthetic", "--synthetic-users", 60, "--synthetic-items", 40, "--max-len", 8,
              "--epochs", 1, "--device", "cpu", "--threads", 1, "--loss", "sampled", "--negatives", 8,
              "--negative-sampler", "mixed", "--no-in-batch", "--batch-size", 16, "--eval-users", 30,
              "--no-progress", "-o", out)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    for k, v in {"loss": "sampled", "negatives": 8, "negative_sampler": "mixed", "in_batch_negatives": False,
                 "batch_size": 16, "eval_users": 30}.items():
        assert cfg["train"][k] == v, k
    assert cfg["data"]["synthetic_items"] == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_items"] <= 40 and metrics["events_per_s"][0] > 0 and metrics["data_seconds"] >= 0
    assert_one_error_line(run("train", "--data", "synthetic", "--negatives", -1, "-o", tmp_path / "x"),
                          "negatives must be >= 0")
    assert not (tmp_path / "x").exists()
