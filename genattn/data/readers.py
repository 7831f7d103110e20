"""Readers that turn event logs on disk into :class:`Interactions`.

Supported inputs: RecBole atomic ``.inter`` files (with genres from a sibling
``.item`` file), CSV, TSV, Parquet and MovieLens ``ratings.dat``. Every reader
funnels through :func:`_finalise` so that missing values, id typing and
timestamp validation behave identically whatever the source format.
"""

from __future__ import annotations

import csv
import importlib.metadata
import itertools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Interactions",
    "ItemGenres",
    "read_interactions",
    "locate_ml100k",
    "load_ml100k",
    "FORMATS",
]

Format = Literal["auto", "inter", "csv", "tsv", "parquet", "ml-dat"]
FORMATS: tuple[str, ...] = ("auto", "inter", "csv", "tsv", "parquet", "ml-dat")

_DEFAULT_USER, _DEFAULT_ITEM, _DEFAULT_TIME = "user_id", "item_id", "timestamp"
# Canonical integers only: "007" or "+7" stay strings so that the id written to
# JSON later is exactly the id found in the file.
_INT_RE = r"-?(?:0|[1-9][0-9]*)"
_FORMAT_BY_SUFFIX = {
    ".inter": "inter",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".dat": "ml-dat",
}
# pandas decompresses these transparently, so "log.csv.gz" is still a CSV.
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}
_ML100K_HINT = "get it with `pip install --no-deps recbole==1.2.1`"


class DataError(ValueError):
    """Malformed or unusable input data; the message names the file/column/problem."""


@dataclass(eq=False)
class ItemGenres:
    """Genres per raw item id as arrays: row r of ``matrix`` flags the genres of ``ids[r]``.

    Arrays rather than a dict of lists, so a million-item catalog costs one
    bool matrix instead of a million dict entries, lists and strings.
    """

    ids: np.ndarray  # (n,) distinct raw item ids: int64, or object holding str
    matrix: np.ndarray  # (n, G) bool
    names: list[str]  # G genre names, the matrix's column order

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids)
        self.matrix = np.asarray(self.matrix, dtype=bool)
        self.names = [str(g) for g in self.names]
        if self.ids.ndim != 1 or self.matrix.shape != (len(self.ids), len(self.names)):
            raise DataError(
                f"item genres: ids {self.ids.shape}, matrix {self.matrix.shape} and {len(self.names)} names "
                f"do not fit (expected ids (n,), matrix (n, n_names))"
            )
        if len(set(self.names)) != len(self.names):
            raise DataError(f"item genres: genre names repeat: {self.names}")
        if not pd.Index(self.ids).is_unique:
            raise DataError("item genres: an item id appears more than once")

    def __len__(self) -> int:
        return int(len(self.ids))

    @classmethod
    def from_lists(cls, ids: Sequence[Any] | np.ndarray, genres: Sequence[Sequence[str]]) -> "ItemGenres":
        """From one list of genre names per id; columns are the names in sorted order."""
        if len(ids) != len(genres):
            raise DataError(f"item genres: {len(ids)} ids but {len(genres)} genre lists")
        # pd.Index keeps ints as int64 and strings as object (np.asarray would turn a
        # mix into '<U' text, silently changing ids).
        id_array = pd.Index(list(ids) if not isinstance(ids, np.ndarray) else ids).to_numpy()
        lengths = np.fromiter((len(g) for g in genres), dtype=np.int64, count=len(genres))
        flat = np.asarray(list(itertools.chain.from_iterable(genres)), dtype=object)
        codes, names = pd.factorize(flat) if len(flat) else (np.zeros(0, np.intp), np.zeros(0, object))
        order = np.argsort(np.asarray(names, dtype=str), kind="stable")
        column = np.empty(len(order), dtype=np.intp)
        column[order] = np.arange(len(order))
        matrix = np.zeros((len(id_array), len(order)), dtype=bool)
        matrix[np.repeat(np.arange(len(id_array)), lengths), column[codes]] = True
        return cls(ids=id_array, matrix=matrix, names=[str(names[j]) for j in order])

    @classmethod
    def from_dict(cls, genres: Mapping[Any, Sequence[str]]) -> "ItemGenres":
        """From raw id -> genre names (the form small item files are parsed into)."""
        return cls.from_lists(list(genres.keys()), list(genres.values()))

    @classmethod
    def coerce(cls, genres: "ItemGenres | Mapping[Any, Sequence[str]] | None") -> "ItemGenres | None":
        """ItemGenres as is, a dict converted, None kept."""
        if genres is None or isinstance(genres, ItemGenres):
            return genres
        if isinstance(genres, Mapping):
            return cls.from_dict(genres)
        raise DataError(f"item genres must be ItemGenres or a dict of raw id -> genre names, got {type(genres).__name__}")

    def to_dict(self) -> dict[Any, list[str]]:
        """Raw id -> genre names (in column order); builds one list per item, so for small catalogs."""
        names = np.asarray(self.names, dtype=object)
        return {raw: names[row].tolist() for raw, row in zip(self.ids.tolist(), self.matrix)}


@dataclass
class Interactions:
    """A raw event log, one row per (user, item, timestamp) event, held as numpy arrays."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    # A dict raw id -> genre names is accepted and converted.
    item_genres: ItemGenres | None = None
    source: str = ""
    # Rows the reader discarded (reason -> count), carried so that
    # build_dataset can report every drop made between file and dataset.
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_genres = ItemGenres.coerce(self.item_genres)

    def __len__(self) -> int:
        return int(len(self.users))


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #
def read_interactions(
    path: str | os.PathLike[str],
    fmt: Format | str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    *,
    genre_type: str | None = None,
) -> Interactions:
    """Read an event log.

    ``fmt="auto"`` picks the format from the file name. Column names default to
    ``user_id``/``item_id``/``timestamp`` and are ignored for ``ml-dat``, whose
    layout is positional (``UserID::MovieID::Rating::Timestamp``).
    ``genre_type`` overrides the RecBole type the ``.item`` header declares for
    its genre column (``"token_seq"`` for a file that declares ``token`` but
    holds space-separated lists).
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"{p}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    if fmt == "auto":
        fmt = _detect_format(p)

    cols = (user_col or _DEFAULT_USER, item_col or _DEFAULT_ITEM, time_col or _DEFAULT_TIME)
    if fmt == "inter":
        cols = (_strip_type(cols[0]), _strip_type(cols[1]), _strip_type(cols[2]))
        frame = _read_text(p, "\t" if sep is None else sep, cols, strip_types=True, quoting=csv.QUOTE_NONE)
    elif fmt == "csv":
        frame = _read_text(p, "," if sep is None else sep, cols, strip_types=False, quoting=csv.QUOTE_MINIMAL)
    elif fmt == "tsv":
        frame = _read_text(p, "\t" if sep is None else sep, cols, strip_types=False, quoting=csv.QUOTE_NONE)
    elif fmt == "parquet":
        frame = _read_parquet(p, cols)
    else:  # ml-dat
        frame = _read_ml_dat(p)
        cols = (_DEFAULT_USER, _DEFAULT_ITEM, _DEFAULT_TIME)

    inter = _finalise(frame, cols, p)
    if fmt == "inter":
        inter.item_genres = _read_item_genres(p.with_suffix(".item"), cols[1], inter.items, genre_type)
    logger.info(
        "read %d events (%d users, %d items) from %s",
        len(inter),
        pd.unique(inter.users).size,  # hash-based: np.unique sorts, slow on 1M string ids
        pd.unique(inter.items).size,
        p,
    )
    return inter


def locate_ml100k() -> Path:
    """Folder ``recbole/dataset_example/ml-100k`` of an installed RecBole.

    RecBole is never imported: importing it drags in torch and plenty more, and
    only its bundled example data is wanted.
    """
    candidates: list[Path] = []
    try:
        # find_spec on a top-level name only consults the finders; it does not
        # execute the package.
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "dataset_example" / "ml-100k" for loc in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("recbole")
        candidates.append(Path(str(dist.locate_file("recbole/dataset_example/ml-100k"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for folder in candidates:
        if (folder / "ml-100k.inter").is_file():
            return folder
    raise DataError(f"MovieLens-100K not found; {_ML100K_HINT}")


def load_ml100k() -> Interactions:
    """MovieLens-100K as shipped with RecBole, with genres from ``ml-100k.item``."""
    inter = read_interactions(locate_ml100k() / "ml-100k.inter", fmt="inter")
    inter.source = "ml-100k"  # the built-in name, not a machine-specific path
    return inter


# --------------------------------------------------------------------------- #
# Format-specific readers: each returns a frame holding at least the 3 columns
# --------------------------------------------------------------------------- #
def _detect_format(p: Path) -> str:
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _FORMAT_BY_SUFFIX:
        return _FORMAT_BY_SUFFIX[suffix]
    raise DataError(
        f"{p}: unknown format (cannot tell from suffix {suffix or '<none>'!r}); "
        f"pass fmt= one of {', '.join(FORMATS[1:])}"
    )


def _strip_type(name: str) -> str:
    """``user_id:token`` -> ``user_id`` (RecBole atomic-file header convention)."""
    return name.strip().split(":", 1)[0]


def _read_text(p: Path, sep: str, cols: tuple[str, str, str], *, strip_types: bool, quoting: int) -> pd.DataFrame:
    # Read the header alone first so that a missing column is reported with
    # the columns that do exist, and only the 3 needed columns are parsed.
    options: dict[str, Any] = {"sep": sep, "quoting": quoting, "encoding": "utf-8"}
    try:
        header = pd.read_csv(p, nrows=0, **options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{p}: cannot parse header: {exc}") from exc

    raw_names = [str(c) for c in header.columns]
    names = [_strip_type(c) if strip_types else c.strip() for c in raw_names]
    _check_columns(p, cols, names)
    usecols = [raw_names[names.index(c)] for c in dict.fromkeys(cols)]
    try:
        # All as strings: ids keep their exact spelling and int-ness is decided
        # once, uniformly, in _finalise.
        frame = pd.read_csv(p, usecols=usecols, dtype=str, **options)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot parse: {exc}") from exc
    frame.columns = [_strip_type(c) if strip_types else c.strip() for c in frame.columns]
    return frame


def _read_parquet(p: Path, cols: tuple[str, str, str]) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the train extra
        raise DataError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        names = list(pq.read_schema(p).names)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{p}: not a readable Parquet file: {exc}") from exc
    _check_columns(p, cols, names)
    try:
        return pq.read_table(p, columns=list(dict.fromkeys(cols))).to_pandas()
    except Exception as exc:
        raise DataError(f"{p}: cannot read Parquet data: {exc}") from exc


def _read_ml_dat(p: Path) -> pd.DataFrame:
    # "::" is not a single-character separator, which would force pandas' slow
    # Python engine; splitting on ":" with the C engine yields empty fields
    # between the real ones (ids and ratings never contain ':').
    try:
        frame = pd.read_csv(p, sep=":", header=None, dtype=str, quoting=csv.QUOTE_NONE, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{p}: not in MovieLens UserID::MovieID::Rating::Timestamp format: {exc}") from exc
    separators = frame.iloc[:, 1::2] if frame.shape[1] == 7 else None
    if separators is None or separators.notna().any().any():
        raise DataError(
            f"{p}: not in MovieLens UserID::MovieID::Rating::Timestamp format "
            f"(expected 4 '::'-separated fields per line)"
        )
    frame = frame.iloc[:, [0, 2, 6]]
    frame.columns = [_DEFAULT_USER, _DEFAULT_ITEM, _DEFAULT_TIME]
    return frame


def _check_columns(p: Path, wanted: tuple[str, str, str], present: list[str]) -> None:
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        raise DataError(
            f"{p}: missing column(s) {', '.join(map(repr, missing))}; "
            f"the file has {', '.join(map(repr, present)) or 'no columns'}"
        )


# --------------------------------------------------------------------------- #
# Shared normalisation
# --------------------------------------------------------------------------- #
def _finalise(frame: pd.DataFrame, cols: tuple[str, str, str], p: Path) -> Interactions:
    if len(frame) == 0:
        raise DataError(f"{p}: no rows (the file has a header but no data)")
    user_s, item_s, time_s = (_blank_to_na(frame[c]) for c in cols)

    dropped: dict[str, int] = {}
    missing = user_s.isna() | item_s.isna() | time_s.isna()
    n_missing = int(missing.sum())
    if n_missing:
        per_col = ", ".join(f"{c}: {int(s.isna().sum())}" for c, s in zip(cols, (user_s, item_s, time_s)))
        logger.warning("%s: dropped %d of %d rows with a missing value (%s)", p, n_missing, len(frame), per_col)
        dropped["rows_missing_value"] = n_missing
        keep = ~missing
        user_s, item_s, time_s = user_s[keep], item_s[keep], time_s[keep]
        if len(user_s) == 0:
            raise DataError(f"{p}: no rows left after dropping {n_missing} rows with missing values")

    return Interactions(
        users=_ids_to_array(user_s),
        items=_ids_to_array(item_s),
        timestamps=_timestamps_to_float(time_s, cols[2], p),
        source=str(p),
        dropped=dropped,
    )


def _is_textual(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s.dtype) or s.dtype == object


def _blank_to_na(s: pd.Series) -> pd.Series:
    """Strip text and treat empty strings as missing, like an empty CSV field."""
    if not _is_textual(s):
        return s
    s = s.astype("string").str.strip()
    return s.mask(s == "")


def _ids_to_array(s: pd.Series) -> np.ndarray:
    """int64 array when every id is an integer, else an object array of str."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values) & (values == np.round(values))) and np.all(np.abs(values) < 2**63):
            return values.astype(np.int64)
        return s.astype(str).to_numpy(dtype=object)
    text = s.astype("string")
    if bool(text.str.fullmatch(_INT_RE).all()):
        try:
            return text.astype("int64").to_numpy(dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            pass  # beyond int64: keep the exact text
    return np.asarray(text.tolist(), dtype=object)


def _timestamps_to_float(s: pd.Series, col: str, p: Path) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        epoch = pd.Timestamp(0, tz=getattr(s.dt, "tz", None))
        return ((s - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    numeric = pd.to_numeric(s, errors="coerce") if _is_textual(s) else s
    values = pd.Series(numeric, index=s.index).astype("float64").to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{p}: column {col!r} has {int(bad.sum())} non-numeric timestamp(s), "
            f"e.g. {s.iloc[first]!r} in data row {first + 1}; timestamps must be numbers "
            f"(e.g. Unix seconds)"
        )
    return values


def _read_item_genres(
    item_path: Path, item_col: str, inter_items: np.ndarray, genre_type: str | None = None
) -> ItemGenres | None:
    """Genres from a RecBole ``.item`` file, or None when there is no usable one.

    The ``.item`` file is optional side information, so problems with it are
    logged rather than raised: the interactions are still usable without it.
    """
    if not item_path.is_file():
        return None
    try:
        header = pd.read_csv(item_path, sep="\t", nrows=0, quoting=csv.QUOTE_NONE, encoding="utf-8")
        raw_names = [str(c) for c in header.columns]
        names = [_strip_type(c) for c in raw_names]
        genre_idx = next((i for i, n in enumerate(names) if n.lower() in {"class", "genre", "genres"}), None)
        if item_col not in names or genre_idx is None:
            logger.warning("%s: no %r and class/genre columns; genres not loaded", item_path, item_col)
            return None
        id_raw, genre_raw = raw_names[names.index(item_col)], raw_names[genre_idx]
        frame = pd.read_csv(
            item_path,
            sep="\t",
            usecols=[id_raw, genre_raw],
            dtype=str,
            keep_default_na=False,  # a genre literally called "NA" must survive
            quoting=csv.QUOTE_NONE,
            encoding="utf-8",
            encoding_errors="replace",  # titles may be latin-1; only ids/genres matter
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        logger.warning("%s: cannot read genres (%s); genres not loaded", item_path, exc)
        return None

    # token_seq is RecBole's space-separated list ("Animation Children's Comedy");
    # a plain token is one genre, possibly multiword.
    genre_type = genre_type or raw_names[genre_idx].partition(":")[2].strip()
    ids = _blank_to_na(frame[id_raw]).dropna()
    if len(ids) == 0:
        return None
    keys = _ids_to_array(ids)
    if inter_items.dtype == object and keys.dtype != object:
        keys = keys.astype(str).astype(object)  # match string-typed interaction ids
    genres: dict[Any, list[str]] = {}
    for key, value in zip(keys.tolist(), frame.loc[ids.index, genre_raw].tolist()):
        value = value.strip()
        if genre_type == "token":
            genres[key] = [value] if value else []
        else:
            genres[key] = [g for g in re.split(r"[\s|]+", value) if g]
    logger.info("loaded genres for %d items from %s", len(genres), item_path)
    return ItemGenres.from_dict(genres)
