"""Click commands of the runtime; genattn/cli.py registers them as `genattn recommend`,
`genattn serve` (and `genattn runtime-timings`). `python -m genattn_runtime` (or
`python -m genattn_runtime.cli`) runs them without the training stack installed. This module
imports the engines (service, triton_engine), never the reverse.

    genattn recommend BUNDLE --history 12,7,33 -k 10
    genattn recommend BUNDLE --input users.jsonl --output recs.jsonl
    genattn serve BUNDLE --port 8000 --max-batch 64 --max-wait-ms 0
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from . import limits
from .backends import BACKENDS, BackendOptions
from .errors import GenattnRuntimeError, InputError

LINE_FIELDS = {"history", "times", "k", "exclude_seen", "seed", "diversity", "aggregate"}
ID_FIELDS = ("id", "user", "user_id")

log = logging.getLogger("genattn_runtime.cli")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "failed"


class _UsageFailure(click.ClickException):
    exit_code = 2  # click's code for usage errors


class OneLineErrors(click.Command):
    """A command whose every failure is one `Error: ...` line on stderr and a non-zero exit:
    usage errors without the usage screen, unexpected exceptions without a traceback
    (it is logged at DEBUG: `genattn -v ...`)."""

    @staticmethod
    def _usage(e: click.UsageError) -> click.ClickException:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        return _UsageFailure(_one_line(e.format_message()) + hint)

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise self._usage(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise self._usage(e) from None
        except click.ClickException as e:
            e.message = _one_line(e.message)
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except OSError as e:
            if e.errno == errno.EPIPE:  # stdout closed early (`| head`): click handles it
                raise
            log.debug("%s failed", ctx.command_path, exc_info=True)
            raise click.ClickException(_one_line(f"{type(e).__name__}: {e}")) from None
        except Exception as e:
            log.debug("%s failed", ctx.command_path, exc_info=True)
            raise click.ClickException(_one_line(f"{type(e).__name__}: {e}")) from None

_bundle_arg = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
_backend_opt = click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                            help="inference backend; 'auto' picks the fastest that works here")
_strict_opt = click.option("--strict", is_flag=True, help="fail instead of falling back when the backend cannot run")
_threads_opt = click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                            help="ONNX Runtime intra-op threads (0 = physical cores)")


def _ann_opts(f):
    """--nprobe / --ef-search: an ANN bundle's search breadth instead of the export's."""
    f = click.option("--ef-search", type=click.IntRange(min=1),
                     help="hnsw bundles: search breadth instead of the export's (higher: better recall, slower)")(f)
    return click.option("--nprobe", type=click.IntRange(min=1),
                        help="ivfpq bundles: lists searched instead of the export's (higher: better recall, "
                             "slower)")(f)


_unknown_opt = click.option("--unknown", "unknown", type=click.Choice(["skip", "error"]), default="skip",
                            show_default=True, help="item ids not in the catalog: skip and report, or fail")
_trust_opt = click.option("--trusted-key", "trusted_keys", multiple=True,
                          type=click.Path(exists=True, dir_okay=False, path_type=Path),
                          help="Ed25519 public key (PEM), repeatable: load the bundle only if it is signed by one "
                               "of them (genattn export --sign)")


def _logging(verbose: bool, default: int = logging.WARNING) -> None:
    ctx = click.get_current_context(silent=True)
    group_verbose = ctx is not None and bool(ctx.find_root().params.get("verbose"))  # `genattn -v ...`
    level = logging.DEBUG if group_verbose else logging.INFO if verbose else default
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # basicConfig does nothing when logging is set up already, as the `genattn` group does
    # (INFO, for training): set the level so that these commands stay quiet without -v.
    logging.getLogger().setLevel(level)


class _Output:
    """--output written atomically: a temporary file beside the target, renamed over it by
    commit(); discarded on failure. Creating it checks the path before any work is done.
    Without a path, lines go to stdout."""

    def __init__(self, path: str | None):
        self.path, self.tmp, self.committed = path, None, False
        if path is None:
            self.f = sys.stdout
            return
        target = Path(path)
        if target.is_dir():
            raise click.ClickException(f"--output {path} is a directory")
        parent = target.parent
        if not parent.is_dir():
            raise click.ClickException(f"cannot write --output {path}: folder {parent} does not exist")
        try:
            fd, self.tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as e:
            raise click.ClickException(f"cannot write --output {path}: {e.strerror or e}") from None
        try:  # mkstemp makes 0600; give the file the mode a plain open() would
            mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
            os.fchmod(fd, mode)
        except OSError:
            pass
        self.f = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self.f.write(text)

    def commit(self) -> None:
        if self.tmp is None:
            self.f.flush()
            return
        self.f.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise click.ClickException(f"cannot write --output {self.path}: {e.strerror or e}") from None
        self.committed = True

    def __enter__(self) -> "_Output":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and not self.committed:
            self.f.close()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_input(path: str):
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)  # bytes, as a file given by path
    try:
        return open(path, "rb")  # bytes: a line that is not UTF-8 fails alone, like bad JSON
    except OSError as e:
        raise click.ClickException(f"cannot read --input {path}: {e.strerror or e}") from None


def _load(bundle: Path, flags: dict, unknown: str = "skip", trusted_keys=()):
    """The bundle opened with the backend options among a command's parsed flags (`ctx.params`:
    --backend, --strict, --threads, --trt-cache-dir, --nprobe, --ef-search; the rest are ignored)."""
    from .recommender import Recommender

    try:
        return Recommender.load(bundle, BackendOptions.from_flags(flags), unknown_items=unknown,
                                trusted_keys=list(trusted_keys) or None)
    except (GenattnRuntimeError, ValueError) as e:  # ValueError: an option the bundle cannot take
        raise click.ClickException(str(e)) from None


def _parse_history(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise click.BadParameter(f"not valid JSON: {e}", param_hint="--history") from None
        if not isinstance(value, list):
            raise click.BadParameter("JSON form must be a list of ids", param_hint="--history")
        return value
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_times(text: str | None) -> list | None:
    """--times: numbers, comma-separated or a JSON list (the checks of their order and count are
    Recommender.prepare's, as for the HTTP field)."""
    if text is None:
        return None
    text = text.strip()
    try:
        value = json.loads(text) if text.startswith("[") else [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected numbers (seconds), comma-separated or a JSON list: {e}",
                                 param_hint="--times") from None
    if not isinstance(value, list):
        raise click.BadParameter("JSON form must be a list of numbers", param_hint="--times")
    return value


@click.command("recommend", cls=OneLineErrors)
@_bundle_arg
@click.option("--history", help="one user's item ids, oldest first: 12,7,33 (or a JSON list)")
@click.option("--times", help="with --history: when each event happened, in seconds (Unix time), e.g. "
              "881250949,881251012,881252000; bundles over time gaps need it (a line's own field: \"times\")")
@click.option("--input", "input_path", type=click.Path(allow_dash=True, dir_okay=False),
              help="JSON lines file ('-' = stdin): {\"history\": [...], \"k\": 10} or a bare list per line")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, writable=True),
              help="write JSON lines here instead of stdout")
@click.option("-k", "--k", "k", type=int, default=10, show_default=True, help="items per user")
@click.option("--include-seen", is_flag=True, help="allow items of the history in the results")
@click.option("--seed", type=click.IntRange(min=0), help="noise seed of a stochastic bundle "
              "(batch mode: line i uses seed+i unless the line has its own)")
@click.option("--diversity", type=click.FloatRange(min=0.0),
              help="stochastic bundle: the prior's sampling temperature (0 deterministic, 1 the trained prior, "
                   "more = more varied lists; a line's own field wins)")
@click.option("--aggregate", type=click.Choice(["mean", "interleave", "vote"]),
              help="bundle exported with --samples >= 2: build each list from the samples' mean scores (the "
                   "default), their lists in turn (interleave) or by agreement (vote); a line's own field wins")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="batch mode: lines per session run")
@click.option("--no-progress", is_flag=True, help="batch mode: no progress bar")
@_backend_opt
@_strict_opt
@_unknown_opt
@_trust_opt
@_threads_opt
@_ann_opts
@click.option("-v", "--verbose", is_flag=True, help="log the backend choice and timings to stderr")
def recommend_cmd(bundle, history, times, input_path, output_path, k, include_seen, seed, diversity, aggregate,
                  batch_size, no_progress, backend, strict, unknown, threads, verbose, trusted_keys, nprobe, ef_search):
    """Top-k items for one history (--history) or a JSON-lines file (--input)."""
    _logging(verbose)
    if (history is None) == (input_path is None):
        raise click.UsageError("give exactly one of --history or --input")
    if times is not None and history is None:
        raise click.UsageError("--times goes with --history (in an --input file, give each line a \"times\" field)")
    stamps = _parse_times(times)
    ctx = click.get_current_context()
    out = ctx.with_resource(_Output(output_path))  # before the work: fail now, not after it
    src = ctx.with_resource(_open_input(input_path)) if input_path is not None else None
    rec = _load(bundle, ctx.params, unknown, trusted_keys)
    defaults = {"k": k, "exclude_seen": not include_seen, "diversity": diversity, "aggregate": aggregate}
    if history is not None:
        ids = _parse_history(history)
        try:
            result = rec.recommend(ids, seed=seed, times=stamps, **defaults)
        except InputError as e:
            raise click.ClickException(str(e)) from None
        out.write(json.dumps(result.to_dict()) + "\n")
        out.commit()
        return
    failed, total = _batch(rec, src, input_path == "-", out, defaults, seed, batch_size, no_progress)
    out.commit()  # bad lines are answered in the output too: it is complete
    if failed:
        raise click.ClickException(f"{failed} of {total} line(s) failed (see their \"error\" field in the output)")


def _batch(rec, src, is_stdin: bool, dst: _Output, defaults: dict, seed: int | None,
           batch_size: int, no_progress: bool) -> tuple[int, int]:
    """Answer a JSON-lines file; `defaults`: the flags' k, exclude_seen, diversity and aggregate."""
    from tqdm import tqdm

    from .errors import UnknownItemError

    total = None
    if not is_stdin:
        total = sum(1 for line in src if line.strip())
        src.seek(0)
    # No bar when stderr is not a terminal (disable=None): logs and CI output stay clean.
    bar = tqdm(total=total, unit="line", file=sys.stderr, disable=True if no_progress or is_stdin else None,
               dynamic_ncols=True)
    failed = n = 0
    pending: list = []  # (line_no, extra, PreparedRequest | error dict)

    def flush():
        nonlocal failed
        preps = [p for _, _, p in pending if not isinstance(p, dict)]
        results = iter(rec.run_prepared(preps)) if preps else iter(())
        for line_no, extra, p in pending:
            if isinstance(p, dict):
                failed += 1
                row = {"line": line_no, **extra, **p}
            else:
                row = {"line": line_no, **extra, **next(results).to_dict()}
            dst.write(json.dumps(row) + "\n")
        bar.update(len(pending))
        pending.clear()

    try:
        line_no = 0
        for raw in src:
            line_no += 1
            if not raw.strip():
                continue
            n += 1
            extra: dict = {}
            try:
                # A line that is not UTF-8 fails alone, like bad JSON; a BOM on line 1 is tolerated.
                item = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
            except UnicodeDecodeError as e:
                pending.append((line_no, extra, {"error": f"not valid UTF-8: {e}"}))
            except (ValueError, RecursionError) as e:
                pending.append((line_no, extra, {"error": f"not valid JSON: {e or 'nested too deeply'}"}))
            else:
                try:
                    params = _line_params(item, extra, defaults, None if seed is None else seed + line_no - 1)
                    pending.append((line_no, extra, rec.prepare(**params)))
                except UnknownItemError as e:
                    pending.append((line_no, extra, {"error": str(e), "unknown_items": e.unknown}))
                except InputError as e:
                    pending.append((line_no, extra, {"error": str(e)}))
            if len(pending) >= batch_size:  # one user per line
                flush()
        flush()
    finally:
        bar.close()
    return failed, n


def _line_params(item, extra: dict, defaults: dict, seed: int | None) -> dict:
    """prepare()'s arguments for one line: its own fields over the flags' defaults."""
    if isinstance(item, list):
        if any(isinstance(x, list) for x in item):
            raise InputError("a bare-list line is one user's history: a list of ids, not of lists")
        return {"histories": item, "seed": seed, **defaults}
    if not isinstance(item, dict):
        raise InputError(f"a line must be a JSON object or a list of ids, got {type(item).__name__}")
    for key in ID_FIELDS:
        if key in item:
            extra[key] = item[key]
    bad = sorted(set(item) - LINE_FIELDS - set(ID_FIELDS))
    if bad:
        raise InputError(f"unknown field(s) {bad}; allowed: {sorted(LINE_FIELDS | set(ID_FIELDS))}")
    if "history" not in item:
        raise InputError("missing field 'history'")
    h = item["history"]
    if isinstance(h, list) and h and all(isinstance(x, list) for x in h):
        raise InputError("'history' is one user's list of ids, not a list of lists")
    return {"histories": h, "seed": item.get("seed", seed), "times": item.get("times"),
            **{key: item.get(key, value) for key, value in defaults.items()}}


@click.command("serve", cls=OneLineErrors)
@_bundle_arg
@click.option("--engine", type=click.Choice(["fastapi", "triton"]), default="fastapi", show_default=True,
              help="fastapi: this package's HTTP service; triton: a Triton Inference Server (HTTP + gRPC, "
                   "dynamic batching; pip install 'genattn[triton]')")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind (0.0.0.0 = all)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="HTTP port (triton: the same as --http-port)")
@click.option("--http-port", type=click.IntRange(1, 65535), help="triton: HTTP port [default: --port]")
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True, help="triton: gRPC port")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True,
              help="triton: Prometheus metrics port")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="triton: model instances (processes, each with its own session)")
@click.option("--max-batch", type=click.IntRange(min=1), default=limits.MAX_BATCH, show_default=True,
              help="micro-batcher: most rows per session run (fastapi; triton batches up to --max-users rows)")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=limits.MAX_WAIT_MS, show_default=True,
              help="micro-batcher: longest wait for more requests after the first; 0 = batch what queued while "
                   "the backend was busy (triton: max_queue_delay)")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=limits.MAX_BODY_BYTES, show_default=True,
              help="larger request bodies get 413 (triton: larger history tensors get an error)")
@click.option("--max-users", type=click.IntRange(min=1), default=limits.MAX_USERS, show_default=True,
              help="most histories in one request; more get 413 (triton: max_batch_size)")
@click.option("--max-queue", type=click.IntRange(min=1), default=limits.MAX_QUEUE, show_default=True,
              help="most requests waiting for the micro-batcher; more get 503 with Retry-After "
                   "(triton: only with --triton-queue-policy)")
@click.option("--request-timeout-s", type=click.FloatRange(min=0, min_open=True), default=limits.REQUEST_TIMEOUT_S, show_default=True,
              help="deadline from queueing to the answer; later gets 504 (triton: queued longer is dropped, only "
                   "with --triton-queue-policy)")
@click.option("--triton-queue-policy", is_flag=True,
              help="triton: enforce --max-queue and --request-timeout-s in Triton's queue. Off by default: any queue "
                   "policy turns off the dynamic batcher's prefetching, which stalls the server ~0.5 s under CPU "
                   "contention (docs/runtime.md)")
@click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=limits.BODY_TIMEOUT_S, show_default=True,
              help="time to receive the whole body after the headers; later gets 408 (fastapi)")
@click.option("--keep-alive-s", type=click.FloatRange(min=0, min_open=True), default=limits.KEEP_ALIVE_S, show_default=True,
              help="fastapi: how long an idle connection stays open; keep it above your clients' pool idle "
                   "timeout (a client reusing a connection the server is closing sees a dropped request)")
@_backend_opt
@_strict_opt
@_unknown_opt
@_trust_opt
@_threads_opt
@click.option("--trt-cache-dir", type=click.Path(file_okay=False), help="tensorrt-ep: engine cache folder")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("--access-log", is_flag=True, help="log every request (uvicorn access log)")
@_ann_opts
def serve_cmd(bundle, engine, host, port, http_port, grpc_port, metrics_port, instances, max_batch, max_wait_ms,
              max_body_bytes, max_users, max_queue, request_timeout_s, triton_queue_policy, body_timeout_s,
              keep_alive_s, backend,
              strict, unknown, threads, trt_cache_dir, log_level, access_log, trusted_keys, nprobe, ef_search):
    """Serve BUNDLE over HTTP: POST /recommend, GET /healthz /metadata /metrics. With --engine triton: a
    Triton Inference Server with model 'genattn' over HTTP and gRPC (docs/runtime.md: its inputs and outputs)."""
    _logging(False, default=getattr(logging, log_level.upper()))
    if engine == "triton":
        _serve_triton(bundle, host, http_port or port, grpc_port, metrics_port, instances, max_wait_ms,
                      max_body_bytes, max_users, max_queue, request_timeout_s, backend, strict, unknown, threads,
                      trt_cache_dir, trusted_keys, log_level, nprobe, ef_search, queue_policy=triton_queue_policy)
        return
    if triton_queue_policy:
        raise click.UsageError("--triton-queue-policy applies to --engine triton")
    try:
        from .service import serve
    except ImportError as e:
        raise click.ClickException(f"serving needs FastAPI, uvicorn and prometheus_client: "
                                   f"pip install 'genattn[serve]' ({e})") from None
    _check_listen(host, port)  # a port in use fails here in one line, before the bundle is loaded
    rec = _load(bundle, click.get_current_context().params, unknown, trusted_keys)
    serve(rec, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes,
          max_users=max_users, max_queue=max_queue, request_timeout_s=request_timeout_s,
          body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s, log_level=log_level, access_log=access_log)


def _serve_triton(bundle, host, http_port, grpc_port, metrics_port, instances, max_wait_ms, max_body_bytes,
                  max_users, max_queue, request_timeout_s, backend, strict, unknown, threads, trt_cache_dir,
                  trusted_keys, log_level, nprobe=None, ef_search=None, queue_policy: bool = False) -> None:
    from .triton_engine import EngineConfig, serve

    ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
    if len(set(ports.values())) < len(ports):
        raise click.UsageError(f"the Triton engine needs three different ports, got {ports}")
    for p in ports.values():
        _check_listen(host, p)
    cfg = EngineConfig(bundle=str(Path(bundle).resolve()), backend=backend, strict=strict, unknown_items=unknown,
                       threads=threads, trusted_keys=[str(Path(k).resolve()) for k in trusted_keys],
                       trt_cache_dir=str(Path(trt_cache_dir).resolve()) if trt_cache_dir else None,
                       max_users=max_users, max_wait_ms=max_wait_ms, max_queue=max_queue,
                       request_timeout_s=request_timeout_s, max_body_bytes=max_body_bytes, instances=instances,
                       nprobe=nprobe, ef_search=ef_search, queue_policy=queue_policy)
    try:
        serve(cfg, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
              log_verbose=1 if log_level == "debug" else 0)
    except (GenattnRuntimeError, ValueError) as e:  # ValueError: an option the bundle cannot take
        raise click.ClickException(str(e)) from None


def _check_listen(host: str, port: int) -> None:
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(addr)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


IMPORT_PROBE = ("import sys, time; t = time.perf_counter(); import genattn_runtime; t1 = time.perf_counter(); "
                "import onnxruntime; t2 = time.perf_counter(); "
                "print(t1 - t, t2 - t1, 'torch' in sys.modules)")


@click.command("runtime-timings", cls=OneLineErrors)
@_bundle_arg
@_backend_opt
@_threads_opt
@click.option("--repeats", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("-k", "--k", "k", type=int, default=10, show_default=True)
def timings_cmd(bundle, backend, threads, repeats, k):
    """Import time (fresh interpreter), load time and batch-1 Python overhead vs session time, as JSON."""
    _logging(False)
    probes = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True)
        probes.append(out.stdout.split())
    t0 = time.perf_counter()
    rec = _load(bundle, click.get_current_context().params)
    load_s = time.perf_counter() - t0
    res = {"import_genattn_runtime_s": min(float(p[0]) for p in probes),
           "import_onnxruntime_s": min(float(p[1]) for p in probes),
           "torch_imported": any(p[2] == "True" for p in probes),
           "load_s": load_s, **rec.measure_overhead(k=k, repeats=repeats)}
    click.echo(json.dumps(res, indent=2))


@click.group()
def main():
    """genattn runtime commands (no training stack needed)."""


main.add_command(recommend_cmd)
main.add_command(serve_cmd)
main.add_command(timings_cmd)

if __name__ == "__main__":
    main(prog_name="python -m genattn_runtime.cli")
