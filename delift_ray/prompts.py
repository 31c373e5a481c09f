"""Building the token sequences that the scorer evaluates.

For helped sample i and example j (templates in :class:`~delift_ray.config.TemplateConfig`):

* without example: ``tok(no_example(query=p_i)) + [EOS] + tok(r_i) + [EOS]``
* with example:    ``tok(head_j) + tok(tail_i) + [EOS] + tok(r_i) + [EOS]``

where the with-example template is cut right after ``{example_response}``: ``head_j`` is
the part up to and including r_j (instruction, p_j, r_j) and ``tail_i`` the rest (the
query header and p_i). Tokenising the two parts separately makes every pair with the
same example share an identical token prefix (which the prefix cache can reuse) and
lets a too-long example be truncated without touching the scored response. All
tokenisation uses ``add_special_tokens=False``.

Scored positions are the tokens of r_i and the final EOS: ``len(r_i) + 1`` positions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from delift_ray.config import TemplateConfig

# Too long for the engine even without an example: rejected at ingest.
TOO_LONG = "too_long"


class Ragged:
    """Rows of token ids stored flat (int32 values + int64 offsets); ``r[k]`` is a list.

    Row k is ``flat[offsets[k]:offsets[k + 1]]``. At a million samples, four segments of
    Python int lists cost about 36 bytes a token; this costs 4 (benchmarks/scale.py).
    """

    __slots__ = ("flat", "offsets")

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = np.asarray(flat, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_lists(cls, rows) -> "Ragged":
        rows = list(rows)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def concat(cls, parts: list["Ragged"]) -> "Ragged":
        if not parts:
            return cls(np.empty(0, np.int32), np.zeros(1, np.int64))
        flat = np.concatenate([p.flat for p in parts])
        lengths = np.concatenate([np.diff(p.offsets) for p in parts])
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(flat, offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, k) -> list[int]:
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.flat[self.offsets[k] : self.offsets[k + 1]].tolist()

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, idx) -> "Ragged":
        """Rows ``idx`` in that order, vectorised."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        pos = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        return Ragged(self.flat[pos], offsets)

    def __repr__(self) -> str:
        return f"Ragged(rows={len(self)}, tokens={self.flat.size})"


def _ragged(rows) -> Ragged:
    return rows if isinstance(rows, Ragged) else Ragged.from_lists(rows)


@dataclass
class TokenizedSet:
    """Pre-tokenised segments of every sample of one set (rows aligned with the SampleSet).

    Each field is a :class:`Ragged` (lists of lists are converted); ``tok.head[i]`` is a
    list of token ids.
    """

    no_example: Ragged  # tok(no_example(query=p_i))
    tail: Ragged  # tok(tail_i), the with-example part after the example
    head: Ragged  # tok(head_j), used when the sample is the example
    response: Ragged  # tok(r_i)

    def __post_init__(self) -> None:
        for name in ("no_example", "tail", "head", "response"):
            setattr(self, name, _ragged(getattr(self, name)))

    def __len__(self) -> int:
        return len(self.response)


def split_with_example(template: str) -> tuple[str, str]:
    """Cut the with-example template right after ``{example_response}``."""
    cut = template.index("{example_response}") + len("{example_response}")
    return template[:cut], template[cut:]


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _encode_ragged(tokenizer, texts, chunk: int = 8192) -> Ragged:
    """Tokenise in chunks so only one chunk's Python lists are alive at a time."""
    texts = list(texts)
    return Ragged.concat([Ragged.from_lists(_encode(tokenizer, texts[s : s + chunk])) for s in range(0, len(texts), chunk)])


def tokenize_set(tokenizer, prompts: list[str], responses: list[str], templates: TemplateConfig) -> TokenizedSet:
    head_t, tail_t = split_with_example(templates.with_example)
    return TokenizedSet(
        no_example=_encode_ragged(tokenizer, (templates.no_example.format(query=p) for p in prompts)),
        tail=_encode_ragged(tokenizer, (tail_t.format(query=p) for p in prompts)),
        head=_encode_ragged(tokenizer, (head_t.format(example_prompt=p, example_response=r) for p, r in zip(prompts, responses))),
        response=_encode_ragged(tokenizer, responses),
    )


def template_head_length(tokenizer, templates: TemplateConfig) -> int:
    """Tokens of the with-example instruction alone (the least an example can shrink to)."""
    head_t, _ = split_with_example(templates.with_example)
    return len(_encode(tokenizer, [head_t.format(example_prompt="", example_response="")])[0])


def fits(tok: TokenizedSet, k: int, max_len: int, min_head: int) -> bool:
    """Whether sample k can be scored: its query and response fit with and without an example."""
    resp = len(tok.response[k]) + 2
    return len(tok.no_example[k]) + resp <= max_len and min_head + len(tok.tail[k]) + resp <= max_len


def baseline_sequence(tok: TokenizedSet, i: int, eos: int) -> tuple[list[int], int]:
    """(tokens, first scored position) of helped sample i without an example."""
    ctx = tok.no_example[i]
    return ctx + [eos] + tok.response[i] + [eos], len(ctx) + 1


def pair_sequence(helped: TokenizedSet, i: int, examples: TokenizedSet, j: int, eos: int, max_len: int) -> tuple[list[int], int]:
    """(tokens, first scored position) of helped i with example j; the example is cut to fit."""
    tail = helped.tail[i]
    resp = helped.response[i]
    room = max_len - len(tail) - len(resp) - 2
    head = examples.head[j]
    if len(head) > room:
        head = head[: max(room, 0)]
    ctx_len = len(head) + len(tail)
    return head + tail + [eos] + resp + [eos], ctx_len + 1


def take(tok: TokenizedSet, idx) -> TokenizedSet:
    """The segments of samples ``idx`` only (what one block needs)."""
    return TokenizedSet(no_example=tok.no_example.take(idx), tail=tok.tail.take(idx),
                        head=tok.head.take(idx), response=tok.response.take(idx))
