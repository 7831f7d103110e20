"""Tests for genattn.data: readers, synthetic generator, dataset building and splits."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genattn.data import (
    DataError,
    Interactions,
    build_dataset,
    item_popularity,
    leave_one_out,
    load_ml100k,
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
    assert inter.item_genres == {10: ["Animation", "Children's", "Comedy"], 20: ["Film-Noir"], 30: []}
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
    assert len(inter) == 100_000
    assert len(np.unique(inter.users)) == 943
    assert len(np.unique(inter.items)) == 1682
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    # First data row of ml-100k.inter: 196 242 3 881250949
    assert (inter.users[0], inter.items[0], inter.timestamps[0]) == (196, 242, 881250949.0)
    assert inter.item_genres is not None and len(inter.item_genres) == 1682
    assert inter.item_genres[1] == ["Animation", "Children's", "Comedy"]  # Toy Story

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
    with pytest.raises(ValueError):
        pad_left(seqs, 0)


def test_pad_left_many_sequences_fast() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 1000, size=n) for n in rng.integers(0, 400, size=6000)]
    start = time.perf_counter()
    out = pad_left(seqs, 200)
    assert time.perf_counter() - start < 1.0
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
    assert a.item_genres == b.item_genres
    assert not (len(a.items) == len(c.items) and np.array_equal(a.items, c.items))


def test_synthetic_shape_ranges_and_no_repeats() -> None:
    start = time.perf_counter()
    inter = synthetic_interactions(n_users=1000, n_items=500, n_topics=10, seq_len=(20, 60), seed=0)
    assert time.perf_counter() - start < 1.0
    assert set(np.unique(inter.users).tolist()) == set(range(1, 1001))
    assert inter.items.min() >= 1 and inter.items.max() <= 500
    assert inter.item_genres is not None and len(inter.item_genres) == 500
    assert {g[0] for g in inter.item_genres.values()} == {f"topic{k}" for k in range(10)}
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
