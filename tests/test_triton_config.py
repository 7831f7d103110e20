"""genattn_runtime.triton_config: the one config.pbtxt renderer / reader (Triton's ModelConfig message,
protobuf text format) that the exporter's model repository and the Triton engine both go through.
Needs tritonclient (the dev extra), not pytriton or a server."""
from __future__ import annotations

import json
import sys

import pytest

from genattn_export.triton import TritonOptions, check_triton_target, triton_config, write_triton_repo
from genattn_runtime import triton_config as pbtxt
from genattn_runtime.errors import GenattnRuntimeError
from genattn_runtime.triton_config import (TritonConfigError, TritonConfigUnavailable, parse_config, read_config,
                                           render_config, write_config)
from genattn_runtime.triton_engine import EngineConfig, model_config, write_repository

GRAPH = {
    "inputs": [{"name": "item_seq", "dtype": "int64", "shape": ["batch", 50]},
               {"name": "exclude_items", "dtype": "int64", "shape": ["batch", 50]}],
    "outputs": [{"name": "top_items", "dtype": "int64", "shape": ["batch", 100]},
                {"name": "top_scores", "dtype": "float32", "shape": ["batch", 100]},
                {"name": "flag", "dtype": "bool", "shape": ["batch"]}],
}


def _messages():
    """One config of each kind this project writes."""
    cfg = EngineConfig(bundle='/b/"quoted"\\x', max_users=32, max_wait_ms=1.5, instances=2)
    return {
        "onnxruntime": triton_config("rec", "onnxruntime", GRAPH["inputs"], GRAPH["outputs"], TritonOptions()),
        "tensorrt": triton_config("rec_trt", "tensorrt", GRAPH["inputs"], GRAPH["outputs"], TritonOptions()),
        "engine, int ids": model_config(cfg, string_ids=False),
        "engine, string ids": model_config(cfg, string_ids=True),
    }


@pytest.mark.parametrize("kind", list(_messages()))
def test_round_trip_render_parse_equal(kind, tmp_path):
    msg = _messages()[kind]
    assert parse_config(render_config(msg)) == msg
    path = write_config(tmp_path / "m" / "config.pbtxt", msg)
    assert read_config(path) == msg
    assert [p.name for p in path.parent.iterdir()] == ["config.pbtxt"]  # no temporary file left


def test_engine_parameters_survive_the_text_format():
    cfg = EngineConfig(bundle='/b/"quoted"\\x', max_users=32, max_queue=7, request_timeout_s=2.0)
    msg = parse_config(render_config(model_config(cfg, string_ids=False)))
    assert EngineConfig(**json.loads(msg.parameters["genattn"].string_value)) == cfg


def test_malformed_file_is_a_typed_error_naming_the_file(tmp_path):
    path = tmp_path / "rec" / "config.pbtxt"
    good = render_config(_messages()["onnxruntime"])
    for text, what in [(good.replace("input {", "input [", 1), r"line \d+: .*Expected"),
                       (good + "max_batch_siz: 4\n", r"line \d+: .*no field named \"max_batch_siz\""),
                       (good.replace("KIND_CPU", "KIND_TPU"), "KIND_TPU"),
                       (good.replace('name: "rec"\n', "", 1), "name is missing")]:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        with pytest.raises(TritonConfigError, match=what) as e:
            read_config(path)
        assert str(e.value).startswith(f"{path}"), str(e.value)
        assert isinstance(e.value, GenattnRuntimeError) and isinstance(e.value, ValueError)
    with pytest.raises(TritonConfigError, match=f"{tmp_path / 'missing.pbtxt'}: cannot read"):
        read_config(tmp_path / "missing.pbtxt")


def test_unknown_field_in_a_dict_is_refused():
    with pytest.raises(TritonConfigError, match="model 'x'.*no field named \"max_users\""):
        pbtxt.config_message({"name": "x", "max_users": 3}, source="config.pbtxt of Triton model 'x'")
    with pytest.raises(TritonConfigError, match="neither platform nor backend"):
        render_config({"name": "x", "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [1]}]})


def test_a_config_triton_would_refuse_is_never_written(tmp_path):
    bad = _messages()["onnxruntime"]
    bad.max_batch_size = 16  # below the preferred batch sizes 32, 64
    with pytest.raises(TritonConfigError, match="preferred_batch_size 32"):
        write_config(tmp_path / "config.pbtxt", bad)
    assert list(tmp_path.iterdir()) == []


def test_engine_and_exporter_render_through_the_same_function(tmp_path, monkeypatch):
    rendered = []
    real = pbtxt.render_config

    def spy(config, **kw):
        rendered.append(config.name)
        return real(config, **kw)

    monkeypatch.setattr(pbtxt, "render_config", spy)
    write_repository(EngineConfig(bundle="/b"), tmp_path / "engine", string_ids=False)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "items.json").write_text('{"item_ids": [1]}')
    write_triton_repo(tmp_path / "repo", {"graph": GRAPH}, tmp_path / "model.onnx", None,
                      TritonOptions(model_name="rec"))
    assert rendered == ["genattn", "rec"]
    assert (tmp_path / "engine" / "genattn" / "config.pbtxt").read_text().startswith(pbtxt.HEADER)
    assert (tmp_path / "repo" / "rec" / "config.pbtxt").read_text().startswith(pbtxt.HEADER)


def test_missing_tritonclient_is_a_typed_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    pbtxt.model_config_pb2.cache_clear()
    try:
        with pytest.raises(TritonConfigUnavailable, match=r"pip install 'tritonclient\[grpc\]"):
            parse_config('name: "x"')
        with pytest.raises(TritonConfigUnavailable):  # the export's pre-check, before any work
            check_triton_target(tmp_path / "repo", "rec", tmp_path / "bundle", ["onnxruntime"])
    finally:
        pbtxt.model_config_pb2.cache_clear()
