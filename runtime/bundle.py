"""The bundle contract shared by the exporter (writer) and the runtime (reader).

A bundle is a folder:

    manifest.json   this schema (FORMAT_VERSION), sha256 of every other file
    model.onnx      the serving graph (see docs/export.md)
    items.json      {"item_ids": [raw id of internal index 1..N], "popularity": [N + 1 counts]}
    model.engine    optional TensorRT engine (manifest "tensorrt" says for which GPU / version)
    triton/         optional Triton model repository

Torch-free: numpy and the standard library only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "genattn-bundle"
FORMAT_VERSION = 1

# Graph tensor names (one place; the exporter and the runtime both use these).
INPUT_SEQ = "item_seq"            # int64 [batch, max_len], left-padded internal indices
INPUT_EXCLUDE = "exclude_items"   # int64 [batch, max_len], indices scored -inf (0 = none)
INPUT_NOISE = "noise"             # float32 [batch, noise_size], standard normal; stochastic bundles only
OUTPUT_ITEMS = "top_items"        # int64 [batch, K], internal indices, best first
OUTPUT_SCORES = "top_scores"      # float32 [batch, K]
OUTPUT_ALL = "scores"             # float32 [batch, n_items + 1]; optional


@dataclass
class Manifest:
    raw: dict[str, Any]
    path: Path

    @property
    def max_len(self) -> int:
        return int(self.raw["max_len"])

    @property
    def n_items(self) -> int:
        return int(self.raw["n_items"])

    @property
    def k(self) -> int:
        return int(self.raw["k"])

    @property
    def attention(self) -> str:
        return self.raw["attention"]

    @property
    def noise_size(self) -> int:
        return int(self.raw["sampler"].get("noise_size", 0))

    @property
    def input_names(self) -> list[str]:
        return [t["name"] for t in self.raw["graph"]["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [t["name"] for t in self.raw["graph"]["outputs"]]

    @property
    def exclude_in_graph(self) -> bool:
        return INPUT_EXCLUDE in self.input_names


REQUIRED_KEYS = ("format", "format_version", "attention", "max_len", "n_items", "k", "sampler", "graph", "files")


def read_manifest(bundle: str | Path) -> Manifest:
    """Parse and structurally validate manifest.json (no hashing)."""
    bundle = Path(bundle)
    f = bundle / "manifest.json"
    if not bundle.is_dir():
        raise BundleError(f"bundle folder not found: {bundle}")
    if not f.is_file():
        raise BundleError(f"{bundle} is not a genattn bundle: manifest.json missing")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{f}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise BundleError(f"{f}: missing key(s) {missing}")
    if raw["format"] != FORMAT:
        raise BundleError(f"{f}: format {raw['format']!r} is not {FORMAT!r}")
    if raw["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{f}: bundle format version {raw['format_version']} is not supported by this "
                          f"runtime (supports {FORMAT_VERSION}); re-export or upgrade genattn")
    return Manifest(raw=raw, path=bundle)


def verify_files(manifest: Manifest) -> None:
    """Check every file listed in the manifest exists with the recorded size and sha256."""
    from genattn.fileio import sha256_file

    for name, meta in manifest.raw["files"].items():
        p = manifest.path / name
        if not p.is_file():
            raise BundleError(f"bundle {manifest.path}: file {name} listed in the manifest is missing")
        if p.stat().st_size != meta["bytes"]:
            raise BundleError(f"bundle {manifest.path}: {name} has {p.stat().st_size} bytes, manifest says "
                              f"{meta['bytes']}: the bundle was modified or truncated")
        digest = sha256_file(p)
        if digest != meta["sha256"]:
            raise BundleError(f"bundle {manifest.path}: sha256 of {name} does not match the manifest "
                              f"(got {digest[:12]}…, expected {meta['sha256'][:12]}…): the bundle was modified")


def file_entry(path: Path) -> dict[str, Any]:
    from genattn.fileio import sha256_file

    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


@dataclass
class ItemTable:
    item_ids: list
    popularity: Any  # np.ndarray (n_items + 1,)
    index: dict = field(default_factory=dict)  # str(raw id) -> internal index

    @classmethod
    def load(cls, path: Path) -> "ItemTable":
        import numpy as np

        raw = json.loads(path.read_text())
        ids = raw["item_ids"]
        return cls(item_ids=ids, popularity=np.asarray(raw["popularity"], dtype=np.int64),
                   index={str(v): i + 1 for i, v in enumerate(ids)})
