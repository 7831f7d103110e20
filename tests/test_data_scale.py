"""Memory-lean data: the synthetic generator at catalog sizes where an (users x items)
table would not fit, genres as arrays, and load timings."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pytest

from genattn.config import DataConfig
from genattn.data import DataError, Interactions, ItemGenres, build_dataset, load_source, synthetic_interactions
from genattn.data import synthetic as synthetic_module


def test_generation_memory_is_bounded_by_events_and_items_not_their_product() -> None:
    # 2,000 users x 200,000 items: a users x items bool matrix alone would be 400 MB.
    tracemalloc.start()
    try:
        inter = synthetic_interactions(n_users=2000, n_items=200_000, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.1f} MB"
    ds = build_dataset(inter)
    assert ds.n_users == 2000 and ds.n_events == len(inter)
    assert all(len(np.unique(s)) == len(s) for s in ds.sequences)


def test_repeat_check_in_small_chunks_gives_the_same_events(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = synthetic_interactions(n_users=300, n_items=40, n_topics=4, seq_len=(15, 30), seed=5)
    monkeypatch.setattr(synthetic_module, "_CHUNK_CELLS", 7)  # a few users per chunk
    chunked = synthetic_interactions(n_users=300, n_items=40, n_topics=4, seq_len=(15, 30), seed=5)
    np.testing.assert_array_equal(whole.users, chunked.users)
    np.testing.assert_array_equal(whole.items, chunked.items)
    ds = build_dataset(chunked)
    assert all(len(np.unique(s)) == len(s) for s in ds.sequences)


def test_successor_table_same_topic_distinct_never_self_and_uniform() -> None:
    rng = np.random.default_rng(0)
    # 2,000 topics of 5 items (offsets 1..4, 3 drawn: duplicates are common and redrawn),
    # and one topic of 4 items, where the 3 successors must be all the other items.
    topic_of = np.r_[np.repeat(np.arange(2000), 5), np.full(4, 2000)]
    block_start = np.r_[np.arange(2000) * 5, 10_000]
    block_size = np.r_[np.full(2000, 5), 4]
    succ, probs = synthetic_module._successor_table(rng, topic_of, block_start, block_size)
    assert succ.shape == (10_004, 3)
    np.testing.assert_allclose(probs, [0.6, 0.3, 0.1])
    items = np.arange(len(topic_of))[:, None]
    assert (topic_of[succ] == topic_of[:, None]).all()
    assert (succ != items).all()
    assert (np.sort(succ, axis=1)[:, 1:] != np.sort(succ, axis=1)[:, :-1]).all()
    assert (np.sort(succ[-4:], axis=1) == [[10_001, 10_002, 10_003], [10_000, 10_002, 10_003],
                                           [10_000, 10_001, 10_003], [10_000, 10_001, 10_002]]).all()
    # The strongest successor is uniform over the rest of the block (as a draw without replacement is).
    offset = (succ[:10_000, 0] - items[:10_000, 0]) % 5
    share = np.bincount(offset, minlength=5)[1:] / 10_000
    np.testing.assert_allclose(share, 0.25, atol=0.03)


def test_synthetic_genres_are_arrays_one_topic_per_item() -> None:
    inter = synthetic_interactions(n_users=50, n_items=300, n_topics=12, seed=2)
    genres = inter.item_genres
    assert isinstance(genres, ItemGenres)
    assert genres.ids.dtype == np.int64 and sorted(genres.ids.tolist()) == list(range(1, 301))
    assert genres.matrix.shape == (300, 12) and (genres.matrix.sum(axis=1) == 1).all()
    assert genres.names == [f"topic{k}" for k in range(12)]


def test_array_genres_build_the_same_matrix_as_the_dict_form() -> None:
    inter = synthetic_interactions(n_users=200, n_items=300, n_topics=12, seed=2)
    assert inter.item_genres is not None
    as_dict = inter.item_genres.to_dict()
    from_arrays = build_dataset(inter)
    from_dict = build_dataset(Interactions(inter.users, inter.items, inter.timestamps, item_genres=as_dict))
    assert from_arrays.genre_names == from_dict.genre_names
    # Sorted as text, as the dict form always was: topic10 before topic2.
    assert from_arrays.genre_names[:4] == ["topic0", "topic1", "topic10", "topic11"]
    assert from_arrays.item_genres is not None and from_dict.item_genres is not None
    np.testing.assert_array_equal(from_arrays.item_genres, from_dict.item_genres)
    # Row i holds the genre of internal item i, whatever the order of the ids in the table.
    for i in (1, 17, from_arrays.n_items):
        raw = from_arrays.item_ids[i - 1]
        assert [g for g, on in zip(from_arrays.genre_names, from_arrays.item_genres[i]) if on] == as_dict[raw]


def test_item_genres_from_dict_round_trip_and_string_ids() -> None:
    genres = ItemGenres.from_dict({"b": ["Drama", "Comedy"], "a": [], "c": ["Comedy"]})
    assert genres.ids.dtype == object and genres.names == ["Comedy", "Drama"]
    assert genres.to_dict() == {"b": ["Comedy", "Drama"], "a": [], "c": ["Comedy"]}
    inter = Interactions(np.array(["u"] * 3, dtype=object), np.array(["a", "b", "c"], dtype=object),
                         np.array([1.0, 2.0, 3.0]), item_genres=genres)
    ds = build_dataset(inter)
    assert ds.genre_names == ["Comedy", "Drama"]
    assert ds.item_genres is not None
    assert ds.item_genres.tolist() == [[False, False], [False, False], [True, True], [True, False]]
    # Integer genre ids never match string item ids (as with a dict keyed by int).
    ints = Interactions(np.array(["u"] * 3, dtype=object), np.array(["1", "2", "3"], dtype=object),
                        np.array([1.0, 2.0, 3.0]), item_genres={1: ["x"]})
    assert build_dataset(ints).item_genres is None


def test_item_genres_rejects_inconsistent_arrays() -> None:
    with pytest.raises(DataError, match="more than once"):
        ItemGenres(ids=np.array([1, 1]), matrix=np.zeros((2, 1), bool), names=["g"])
    with pytest.raises(DataError, match="do not fit"):
        ItemGenres(ids=np.array([1, 2]), matrix=np.zeros((2, 2), bool), names=["g"])
    with pytest.raises(DataError, match="ItemGenres or a dict"):
        Interactions(np.array([1]), np.array([1]), np.array([1.0]), item_genres=[["g"]])  # type: ignore[arg-type]


def test_load_source_reports_read_and_build_time(caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(source="synthetic", synthetic_users=30, synthetic_items=200, synthetic_seed=1)
    with caplog.at_level(logging.INFO, logger="genattn.data"):
        ds = load_source(cfg)
    assert set(ds.load_seconds) == {"read", "build"} and all(v >= 0 for v in ds.load_seconds.values())
    assert any("read" in r.getMessage() and "built" in r.getMessage() for r in caplog.records)


def test_rows_already_in_user_time_order_give_the_same_dataset_as_shuffled_rows() -> None:
    inter = synthetic_interactions(n_users=100, n_items=200, seed=4)
    # Equal timestamps within a user: the stable order (row order) must hold on both paths.
    inter.timestamps[1:6] = inter.timestamps[1]
    perm = np.random.default_rng(0).permutation(len(inter))
    shuffled = Interactions(inter.users[perm], inter.items[perm], inter.timestamps[perm])
    a, b = build_dataset(inter), build_dataset(shuffled)
    assert a.item_ids == b.item_ids and a.user_ids == b.user_ids
    assert a.sequences[0][:6].tolist() == [a.item_index()[x] for x in inter.items[:6].tolist()]
    # Shuffling moves tied rows, so compare users away from the ties exactly.
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences[1:], b.sequences[1:]))
    assert sorted(a.sequences[0].tolist()) == sorted(b.sequences[0].tolist())
