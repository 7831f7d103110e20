"""The serving limits' defaults come from one module: `genattn serve`, the FastAPI engine and the
Triton engine's EngineConfig must agree with it."""
from __future__ import annotations

import inspect

from genattn_runtime import limits
from genattn_runtime.cli import serve_cmd
from genattn_runtime.triton_engine import EngineConfig

FIELDS = {"max_batch": "MAX_BATCH", "max_wait_ms": "MAX_WAIT_MS", "max_body_bytes": "MAX_BODY_BYTES",
          "max_users": "MAX_USERS", "max_queue": "MAX_QUEUE", "request_timeout_s": "REQUEST_TIMEOUT_S",
          "body_timeout_s": "BODY_TIMEOUT_S", "keep_alive_s": "KEEP_ALIVE_S"}


def test_the_cli_serves_with_the_shared_defaults() -> None:
    defaults = {p.name: p.default for p in serve_cmd.params}
    for name, const in FIELDS.items():
        assert defaults[name] == getattr(limits, const), name


def test_the_triton_engine_defaults_to_the_same_limits() -> None:
    cfg = EngineConfig(bundle="b")
    for name, const in FIELDS.items():
        if hasattr(cfg, name):
            assert getattr(cfg, name) == getattr(limits, const), name


def test_the_fastapi_engine_defaults_to_the_same_limits() -> None:
    import pytest
    service = pytest.importorskip("genattn_runtime.service", reason="the FastAPI engine needs genattn[serve]")
    sig = {**inspect.signature(service.create_app).parameters, **inspect.signature(service.serve).parameters}
    for name, const in FIELDS.items():
        if name in sig:
            assert sig[name].default == getattr(limits, const), name
