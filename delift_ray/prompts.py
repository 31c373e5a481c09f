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

from dataclasses import dataclass

import numpy as np

from delift_ray.config import TemplateConfig

# Too long for the engine even without an example: rejected at ingest.
TOO_LONG = "too_long"


@dataclass
class TokenizedSet:
    """Pre-tokenised segments of every sample of one set (lists aligned with the SampleSet)."""

    no_example: list[list[int]]  # tok(no_example(query=p_i))
    tail: list[list[int]]  # tok(tail_i), the with-example part after the example
    head: list[list[int]]  # tok(head_j), used when the sample is the example
    response: list[list[int]]  # tok(r_i)

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


def tokenize_set(tokenizer, prompts: list[str], responses: list[str], templates: TemplateConfig) -> TokenizedSet:
    head_t, tail_t = split_with_example(templates.with_example)
    return TokenizedSet(
        no_example=_encode(tokenizer, [templates.no_example.format(query=p) for p in prompts]),
        tail=_encode(tokenizer, [tail_t.format(query=p) for p in prompts]),
        head=_encode(tokenizer, [head_t.format(example_prompt=p, example_response=r) for p, r in zip(prompts, responses)]),
        response=_encode(tokenizer, responses),
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


def scored_token_count(tok: TokenizedSet) -> np.ndarray:
    return np.fromiter((len(r) + 1 for r in tok.response), dtype=np.int64, count=len(tok))


def take(tok: TokenizedSet, idx) -> TokenizedSet:
    """The segments of samples ``idx`` only (what one block needs)."""
    idx = [int(i) for i in idx]
    return TokenizedSet(
        no_example=[tok.no_example[i] for i in idx],
        tail=[tok.tail[i] for i in idx],
        head=[tok.head[i] for i in idx],
        response=[tok.response[i] for i in idx],
    )
