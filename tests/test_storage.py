"""Shard storage: atomic writes, validation, quarantine (kernel assembly: test_kernel.py)."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from delift_ray.kernel import assemble_dense
from delift_ray.storage import BASELINE, UTILITY, ShardStore


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


@pytest.mark.parametrize("damage", ["truncate", "rows", "tmp"])
def test_corrupt_shards_are_quarantined_not_read(tmp_path, damage):
    store = ShardStore(str(tmp_path), "fp")
    path = store.write(UTILITY, "good", pairs_table(["a", "b"], ["b", "a"], [1, 2]))
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "rows":  # same metadata, one row fewer
        t = pq.read_table(path)
        pq.write_table(t.slice(0, 1).replace_schema_metadata(t.schema.metadata), path)
    else:
        os.rename(path, os.path.join(os.path.dirname(path), "_tmp-good-1234.parquet"))
    assert store.read_all(UTILITY).num_rows == 0
    assert os.listdir(tmp_path / "quarantine")
    assert not os.listdir(store.kind_dir(UTILITY))


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
    from delift_ray.storage import _names_any

    assert _names_any("a1,b2,c3", {"c3"}) and _names_any("a1,b2,c3", {"a1"}) and _names_any("x", {"x"})
    assert not _names_any("a1,b2,c3", {"a", "b", "2", "c3,"}) and not _names_any("", {"", "a"})
