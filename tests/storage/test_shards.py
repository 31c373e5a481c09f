"""Shard storage: atomic writes, validation, quarantine (kernel assembly: tests/kernel/test_assembly.py)."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from delift_ray.kernel import assemble_dense
from delift_ray.storage import (
    BASELINE,
    COLUMNAR_KEY,
    EMBEDDING,
    UTILITY,
    ShardStore,
    legacy_checksum,
    table_checksum,
)


def pairs_table(h, e, u):
    return pa.table(
        {
            "helped_id": h,
            "example_id": e,
            "utility": np.asarray(u, np.float32),
            "distance": np.zeros(len(u), np.float32),
        }
    )


def test_write_read_and_validate(tmp_path):
    store = ShardStore(str(tmp_path), "fp1")
    store.write(UTILITY, "b1", pairs_table(["a", "a"], ["a", "b"], [0.1, 0.2]))
    store.write(BASELINE, "b2", pa.table({"sample_id": ["a"], "distance": [0.5]}))
    assert [s.key for s in store.list_shards(UTILITY)] == ["b1"]
    t = store.read_all(UTILITY)
    assert t.num_rows == 2 and t.column("utility").to_pylist() == pytest.approx([0.1, 0.2])
    assert not [f for f in os.listdir(store.kind_dir(UTILITY)) if f.startswith("_tmp")]
    # Another fingerprint sees nothing.
    assert ShardStore(str(tmp_path), "fp2").read_all(UTILITY).num_rows == 0


@pytest.mark.parametrize("damage", ["truncate", "rows", "value", "tmp"])
def test_corrupt_shards_are_quarantined_not_read(tmp_path, damage):
    store = ShardStore(str(tmp_path), "fp")
    path = store.write(UTILITY, "good", pairs_table(["a", "b"], ["b", "a"], [1, 2]))
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "rows":  # same metadata, one row fewer
        t = pq.read_table(path)
        pq.write_table(t.slice(0, 1).replace_schema_metadata(t.schema.metadata), path)
    elif damage == "value":  # same metadata, one example id changed
        t = pq.read_table(path)
        pq.write_table(t.set_column(1, t.schema.field(1), pa.array(["b", "c"])), path)
    else:
        os.rename(path, os.path.join(os.path.dirname(path), "_tmp-good-1234.parquet"))
    assert store.read_all(UTILITY).num_rows == 0
    assert os.listdir(tmp_path / "quarantine")
    assert not os.listdir(store.kind_dir(UTILITY))


def test_checksum_depends_on_the_values_alone():
    t = pairs_table(["a", "bb", "", "ccc"], ["x", "y", "z", "w"], [1, 2, 3, 4])
    rechunked = pa.concat_tables([t.slice(0, 1), t.slice(1, 3)])
    sliced = pa.concat_tables([pairs_table(["q"], ["q"], [9]), t]).slice(1)  # buffers start mid-way
    assert table_checksum(t) == table_checksum(rechunked) == table_checksum(sliced)
    assert table_checksum(t).startswith("col:") and table_checksum(t.slice(0, 0)) != table_checksum(t)
    # One value changed, or characters moved across a boundary ("bb","" vs "b","b"): another digest.
    assert table_checksum(pairs_table(["a", "bb", "", "ccc"], ["x", "y", "z", "w"], [1, 2, 3, 5])) != table_checksum(t)
    assert table_checksum(pairs_table(["a", "b", "b", "ccc"], ["x", "y", "z", "w"], [1, 2, 3, 4])) != table_checksum(t)
    large = pa.table({"s": pa.array(["ab", "c"], pa.large_string())})
    assert table_checksum(large) == table_checksum(pa.concat_tables([large.slice(0, 1), large.slice(1)]))
    with pytest.raises(TypeError, match="no columnar checksum"):
        table_checksum(pa.table({"d": pa.array([{"x": 1}])}))
    vectors = pa.table(
        {"sample_id": ["a", "b"], "vector": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2))}
    )
    assert table_checksum(vectors) != table_checksum(vectors.slice(1))


def test_a_store_written_with_the_legacy_checksum_still_validates(tmp_path):
    """Shards of an earlier version record the per-string checksum: read, not rescored."""
    store = ShardStore(str(tmp_path), "fp")
    for kind, table in [
        (UTILITY, pairs_table(["a", "b"], ["b", "a"], [1, 2])),
        (BASELINE, pa.table({"sample_id": ["a"], "distance": [0.5]})),
        (EMBEDDING, pa.table({"sample_id": ["a"], "vector": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})),
    ]:
        path = store.write(kind, "old", table)
        t = pq.read_table(path)
        # What an earlier version checks is there and right: a rollback keeps this store.
        assert t.schema.metadata[b"delift.checksum"] == legacy_checksum(t.replace_schema_metadata(None)).encode()
        meta = {k: v for k, v in t.schema.metadata.items() if k != COLUMNAR_KEY}  # as an earlier version wrote it
        pq.write_table(t.replace_schema_metadata(meta), path)
        assert store.read_all(kind).num_rows == table.num_rows
        # A legacy checksum that does not match is still a mismatch.
        t2 = t.set_column(0, t.schema.field(0), pa.array(["z"] * t.num_rows))
        pq.write_table(t2.replace_schema_metadata(meta), path)
        assert store.read_all(kind).num_rows == 0
    assert len(os.listdir(tmp_path / "quarantine")) == 3


def test_streamed_reads_cover_every_shard_once_in_batches(tmp_path):
    store = ShardStore(str(tmp_path), "fp")
    ids = [f"s{i}" for i in range(6)]
    for i, h in enumerate(ids):  # one shard per helped id: 6 rows each
        store.write(UTILITY, f"k{i}", pairs_table([h] * 6, ids, np.arange(6) + 10 * i))
    batches = list(store.iter_relevant(UTILITY, ids, ids, batch_rows=10))
    assert [b.num_rows for b in batches] == [12, 12, 12]  # two shards per batch
    whole = store.read_relevant(UTILITY, ids, ids)
    assert pa.concat_tables(batches).equals(whole) and whole.num_rows == 36
    # footer filter: only the shard of s3 can hold a pair helped by s3
    assert sum(b.num_rows for b in store.iter_relevant(UTILITY, ["s3"], ids, batch_rows=1)) == 6
    # helped=None reads everything without footers
    assert sum(b.num_rows for b in store.iter_relevant(UTILITY, None)) == 36
    # streamed dense assembly equals the one-table assembly
    K1 = assemble_dense(store.iter_relevant(UTILITY, ids, ids, batch_rows=7), ids, ids)
    K2 = assemble_dense(whole, ids, ids)
    assert np.array_equal(K1, K2) and K1[3, 2] == 32


def test_footer_lists_are_matched_by_whole_ids():
    from delift_ray.storage.shards import _names_any

    assert _names_any("a1,b2,c3", {"c3"}) and _names_any("a1,b2,c3", {"a1"}) and _names_any("x", {"x"})
    assert not _names_any("a1,b2,c3", {"a", "b", "2", "c3,"}) and not _names_any("", {"", "a"})


class CountingFS:
    """A file system that counts how each shard is opened (everything else passes through)."""

    def __init__(self, fs):
        self._fs, self.opens = fs, {"stream": 0, "file": 0}

    def open_input_stream(self, *a, **k):
        self.opens["stream"] += 1
        return self._fs.open_input_stream(*a, **k)

    def open_input_file(self, *a, **k):
        self.opens["file"] += 1
        return self._fs.open_input_file(*a, **k)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_a_small_shard_is_read_once_footer_and_all(tmp_path, monkeypatch):
    from delift_ray.storage import shards as storage

    ids = [f"s{i}" for i in range(3)]
    writer = ShardStore(str(tmp_path), "fp")
    for i, h in enumerate(ids):
        writer.write(UTILITY, f"k{i}", pairs_table([h] * 3, ids, np.arange(3) + 10 * i))
    writer.write(UTILITY, "other", pairs_table(["x"], ["y"], [1]))  # names no wanted id: skipped
    for whole, want in [(storage.WHOLE_READ_BYTES, {"stream": 4, "file": 0}), (0, {"stream": 0, "file": 7})]:
        monkeypatch.setattr(storage, "WHOLE_READ_BYTES", whole)
        storage._FOOTER_MEMO.clear()  # a new driver
        store = ShardStore(str(tmp_path), "fp")
        store.fs = CountingFS(store.fs)
        assert store.read_relevant(UTILITY, ids, ids).num_rows == 9
        # One read per shard; footer-first: the footer of all 4, then the 3 relevant shards.
        assert store.fs.opens == want
        # A second pass (assembly after the plan) knows the footers: small shards still take one read.
        store.fs.opens = {"stream": 0, "file": 0}
        assert store.read_relevant(UTILITY, ids, ids).num_rows == 9
        assert store.fs.opens == ({"stream": 3, "file": 0} if whole else {"stream": 0, "file": 3})
