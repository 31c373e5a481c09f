"""Token sequences of the utility and its maths (pure, no engine)."""

import numpy as np
import pytest

from delift_ray.config import TemplateConfig
from delift_ray.kernel import finish_dense
from delift_ray.prompts import baseline_sequence, fits, pair_sequence, split_with_example, tokenize_set
from delift_ray.utility import distance, utility


class CharTokenizer:
    """One token per character: makes sequence arithmetic easy to check."""

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_split_with_example_keeps_the_example_in_the_head():
    head, tail = split_with_example(TemplateConfig().with_example)
    assert head.endswith("{example_prompt}\n{example_response}") and tail == "\n\n\nQuery:\n{query}\n"


def test_sequences_follow_the_definition():
    t = TemplateConfig()
    tok = tokenize_set(CharTokenizer(), ["p0", "p1"], ["r0", "resp1"], t)
    eos = 0
    seq, first = baseline_sequence(tok, 1, eos)
    ctx = [ord(c) for c in t.no_example.format(query="p1")]
    assert seq == ctx + [eos] + [ord(c) for c in "resp1"] + [eos] and first == len(ctx) + 1
    seq, first = pair_sequence(tok, 1, tok, 0, eos, 10_000)
    ctx = [ord(c) for c in t.with_example.format(example_prompt="p0", example_response="r0", query="p1")]
    assert seq[: first - 1] == ctx and seq[first - 1 :] == [eos] + [ord(c) for c in "resp1"] + [eos]
    assert len(seq) - first == len("resp1") + 1  # response tokens plus EOS are scored


def test_long_example_is_truncated_never_the_response():
    t = TemplateConfig()
    tok = tokenize_set(CharTokenizer(), ["q", "x" * 500], ["answer", "y" * 500], t)
    max_len = 200
    seq, first = pair_sequence(tok, 0, tok, 1, 0, max_len)
    assert len(seq) == max_len
    assert seq[first:] == [ord(c) for c in "answer"] + [0]
    assert not fits(tok, 1, max_len, 10) and fits(tok, 0, max_len, 10)


def test_distance_and_utility():
    lp = np.log(np.array([1.0, 0.5, 0.25]))
    assert distance(lp) == pytest.approx(np.sqrt((0 + 0.25 + 0.5625) / 3))
    assert distance(np.zeros(4)) == 0.0
    assert utility(np.array([0.5]), np.array([0.2]))[0] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        distance(np.array([]))
    with pytest.raises(FloatingPointError):
        distance(np.array([np.nan]))


def test_minmax_is_global_not_per_block():
    ids = ["a", "b"]
    out = finish_dense(
        np.array([[0.0, 1.0], [2.0, 4.0]], np.float32), ids, ["c", "d"], diagonal="keep", scaling="minmax"
    )
    assert out.min() == 0 and out.max() == 1 and out[0, 1] == pytest.approx(0.25)
    # A missing pair (NaN) takes no part in the range and ends as 0.
    out = finish_dense(
        np.array([[np.nan, 1.0], [3.0, 5.0]], np.float32), ids, ["c", "d"], diagonal="keep", scaling="minmax"
    )
    assert out[1, 1] == 1 and out[0, 1] == 0 and out[0, 0] == 0
