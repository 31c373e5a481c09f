"""Reading and normalising data: column detection, bad rows, hashing, duplicates."""

import json

import pytest

from delift_ray.config import ColumnConfig
from delift_ray.data import load_samples, sample_id
from delift_ray.errors import DataError
from tests.helpers import write_rows


def test_alpaca_input_is_appended(tmp_path):
    p = write_rows(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    s = load_samples(str(p))
    assert s.prompts == ["Add\n\n2 and 3", "Say hi"] and s.responses == ["5", "hi"]
    assert s.rows == [0, 1]
    assert s.sample_ids[0] == sample_id("Add\n\n2 and 3", "5") and len(s.sample_ids[0]) == 16


def test_prompt_response_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", "y"]}), tmp_path / "d.parquet")
    s = load_samples(str(tmp_path / "d.parquet"))
    assert s.prompts == ["a", "b"]


def test_chat_messages_first_turn(tmp_path):
    p = write_rows(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "Q1"},
                    {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"},
                    {"role": "assistant", "content": "A2"},
                ]
            },
            {"messages": [{"role": "user", "content": "lonely"}]},
        ],
    )
    s = load_samples(str(p))
    assert (s.prompts, s.responses) == (["Q1"], ["A1"])
    assert s.skipped["missing_response"] == 1


def test_bad_rows_are_counted_by_reason(tmp_path):
    p = tmp_path / "bad.jsonl"
    with open(p, "wb") as f:
        for r in [
            {"prompt": "ok", "response": "fine"},
            {"prompt": "", "response": "x"},
            {"prompt": "p"},
            {"prompt": "p", "response": 5},
            {"prompt": "p2", "response": "   "},
        ]:
            f.write(json.dumps(r).encode() + b"\n")
        f.write(b"{not json\n")
        f.write(b'{"prompt": "\xff\xfe", "response": "r"}\n')
        f.write(b"[1, 2]\n")
        f.write(json.dumps({"prompt": "ok", "response": "fine"}).encode() + b"\n")
    s = load_samples(str(p))
    assert len(s) == 1 and s.copies == [2]
    assert dict(s.skipped) == {
        "empty_prompt": 1,
        "missing_response": 1,
        "non_string_field": 1,
        "empty_response": 1,
        "undecodable_line": 2,
        "not_an_object": 1,
        "duplicate": 1,
    }


def test_strict_names_the_row(tmp_path):
    p = write_rows(tmp_path / "s.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": ""}])
    with pytest.raises(DataError, match="row 1: empty_response"):
        load_samples(str(p), strict=True)


def test_missing_file_unknown_columns_empty(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_samples(str(tmp_path / "nope.jsonl"))
    p = write_rows(tmp_path / "u.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match="columns found: answer, question"):
        load_samples(str(p))
    assert load_samples(str(p), columns=ColumnConfig(prompt="question", response="answer")).prompts == ["a"]
    e = write_rows(tmp_path / "e.jsonl", [{"prompt": "", "response": ""}])
    with pytest.raises(DataError, match="no valid rows"):
        load_samples(str(e))


def test_hash_is_stable_under_whitespace_normalisation(tmp_path):
    p = write_rows(tmp_path / "w.jsonl", [{"prompt": "  Hi\r\nthere ", "response": "yo\n"}])
    assert load_samples(str(p)).sample_ids == [sample_id("Hi\nthere", "yo")]
