"""Prompt formats of the evaluation and their token-level truncation.

Fine-tuning and evaluation use the run's no-example template (``templates.no_example``
of the run's config; the default below when the run does not name one)::

    no_example.format(query=prompt) + response + EOS

In-context (ICL) mode uses the run's with-example template extended to k examples: its
instruction (the text before ``Example:``, or before ``{example_prompt}``), then k example
blocks (``Example:\n{p}\n{r}`` in the default) joined by the template's separator (the
text between the example and ``Query``, three newlines in the default), then the
template's query tail. With k = 1 this is exactly the with-example template.

Truncation (sequence limit ``max_length``): the response keeps at least ``max_length // 2``
tokens (never none), the query is cut at its end to make room, and as a last resort the
context is cut at its start. ICL examples are each cut to ``example_tokens`` tokens (the
prompt to at most half when the response needs the rest); they come on top of
``max_length``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from delift_ray.config import DEFAULT_NO_EXAMPLE_TEMPLATE, DEFAULT_WITH_EXAMPLE_TEMPLATE


def _split_with_example(template: str) -> tuple[str, str, str]:
    """(instruction header, example block format, query tail) of a with-example template."""
    start = template.index("Example:") if "Example:" in template else template.index("{example_prompt}")
    cut = template.index("{example_response}") + len("{example_response}")
    return template[:start], template[start:cut], template[cut:]


def _separator(tail: str) -> str:
    """What a with-example template puts between the example and the query."""
    return tail[: tail.index("Query")] if "Query" in tail else "\n\n\n"


class IclFormat:
    """The k-example context of a with-example template."""

    def __init__(self, template: str = DEFAULT_WITH_EXAMPLE_TEMPLATE):
        self.header, self.block, self.tail = _split_with_example(template)
        self.separator = _separator(self.tail)

    def __call__(self, examples: Sequence[tuple[str, str]], query: str) -> str:
        blocks = self.separator.join(self.block.format(example_prompt=p, example_response=r) for p, r in examples)
        return self.header + blocks + self.tail.format(query=query)


DEFAULT_ICL = IclFormat()
ICL_HEADER, ICL_BLOCK, ICL_TAIL, ICL_SEPARATOR = (
    DEFAULT_ICL.header,
    DEFAULT_ICL.block,
    DEFAULT_ICL.tail,
    DEFAULT_ICL.separator,
)


def no_example_context(query: str, template: str = DEFAULT_NO_EXAMPLE_TEMPLATE) -> str:
    """The fine-tuning / evaluation context of one query."""
    return template.format(query=query)


def icl_context(examples: Sequence[tuple[str, str]], query: str) -> str:
    """The in-context context of the default template: instruction, k example blocks, the query."""
    return DEFAULT_ICL(examples, query)


class PromptEncoder:
    """Token ids of contexts and responses, with the module's truncation rules."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        example_tokens: int = 128,
        *,
        no_example: str = DEFAULT_NO_EXAMPLE_TEMPLATE,
        with_example: str = DEFAULT_WITH_EXAMPLE_TEMPLATE,
    ):
        if max_length < 8:
            raise ValueError("max_length must be at least 8")
        self.no_example = no_example
        self.icl = IclFormat(with_example)
        self.tok = tokenizer
        self.max_length = int(max_length)
        self.example_tokens = int(example_tokens)
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token")
        with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        # Prepend BOS only where the tokenizer itself would (Llama-2/3 style).
        self.prefix = [bos] if bos is not None and len(with_sp) > len(without) and with_sp[0] == bos else []

    # -- helpers
    def ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _cut_text(self, text: str, n: int) -> str:
        ids = self.ids(text)
        if len(ids) <= n:
            return text
        return self.tok.decode(ids[: max(n, 0)], skip_special_tokens=True)

    def _context_ids(self, build, query: str, budget: int) -> list[int]:
        """ids of build(query) with the query cut at its end so that the whole fits ``budget``."""
        ids = self.prefix + self.ids(build(query))
        if len(ids) <= budget:
            return ids
        q_ids = self.ids(query)
        n = len(q_ids)
        for _ in range(4):
            n -= len(ids) - budget
            if n <= 0:
                q = ""
            else:
                q = self.tok.decode(q_ids[:n], skip_special_tokens=True)
            ids = self.prefix + self.ids(build(q))
            if len(ids) <= budget or n <= 0:
                break
        if len(ids) > budget:  # the template alone is too long: keep its end
            ids = ids[len(ids) - budget :]
        return ids

    def _cut_examples(self, examples: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        cap = self.example_tokens
        out = []
        for p, r in examples:
            np_, nr = len(self.ids(p)), len(self.ids(r))
            p_cap = max(cap - nr, cap // 2)
            p_keep = min(np_, p_cap)
            r_keep = max(cap - p_keep, 0)
            out.append((self._cut_text(p, p_keep), self._cut_text(r, r_keep)))
        return out

    def _builder(self, examples: Optional[Sequence[tuple[str, str]]]):
        if examples is None:
            return lambda q: no_example_context(q, self.no_example)
        cut = self._cut_examples(examples)
        return lambda q: self.icl(cut, q)

    def _extra(self, examples: Optional[Sequence[tuple[str, str]]]) -> int:
        if not examples:
            return 0
        header = len(self.ids(self.icl.header)) + 8
        return header + len(examples) * (self.example_tokens + 8)

    # -- public
    def pair(
        self, prompt: str, response: str, *, examples: Optional[Sequence[tuple[str, str]]] = None, add_eos: bool = False
    ) -> tuple[list[int], list[int]]:
        """(context ids, response ids) for scoring or training; response ids end with EOS
        when ``add_eos``. The response keeps at least ``max_length // 2`` tokens."""
        r_ids = self.ids(response)
        if add_eos:
            r_ids = r_ids + [self.eos]
        L = self.max_length
        ctx_full_len = len(self.prefix) + len(self.ids(no_example_context(prompt, self.no_example)))
        keep = min(len(r_ids), max(L - ctx_full_len, L // 2))
        if keep < len(r_ids):
            r_ids = r_ids[:keep] if not add_eos else r_ids[: keep - 1] + [self.eos]
        budget = L - len(r_ids) + self._extra(examples)
        ctx = self._context_ids(self._builder(examples), prompt, budget)
        return ctx, r_ids

    def generation_context(
        self, prompt: str, *, examples: Optional[Sequence[tuple[str, str]]] = None, max_new_tokens: int = 64
    ) -> list[int]:
        """Context ids for generation: the query is cut so that context + new tokens fit."""
        budget = max(self.max_length - max_new_tokens, self.max_length // 2) + self._extra(examples)
        return self._context_ids(self._builder(examples), prompt, budget)
