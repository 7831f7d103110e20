"""Bundle trust: strict manifest schema, digest, file table, graph cross-check, signatures, lifecycle.

Every test edits a copy of one small exported bundle (runtime_fixtures) the way a
careless or hostile user would, and checks the exact error class and that the message
names what was wrong.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_fixtures import (K, MAX_LEN, N_ITEMS, bundle, bundle_root, checkpoint,  # noqa: F401 (fixture)
                              rewrite_manifest)

from genattn_runtime import (BundleError, InferenceError, KeyFileError, Recommender, RecommenderClosedError,
                             SignatureError)
from genattn_runtime.bundle import file_entry, manifest_text, read_manifest, verify_files

pytestmark = pytest.mark.slow


@pytest.fixture
def b(bundle_root, tmp_path) -> Path:
    """A private copy of the softmax bundle."""
    dst = tmp_path / "b"
    shutil.copytree(bundle(bundle_root, "softmax"), dst)
    return dst


def load(path: Path, **kw) -> Recommender:
    return Recommender.load(path, backend="cpu", threads=1, **kw)


def refused(path: Path, cls=BundleError, **kw) -> str:
    """Load must fail with exactly `cls` (not a subclass, not a raw TypeError / ORT error); returns the message."""
    with pytest.raises(Exception) as e:
        load(path, **kw)
    assert type(e.value) is cls, f"{type(e.value).__name__}: {e.value}"
    return str(e.value)


# ---------------------------------------------------------------- malformed manifests

@pytest.mark.parametrize("content, says", [
    (b"null", "must hold a JSON object, got null"),
    (b"[1, 2]", "must hold a JSON object, got array"),
    (b"\xff\xfe{\"format\": 1}", "not UTF-8"),
    (b"{\"format\": ", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_unparsable_manifest(b, content, says):
    (b / "manifest.json").write_bytes(content)
    assert says in refused(b)


def _set(path: str, value):
    """An edit that sets a dotted path (a `del` when value is DELETE)."""
    def edit(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


DELETE = object()


@pytest.mark.parametrize("path, value, field, says", [
    ("max_len", "12", "max_len", "must be an integer, got string"),
    ("max_len", True, "max_len", "must be an integer, got boolean"),
    ("k", 0, "k", "must be in 1..60"),
    ("k", 61, "k", "must be in 1..60"),
    ("n_items", None, "n_items", "must be an integer, got null"),
    ("sampler", DELETE, "sampler", "missing field"),
    ("sampler", [], "sampler", "must be an object, got array"),
    ("sampler.noise_size", -1, "sampler.noise_size", "must be in 0.."),
    ("sampler.deterministic", False, "sampler.deterministic", "noise_size is 0"),
    ("graph.inputs", {"name": "item_seq"}, "graph.inputs", "non-empty array"),
    ("graph.outputs", [], "graph.outputs", "non-empty array"),
    ("tools", ["onnx"], "tools", "must be an object"),
    ("model.n_blocks", "2", "model.n_blocks", "must be an integer"),
    ("model.max_len", 13, "model.max_len", "manifest's max_len is 12"),
    ("parity.fp32", None, "parity.fp32", "must be an object, got null"),
    ("training_metrics.test", [1], "training_metrics.test", "must be an object"),
    ("files.model.onnx", "abc", "files.model.onnx", "must be an object"),
    ("tensorrt", {"tensorrt_version": "10"}, "tensorrt.file", "missing field"),
    ("format_version", "2", None, "format version '2' is not supported"),
    ("manifest_digest", 7, "manifest_digest", "non-empty string"),
    ("manifest_digest", DELETE, "manifest_digest", "missing field"),
])
def test_field_of_wrong_type_or_range(b, path, value, field, says):
    def edit(m):
        if path.startswith("files.model.onnx"):  # the key itself has a dot
            m["files"]["model.onnx"] = value
        else:
            _set(path, value)(m)
    rewrite_manifest(b, edit)
    if path == "manifest_digest":  # rewrite_manifest reseals; undo that to test the digest field itself
        m = json.loads((b / "manifest.json").read_text())
        _set(path, value)(m)
        (b / "manifest.json").write_text(json.dumps(m))
    msg = refused(b)
    assert says in msg
    if field is not None:
        assert f"'{field}'" in msg, msg


def test_file_entry_missing_a_key(b):
    rewrite_manifest(b, lambda m: m["files"]["items.json"].pop("sha256"))
    assert "missing field 'files.items.json.sha256'" in refused(b)
    rewrite_manifest(b, lambda m: m["files"]["items.json"].update(sha256="00" * 32, bytes="505"))
    assert "'files.items.json.bytes' must be an integer" in refused(b)


def test_graph_spec_must_agree_with_the_manifests_own_facts(b):
    """K, max_len and the noise size are stated twice in the manifest; both must agree."""
    rewrite_manifest(b, _set("k", 10))  # outputs still say [batch, 20]
    msg = refused(b)
    assert "'graph.outputs[0].shape'" in msg and "[batch, 10]" in msg
    rewrite_manifest(b, lambda m: m["graph"]["outputs"].reverse())
    assert "'graph.outputs'" in refused(b)


# ---------------------------------------------------------------- the manifest is bound to its contents

@pytest.mark.parametrize("path, value", [("max_len", 10), ("k", 5), ("attention", "vae"), ("created", "yesterday")])
def test_edited_manifest_fails_its_digest(b, path, value):
    m = json.loads((b / "manifest.json").read_text())
    _set(path, value)(m)
    (b / "manifest.json").write_text(json.dumps(m, indent=2))  # digest not recomputed
    assert "manifest_digest does not match the manifest's contents" in refused(b, verify=False)


def test_digest_is_over_the_canonical_form(b):
    """Reformatting (indentation, key order) is not tampering; changing a value is."""
    m = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(dict(reversed(list(m.items())))))
    load(b).close()
    m["parity"]["fp32"]["max_abs_diff"] = 0.5
    (b / "manifest.json").write_text(json.dumps(m))
    assert "manifest_digest does not match" in refused(b)


# ---------------------------------------------------------------- the file table

def _alter_model(b: Path) -> None:
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))


def test_empty_file_table_is_refused(b):
    _alter_model(b)
    rewrite_manifest(b, lambda m: m["files"].clear())
    assert "'files' is empty" in refused(b)


@pytest.mark.parametrize("name", ["model.onnx", "items.json"])
def test_unlisted_needed_file_is_refused(b, name):
    _alter_model(b)
    rewrite_manifest(b, lambda m: m["files"].pop(name))
    msg = refused(b)
    assert f"does not list {name}" in msg and "'files'" in msg


def test_optional_files_must_be_listed_too(b):
    shutil.copy(b / "model.onnx", b / "model.fp16.onnx")
    rewrite_manifest(b, _set("graph.fp16_file", "model.fp16.onnx"))
    assert "does not list model.fp16.onnx" in refused(b)
    (b / "model.engine").write_bytes(b"engine")
    rewrite_manifest(b, lambda m: (m.update(tensorrt={"file": "model.engine"}), _set("graph.fp16_file", None)(m)))
    assert "does not list model.engine" in refused(b)


@pytest.mark.parametrize("name", ["../items.json", "/etc/passwd", "sub/items.json", "..", ".hidden", "a\\b", "c:x"])
def test_only_plain_names_inside_the_bundle(b, name):
    rewrite_manifest(b, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    msg = refused(b, verify=False)
    assert "not a plain file name inside the bundle" in msg and repr(name) in msg
    rewrite_manifest(b, lambda m: (m["files"].pop(name), m.update(tensorrt={"file": name})))
    assert "'tensorrt.file'" in refused(b, verify=False)


def test_symlink_out_of_the_bundle_is_refused(b, tmp_path):
    """Same bytes, same hash: only where it points is wrong."""
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(b / "model.onnx", outside)
    (b / "model.onnx").unlink()
    (b / "model.onnx").symlink_to(outside)
    assert "symbolic link to a file outside the bundle" in refused(b)
    (b / "model.onnx").unlink()
    shutil.copy(outside, b / "real.onnx")
    (b / "model.onnx").symlink_to("real.onnx")  # a link that stays inside is fine
    load(b).close()
    shutil.move(b / "manifest.json", tmp_path / "manifest.json")  # the manifest itself from elsewhere
    (b / "manifest.json").symlink_to(tmp_path / "manifest.json")
    assert "manifest.json is a symbolic link to a file outside the bundle" in refused(b)


def test_non_regular_file_is_refused_without_hanging(b):
    (b / "items.json").unlink()
    os.mkfifo(b / "items.json")  # hashing a FIFO would block forever
    assert "items.json is not a regular file" in refused(b)


# ---------------------------------------------------------------- manifest against the graph

def _consistent(**facts):
    """Edit a fact everywhere the manifest states it, so only the graph can disagree."""
    def edit(m):
        if "max_len" in facts:
            m["max_len"] = m["model"]["max_len"] = facts["max_len"]
            for t in m["graph"]["inputs"]:
                if t["name"] != "noise":
                    t["shape"][1] = facts["max_len"]
        if "k" in facts:
            m["k"] = facts["k"]
            for t in m["graph"]["outputs"][:2]:
                t["shape"][1] = facts["k"]
        if "noise_size" in facts:
            m["sampler"].update(noise_size=facts["noise_size"], deterministic=False)
            m["graph"]["inputs"].append({"name": "noise", "dtype": "float32", "shape": ["batch", facts["noise_size"]]})
        if "no_exclude" in facts:
            m["graph"]["inputs"] = m["graph"]["inputs"][:1]
        if "scores_dtype" in facts:
            m["graph"]["outputs"][1]["dtype"] = facts["scores_dtype"]
    return edit


@pytest.mark.parametrize("facts, says", [
    ({"max_len": 10}, f"item_seq is [batch, {MAX_LEN}], the manifest says [batch, 10]"),
    ({"k": 10}, f"top_items is [batch, {K}], the manifest says [batch, 10]"),
    ({"noise_size": 8}, "has inputs ['item_seq', 'exclude_items'], the manifest says ['item_seq', 'exclude_items', "
                        "'noise']"),
    ({"no_exclude": True}, "the manifest says ['item_seq']"),
])
def test_manifest_disagreeing_with_the_graph_is_refused(b, facts, says):
    rewrite_manifest(b, _consistent(**facts))
    msg = refused(b)
    assert says in msg and "model.onnx" in msg


def test_catalog_size_against_the_items_table(b):
    rewrite_manifest(b, lambda m: m.update(n_items=N_ITEMS - 1) or m["model"].update(n_items=N_ITEMS - 1))
    assert f"items.json has {N_ITEMS} ids" in refused(b)


def test_items_table_of_wrong_types(b):
    items = json.loads((b / "items.json").read_text())
    items["popularity"][3] = "7"
    (b / "items.json").write_text(json.dumps(items))
    rewrite_manifest(b, lambda m: m["files"].update({"items.json": file_entry(b / "items.json")}))
    assert "'popularity'" in refused(b)
    items["popularity"][3], items["item_ids"][2] = 7, 1.5
    (b / "items.json").write_text(json.dumps(items))
    rewrite_manifest(b, lambda m: m["files"].update({"items.json": file_entry(b / "items.json")}))
    assert "'item_ids[2]' must be an integer or a string, got number" in refused(b)
    (b / "items.json").write_bytes(b"\xff" * 10)
    rewrite_manifest(b, lambda m: m["files"].update({"items.json": file_entry(b / "items.json")}))
    assert "not valid UTF-8 JSON" in refused(b)


def _tiny_graph(path: Path, *, k_dim, value: int, n_out: int = K) -> None:
    """A graph with the bundle's input names whose top_items are all `value` and whose K is `n_out`
    (declared as `k_dim`: an int or a symbolic name)."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", MAX_LEN])
           for n in ("item_seq", "exclude_items")]
    outs = [helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", k_dim]),
            helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", k_dim])]
    nodes = [
        helper.make_node("Shape", ["item_seq"], ["shape"], start=0, end=1),
        helper.make_node("Concat", ["shape", "kdim"], ["out_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["out_shape"], ["top_items"],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [value])),
        helper.make_node("ConstantOfShape", ["out_shape"], ["top_scores"],
                         value=helper.make_tensor("s", TensorProto.FLOAT, [1], [0.5])),
    ]
    kdim = helper.make_tensor("kdim", TensorProto.INT64, [1], [n_out])
    model = helper.make_model(helper.make_graph(nodes, "fake", ins, outs, [kdim]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _swap_model(b: Path, make, hashes: bool = True) -> None:
    make(b / "model.onnx")
    if hashes:
        rewrite_manifest(b, lambda m: m["files"].update({"model.onnx": file_entry(b / "model.onnx")}))


def test_probe_run_catches_what_the_graph_does_not_declare(b):
    """A graph that declares [batch, K] symbolically but returns 7 columns, or indices past the catalog."""
    _swap_model(b, lambda p: _tiny_graph(p, k_dim="k", value=1, n_out=7))
    assert f"returns top_items int64 (2, 7), the manifest says int64 (batch, {K})" in refused(b)
    _swap_model(b, lambda p: _tiny_graph(p, k_dim=K, value=N_ITEMS + 5))
    assert f"item indices {N_ITEMS + 5}..{N_ITEMS + 5}, outside the catalog's 0..{N_ITEMS}" in refused(b)


@pytest.mark.parametrize("how", ["truncated", "garbage", "other_graph", "other_graph_hash_stale"])
def test_verify_false_still_refuses_broken_or_swapped_models(bundle_root, b, how):
    """Without hashing, size, schema, the graph cross-check and the probe run still hold."""
    model = b / "model.onnx"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[:-100])
        says = "model.onnx has"
    elif how == "garbage":
        model.write_bytes(os.urandom(model.stat().st_size))  # right size, not a model
        says = "ONNX Runtime cannot load model.onnx"
    else:
        shutil.copy(bundle(bundle_root, "diffusion", stochastic=True) / "model.onnx", model)  # has a noise input
        size = model.stat().st_size
        fix = ({"sha256": "0" * 64, "bytes": size} if how.endswith("stale") else file_entry(model))
        rewrite_manifest(b, lambda m: m["files"].update({"model.onnx": fix}))
        says = "has inputs ['item_seq', 'exclude_items', 'noise'], the manifest says ['item_seq', 'exclude_items']"
    assert says in refused(b, verify=False)


def test_fp16_graph_may_return_half_scores_only_in_its_own_slot(b):
    """The FP16 variant may return top_scores as float16 (older exports did; the manifest's
    spec is the fp32 graph's); the runtime hands out float32 either way. In the fp32 slot a
    graph with float16 scores is refused."""
    import warnings

    import onnx
    from onnx import TensorProto, helper

    from genattn_export.precision import to_fp16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        to_fp16(b / "model.onnx", b / "model.fp16.onnx")
    rewrite_manifest(b, lambda m: (m["graph"].update(fp16_file="model.fp16.onnx"),
                                   m["files"].update({"model.fp16.onnx": file_entry(b / "model.fp16.onnx")})))
    half = load(b, precision="fp16")
    seq = np.zeros((3, MAX_LEN), dtype=np.int64)
    seq[:, -3:] = [1, 2, 3]
    items, scores = half.recommend_indices(seq, k=5)
    assert items.dtype == np.int64 and scores.dtype == np.float32 and scores.shape == (3, 5)
    assert all(type(x) is float for x in half.recommend([1, 2, 3], k=5).scores)
    # A graph whose scores leave as float16, put in the fp32 slot: refused by the IO check.
    g = onnx.load(b / "model.onnx")
    out = next(o for o in g.graph.output if o.name == "top_scores")
    for node in g.graph.node:
        node.output[:] = ["top_scores_fp32" if x == "top_scores" else x for x in node.output]
    g.graph.node.append(helper.make_node("Cast", ["top_scores_fp32"], ["top_scores"], to=TensorProto.FLOAT16))
    out.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(g, b / "model.onnx")
    rewrite_manifest(b, lambda m: m["files"].update({"model.onnx": file_entry(b / "model.onnx")}))
    assert "model.onnx: top_scores is float16, the manifest says float32" in refused(b)


def test_backend_failure_at_call_time_is_typed(b, bundle_root):
    rec = load(b)
    ids = list(rec.items.item_ids)

    class Broken:
        name, providers = "cpu", ["CPUExecutionProvider"]

        def run(self, feeds, need=None):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")

        def close(self):
            pass

    rec._backend = Broken()
    with pytest.raises(InferenceError, match="backend cpu failed to run the graph .*RUNTIME_EXCEPTION"):
        rec.recommend(ids[:3], k=3)
    with pytest.raises(InferenceError):
        rec.recommend_indices(np.zeros((1, MAX_LEN), dtype=np.int64))


# ---------------------------------------------------------------- signatures

def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from genattn.cli import main

    res = CliRunner().invoke(main, ["keygen", "-o", str(tmp_path / name)])
    assert res.exit_code == 0, res.output
    return tmp_path / name, tmp_path / f"{name}.pub"


def _sign(b: Path, key: Path) -> None:
    """Sign a bundle copy the way export does (same function)."""
    from genattn_export.exporter import _signing_key, _write_manifest

    _write_manifest(b, json.loads((b / "manifest.json").read_text()), _signing_key(key))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {"a": _keys(root, "a"), "b": _keys(root, "b")}


def test_keygen_writes_a_private_key_only_its_owner_reads(keys, tmp_path):
    private, public = keys["a"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    from genattn.cli import main

    res = CliRunner().invoke(main, ["keygen", "-o", str(private)])
    assert res.exit_code == 1 and "--force" in res.output and private.read_bytes() == keys["a"][0].read_bytes()


def test_signed_bundle_loads_only_under_its_key(b, keys):
    from genattn_runtime.signing import key_id, load_public_key

    _sign(b, keys["a"][0])
    rec = load(b, trusted_keys=[keys["a"][1]])
    assert rec.signed_by == key_id(load_public_key(keys["a"][1])) == rec.metadata()["signed_by"]
    rec.close()
    load(b, trusted_keys=[keys["b"][1], keys["a"][1].read_bytes()]).close()  # any one trusted key suffices
    msg = refused(b, SignatureError, trusted_keys=[keys["b"][1]])
    assert "no valid signature by a trusted key" in msg
    load(b).close()  # without trusted keys, signatures are not required


def test_unsigned_bundle_refused_under_trusted_keys(b, keys):
    assert "is unsigned" in refused(b, SignatureError, trusted_keys=[keys["a"][1]])


def test_signature_covers_the_manifest_and_through_it_the_files(b, keys):
    _sign(b, keys["a"][0])
    trusted = [keys["a"][1]]
    _alter_model(b)  # hashes catch the file ...
    assert "sha256 of model.onnx does not match" in refused(b, trusted_keys=trusted)
    rewrite_manifest(b, lambda m: m["files"].update({"model.onnx": file_entry(b / "model.onnx")}))
    # ... and rehashing it changes the manifest, which the signature catches
    assert "made for another manifest" in refused(b, SignatureError, trusted_keys=trusted)


def test_resigned_by_an_attacker_claiming_the_trusted_key_id(b, keys):
    from genattn_runtime.signing import key_id, load_public_key

    _sign(b, keys["b"][0])
    env = json.loads((b / "manifest.sig").read_text())
    env["signatures"][0]["keyid"] = key_id(load_public_key(keys["a"][1]))
    (b / "manifest.sig").write_text(json.dumps(env))
    assert "no valid signature by a trusted key" in refused(b, SignatureError, trusted_keys=[keys["a"][1]])


def _flip_sig(env: dict) -> None:
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


@pytest.mark.parametrize("damage, says", [
    (_flip_sig, "no valid signature"),
    (lambda env: env.update(payloadType="application/json"), "not a genattn DSSE signature envelope"),
    (lambda env: env.update(signatures=[]), "not a genattn DSSE signature envelope"),
    (lambda env: env.update(payload="!!"), "payload is not base64"),
])
def test_damaged_signature_envelope(b, keys, damage, says):
    _sign(b, keys["a"][0])
    env = json.loads((b / "manifest.sig").read_text())
    damage(env)
    (b / "manifest.sig").write_text(json.dumps(env))
    assert says in refused(b, SignatureError, trusted_keys=[keys["a"][1]])
    (b / "manifest.sig").write_bytes(b"\xff\x00")
    assert "not valid UTF-8 JSON" in refused(b, SignatureError, trusted_keys=[keys["a"][1]])


def test_bad_trusted_keys(b, keys, tmp_path):
    _sign(b, keys["a"][0])
    assert "is a private key" in refused(b, KeyFileError, trusted_keys=[keys["a"][0]])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    assert "not a PEM public key" in refused(b, KeyFileError, trusted_keys=[junk])
    assert "unreadable" in refused(b, KeyFileError, trusted_keys=[tmp_path / "missing.pub"])
    assert "trusted_keys is empty" in refused(b, KeyFileError, trusted_keys=[])
    with pytest.raises(ValueError, match="verify=False cannot be combined with trusted_keys"):
        load(b, verify=False, trusted_keys=[keys["a"][1]])


def test_export_sign_inspect_and_recommend_with_trusted_keys(bundle_root, keys, tmp_path):
    """End to end through the command line: export --sign, inspect and recommend --trusted-key."""
    from genattn.cli import main

    out = tmp_path / "signed"
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(checkpoint(bundle_root, "softmax")), "-o", str(out), "-k", str(K),
                               "--verify-users", "0", "--sign", str(keys["a"][0])])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.sig").is_file() and "manifest.sig" not in read_manifest(out).raw["files"]
    res = runner.invoke(main, ["inspect", str(out), "--trusted-key", str(keys["a"][1])])
    assert res.exit_code == 0, res.output
    assert "signature   ok, signed by trusted key sha256:" in res.output
    res = runner.invoke(main, ["inspect", str(out), "--trusted-key", str(keys["b"][1])])
    assert res.exit_code == 1 and "no valid signature by a trusted key" in res.output
    res = runner.invoke(main, ["recommend", str(out), "--history", "1,2,3", "--threads", "1",
                               "--trusted-key", str(keys["b"][1]), "--trusted-key", str(keys["a"][1])])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["items"]) == 10
    res = runner.invoke(main, ["recommend", str(out), "--history", "1,2,3", "--threads", "1",
                               "--trusted-key", str(keys["b"][1])])
    assert res.exit_code == 1 and "no valid signature by a trusted key" in res.output
    assert "Traceback" not in res.output


def test_serve_loads_only_under_a_trusted_key(b, keys, monkeypatch):
    import genattn_runtime.service as service
    from genattn.cli import main

    _sign(b, keys["a"][0])
    served = []
    monkeypatch.setattr(service, "serve", lambda rec, **kw: served.append(rec))  # no real server
    args = ["serve", str(b), "--port", "0", "--threads", "1", "--backend", "cpu"]
    res = CliRunner().invoke(main, args + ["--trusted-key", str(keys["b"][1])])
    assert res.exit_code == 1 and "no valid signature by a trusted key" in res.output and not served
    res = CliRunner().invoke(main, args + ["--trusted-key", str(keys["a"][1])])
    assert res.exit_code == 0, res.output
    assert served[0].signed_by and served[0].signed_by.startswith("sha256:")


def test_runtime_imports_nothing_of_the_training_package():
    """Static: no module of genattn_runtime imports genattn (or the exporter), not even lazily."""
    import ast

    import genattn_runtime

    bad = []
    for f in sorted(Path(genattn_runtime.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[0] in ("genattn", "genattn_export", "torch")]
    assert not bad, bad


def test_export_with_a_bad_key_fails_before_the_work(bundle_root, tmp_path, keys):
    from genattn_export import ExportError, ExportOptions, export_bundle

    t = time.perf_counter()
    with pytest.raises(ExportError, match="is a .*Ed25519|not a PEM private key"):
        export_bundle(checkpoint(bundle_root, "softmax"), tmp_path / "x", ExportOptions(sign_key=keys["a"][1]))
    assert time.perf_counter() - t < 2 and not (tmp_path / "x").exists()


def test_inspect_reports_signature_state(b, keys):
    from genattn.cli import main

    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code == 0 and "signature   unsigned" in res.output
    _sign(b, keys["a"][0])
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert "signature   signed by sha256:" in res.output and "not checked" in res.output
    verify_files(read_manifest(b))  # signing touched only manifest.json / manifest.sig


# ---------------------------------------------------------------- lifecycle

def test_calls_after_close_raise_a_typed_error(b):
    rec = load(b)
    ids = list(rec.items.item_ids)
    prep = rec.prepare(ids[:3], k=3)
    with rec:
        assert len(rec.recommend(ids[:3], k=3).items) == 3
    assert rec.closed
    for call in (lambda: rec.recommend(ids[:3], k=3), lambda: rec.recommend([], k=3),  # fallback-only: no backend
                 lambda: rec.run_prepared([prep]), lambda: rec.prepare(ids[:3]), lambda: rec.recommend_batch([]),
                 lambda: rec.recommend_indices(np.zeros((1, MAX_LEN), dtype=np.int64)),
                 lambda: rec.recommend_indices(np.zeros((0, MAX_LEN), dtype=np.int64))):
        with pytest.raises(RecommenderClosedError, match="closed"):
            call()
    rec.close()  # idempotent


def test_close_racing_running_calls(b):
    """close() while calls run in other threads: running calls finish on a live backend, later ones
    get RecommenderClosedError, nothing else is ever raised, and the backend is released once."""
    rec = load(b)
    ids = list(rec.items.item_ids)
    real = rec._backend
    state = {"in_flight": 0, "max_in_flight": 0, "closed_with_in_flight": None, "closes": 0, "runs_after_close": 0}
    lock = threading.Lock()

    class Slow:  # the real ORT backend, slowed so close() lands while calls are inside run()
        name, providers = real.name, real.providers

        def run(self, feeds, need=None):
            with lock:
                if state["closes"]:
                    state["runs_after_close"] += 1
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            try:
                time.sleep(0.01)
                return real.run(feeds, need)
            finally:
                with lock:
                    state["in_flight"] -= 1

        def close(self):
            with lock:
                state["closes"] += 1
                state["closed_with_in_flight"] = state["in_flight"]
            real.close()

    rec._backend = Slow()
    started = threading.Barrier(9)
    results: dict[int, list] = {t: [] for t in range(8)}

    def worker(t: int) -> None:
        started.wait()
        while True:
            try:
                r = rec.recommend(ids[t:t + 4], k=5)
                assert len(r.items) == 5
                results[t].append("ok")
            except RecommenderClosedError:
                results[t].append("closed")
                return
            except Exception as e:  # noqa: BLE001 - any other error is the failure under test
                results[t].append(e)
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    started.wait()
    time.sleep(0.05)  # several rounds of calls in flight
    rec.close()
    for th in threads:
        th.join(timeout=10)
    assert state["closes"] == 1 and state["closed_with_in_flight"] == 0 and state["runs_after_close"] == 0
    assert state["max_in_flight"] > 1  # the race was real: concurrent calls were inside the backend
    for t, seq in results.items():
        assert seq[-1] == "closed" and all(x == "ok" for x in seq[:-1]), (t, seq[-3:])
    assert real.session is None


# ---------------------------------------------------------------- what runs is what was verified

@pytest.mark.parametrize("name", ["model.onnx", "items.json"])
def test_a_file_swapped_after_it_was_hashed_is_not_the_one_served(bundle_root, tmp_path, monkeypatch, name):
    """The loader hashes the bytes it hands to ONNX Runtime and to the items reader: replacing the
    file on disk right after it was read changes nothing that runs."""
    from genattn_runtime.bundle import Manifest

    src, other = bundle(bundle_root, "softmax"), bundle(bundle_root, "vae")
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    hist = [1, 2, 3, 4]
    want = Recommender.load(src, backend="cpu", threads=1).recommend(hist, k=5)
    if name == "model.onnx":  # the swapped-in file really serves something else
        assert Recommender.load(other, backend="cpu", threads=1).recommend(hist, k=5).scores != want.scores
    read = Manifest.read

    def read_then_swap(self, what):
        data = read(self, what)
        if what == name:
            if name == "model.onnx":
                shutil.copy(other / name, dst / name)
            else:  # a catalog whose ids are all different
                items = json.loads(data)
                items["item_ids"] = [f"x{i}" for i in items["item_ids"]]
                (dst / name).write_text(json.dumps(items))
        return data

    monkeypatch.setattr(Manifest, "read", read_then_swap)
    got = Recommender.load(dst, backend="cpu", threads=1).recommend(hist, k=5)
    assert (got.items, got.scores) == (want.items, want.scores)


def test_a_file_changed_before_it_is_read_is_refused(bundle_root, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle(bundle_root, "softmax"), dst)
    data = bytearray((dst / "model.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size: only the hash can tell
    (dst / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 of model.onnx does not match"):
        Recommender.load(dst, backend="cpu", threads=1)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load model.onnx"):  # verify=False: sizes only
        Recommender.load(dst, backend="cpu", threads=1, verify=False)
