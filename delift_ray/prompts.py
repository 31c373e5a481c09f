"""Building the token sequences that the scorer evaluates.

For helped sample i and example j (templates in :class:`~delift_ray.config.TemplateConfig`),
with ``tok`` whole-string tokenisation without special tokens:

* without example: ``tok(no_example(query=p_i)) + [EOS] + tok(r_i) + [EOS]``
* with example:    ``tok(with_example(example_prompt=p_j, example_response=r_j, query=p_i)) + [EOS] + tok(r_i) + [EOS]``

Scored positions are the tokens of r_i and the final EOS: ``len(r_i) + 1`` positions.

That is the definition; the code reaches the same tokens more cheaply.

* **Splicing.** Each template is cut into runs (a field with the spaces before it, or the
  literal text between fields). A run of literal text is tokenised once; a run with a field
  once per sample, shared by every template that holds the same run (``{query}`` and
  ``{example_prompt}`` are both p_i). A sample's context is its runs' tokens end to end.
* **Prefix sharing.** The with-example context is stored as ``head_j`` (the runs before the
  run holding ``{query}``: instruction, p_j, r_j and the literal up to the query) and
  ``tail_i`` (the rest), so every pair with the same example shares the token prefix
  ``head_j``, which the prefix cache reuses. A too-long example is cut inside ``head_j``,
  keeping the literal that ends it (``head_keep`` tokens), never the scored response.
* **Exactness.** Splicing equals whole-string tokenisation only where no token spans a cut
  and the tokenizer adds nothing at the start of a string. Byte-level BPE (GPT-2, SmolLM2,
  Llama 3, Qwen2) never merges across some cuts (``Query:\n`` | prompt) and sometimes merges
  across others (Qwen2's pre-tokenizer joins ``?`` and a following ``\n``); SentencePiece
  tokenizers in the Llama-2/Mistral style put a prefix space (``\u2581``) at the start of
  every string they tokenise. :func:`plan_tokenisation` decides per tokenizer and template
  at start-up: it joins the runs of every cut where ``tok(a + b) != tok(a) + tok(b)`` on a
  probe set (:data:`PROBES`, plus the first samples of the data), tokenises the runs after
  the first behind a fixed anchor (``tok(ANCHOR + run)`` minus ``tok(ANCHOR)``) when that
  removes a prefix space, and checks the whole spliced context against whole-string
  tokenisation on every probe. A template that fails is tokenised whole, per sample; the
  with-example context then still shares the longest exact head. All tokenisation uses
  ``add_special_tokens=False``.
"""

from __future__ import annotations

import itertools
import logging
import string
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np

from delift_ray.config import TemplateConfig
from delift_ray.data import SampleSet

log = logging.getLogger(__name__)

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
    tail: Ragged  # the with-example context after the example head, with p_i
    head: Ragged  # the with-example context up to the query, used when the sample is the example
    response: Ragged  # tok(r_i)
    head_keep: int = 0  # trailing tokens of every head (the literal after r_j) kept when a head is cut

    def __post_init__(self) -> None:
        for name in ("no_example", "tail", "head", "response"):
            setattr(self, name, _ragged(getattr(self, name)))

    def __len__(self) -> int:
        return len(self.response)


# --------------------------------------------------------------------------- the plan

# Runs after the first are tokenised behind this anchor when the tokenizer marks the start
# of a string (a SentencePiece prefix space); a newline never takes a prefix space itself.
ANCHOR = "\n"
# Contexts the plan must reproduce exactly: ends of every character class next to each cut
# (letters, digits, punctuation, brackets, quotes, code, non-Latin scripts, emoji). Data are
# stripped at load (delift_ray.data), so no probe starts or ends with whitespace.
PROBES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Sort the numbers: 3, 1, 2", "1, 2, 3"),
    ("Write a Python function that adds two numbers.", 'def add(a, b):\n    """Return a + b."""\n    return a + b'),
    ("Complete the code:\n\ndef f(x):", "return x * 2\n\n\nprint(f(1))"),
    ("Name it (briefly)", "[done]"),
    ('"Quoted" text', "'single' quotes'"),
    ("it's", "don't"),
    ("2024", "42"),
    ("x", "y"),
    ("Übersetze: «Guten Tag»", "Bonjour !"),
    ("日本語で答えてください。", "はい、わかりました。"),
    ("Emoji please 🙂", "🎉🎉"),
    ("Hello!!!", "...ok..."),
    ("tabs\tand  double  spaces", "a\n\n\nb"),
    ("<tag>", "</tag>"),
)
# Samples of the data checked besides the probes, each cut to its first and last
# PROBE_CHARS characters: whether a cut splices exactly depends on the text next to it.
DATA_PROBES = 64
PROBE_CHARS = 48
_ROLE = {"query": "{p}", "example_prompt": "{p}", "example_response": "{r}"}


@dataclass
class IngestedSet:
    """One dataset after ingest: the samples that fit with their token segments, and
    the too-long ones set aside (``rejected``, reported in samples.parquet)."""

    samples: SampleSet
    tokens: TokenizedSet
    rejected: SampleSet


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def template_runs(template: str) -> list[str]:
    """The finest runs of a template: literal text, and each field with the spaces before it.

    Concatenated they give the template back, e.g. ``"Query: {query}\n"`` ->
    ``["Query:", " {query}", "\n"]``.
    """
    runs: list[str] = []
    for literal, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            if literal:
                runs.append(_escape(literal))
            continue
        if spec or conv:
            raise ValueError(f"template field {{{field}}} must not carry a format spec or conversion")
        body = literal.rstrip(" ")
        if body:
            runs.append(_escape(body))
        runs.append(_escape(literal[len(body) :]) + "{" + field + "}")
    return runs


def _fields(run: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(run) if f is not None}


@dataclass(frozen=True)
class Segment:
    """How one template's text is tokenised: ``runs`` (concatenated: the template), each alone.

    ``anchored``: runs after the first are tokenised behind :data:`ANCHOR`.
    """

    runs: tuple[str, ...]
    anchored: bool = False

    def key(self, k: int) -> tuple[str, bool]:
        """What the tokens of run k depend on: its text with fields named by role, and the anchor."""
        run = self.runs[k]
        for field, role in _ROLE.items():
            run = run.replace("{" + field + "}", role)
        return run, self.anchored and k > 0


@dataclass(frozen=True)
class TokenisationPlan:
    """How the two contexts are tokenised: their runs, and where the with-example head ends.

    ``with_example.runs[:cut]`` form the example head (fields ``example_prompt`` and
    ``example_response`` only), ``runs[cut:]`` the query tail. ``exact`` is False only when
    no cut of the with-example template keeps its tokens; the cut is then the one right
    after ``{example_response}``, and contexts may differ from whole-string tokenisation there.
    """

    no_example: Segment
    with_example: Segment
    cut: int
    exact: bool = True

    def describe(self) -> str:
        def one(seg: Segment) -> str:
            fields = sum(bool(_fields(r)) for r in seg.runs)
            return ("whole" if len(seg.runs) == 1 else f"{len(seg.runs)} runs ({fields} per sample)") + (
                ", anchored" if seg.anchored else ""
            )

        return (
            f"no_example: {one(self.no_example)}; with_example: {one(self.with_example)}, head = runs[:{self.cut}]"
            + ("" if self.exact else "; NOT exact at the head|tail cut")
        )


def split_with_example(template: str) -> tuple[str, str]:
    """Cut the with-example template right after ``{example_response}``."""
    cut = template.index("{example_response}") + len("{example_response}")
    return template[:cut], template[cut:]


def whole_plan(templates: TemplateConfig) -> TokenisationPlan:
    """Each context tokenised whole per sample, the with-example one in two parts cut after
    ``{example_response}`` (what the scorer did before splicing; exact for byte-level BPE
    tokenizers that never merge across that cut)."""
    head, tail = split_with_example(templates.with_example)
    return TokenisationPlan(Segment((templates.no_example,)), Segment((head, tail)), cut=1)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = _rust_backend(tokenizer)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _rust_backend(tokenizer):
    """A fast tokenizer's Rust tokenizer when calling it gives the ids ``tokenizer(texts,
    add_special_tokens=False)`` gives, else None. Calling it directly skips the per-text
    offsets and the Python encodings transformers builds for every text."""
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    # transformers turns truncation and padding off and sets encode_special_tokens per call;
    # a backend in another state takes transformers' path.
    if backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def _encode_anchored(tokenizer, texts: list[str]) -> list[Optional[list[int]]]:
    """tok(ANCHOR + t) without the anchor's tokens; None where the anchor's tokens changed."""
    anchor = _encode(tokenizer, [ANCHOR])[0]
    n = len(anchor)
    return [ids[n:] if ids[:n] == anchor else None for ids in _encode(tokenizer, [ANCHOR + t for t in texts])]


def _run_tokens(tokenizer, run: str, anchored: bool, values: list[dict]) -> list[Optional[list[int]]]:
    texts = [run.format(**v) for v in values]
    return _encode_anchored(tokenizer, texts) if anchored else _encode(tokenizer, texts)


def _splices_exactly(tokenizer, runs: Sequence[str], anchored: bool, values: list[dict]) -> bool:
    """Whether the runs' tokens end to end equal whole-string tokenisation for every value set."""
    whole = _encode(tokenizer, ["".join(runs).format(**v) for v in values])
    parts = [_run_tokens(tokenizer, run, anchored and k > 0, values) for k, run in enumerate(runs)]
    for i, ref in enumerate(whole):
        got = []
        for p in parts:
            if p[i] is None:
                return False
            got += p[i]
        if got != ref:
            return False
    return True


def _segment(tokenizer, template: str, values: list[dict], anchored: bool) -> Optional[Segment]:
    """The finest exact runs of a template: runs whose cut fails a probe are joined."""
    runs = [template_runs(template)[0]]
    for nxt in template_runs(template)[1:]:
        # Cut between the last run and nxt only where that alone keeps the tokens.
        if _splices_exactly(tokenizer, [runs[-1], nxt], anchored, values):
            runs.append(nxt)
        else:
            runs[-1] += nxt
    return Segment(tuple(runs), anchored) if _splices_exactly(tokenizer, runs, anchored, values) else None


def _query_cut(seg: Segment) -> Optional[int]:
    """Index of the run holding {query} when it and the runs after it hold no example field."""
    for k, run in enumerate(seg.runs):
        if "query" in _fields(run):
            later = set().union(*(_fields(r) for r in seg.runs[k:]))
            return k if later == {"query"} and k > 0 else None
    return None


def probe_values(prompts: Sequence[str] = (), responses: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The (prompt, response) probes: :data:`PROBES` plus the ends of the first data samples."""

    def ends(text: str) -> str:
        return text if len(text) <= 2 * PROBE_CHARS else text[:PROBE_CHARS] + text[-PROBE_CHARS:]

    data = [(ends(p), ends(r)) for p, r in zip(list(prompts)[:DATA_PROBES], list(responses)[:DATA_PROBES])]
    return list(PROBES) + data


def plan_tokenisation(
    tokenizer, templates: TemplateConfig, prompts: Sequence[str] = (), responses: Sequence[str] = ()
) -> TokenisationPlan:
    """The cheapest exact way to tokenise both contexts with this tokenizer (see the module doc).

    Tries plain runs and anchored runs and keeps the finer exact one; a template that
    neither reproduces is tokenised whole. Checked on :data:`PROBES` and the first :data:`DATA_PROBES` samples given.
    """
    pairs = probe_values(prompts, responses)
    nxt = pairs[1:] + pairs[:1]
    no_ex = [{"query": p} for p, _ in pairs]
    with_ex = [{"example_prompt": p, "example_response": r, "query": q} for (p, r), (q, _) in zip(pairs, nxt)]

    def best(template: str, values: list[dict]) -> Optional[Segment]:
        """The exact segment with the most runs (plain before anchored on a tie)."""
        plain = _segment(tokenizer, template, values, anchored=False)
        if plain is not None and len(plain.runs) == len(template_runs(template)):
            return plain  # as fine as it gets
        segs = [seg for seg in (plain, _segment(tokenizer, template, values, anchored=True)) if seg is not None]
        return max(segs, key=lambda seg: len(seg.runs)) if segs else None

    whole = whole_plan(templates)
    no_example = best(templates.no_example, no_ex) or whole.no_example
    with_example = best(templates.with_example, with_ex)
    cut = _query_cut(with_example) if with_example is not None else None
    if with_example is None or cut is None:
        # No exact cut between example and query: keep the old one (still exact where the
        # tokenizer never merges across it), and say so.
        for anchored in (False, True):
            seg = replace(whole.with_example, anchored=anchored)
            if _splices_exactly(tokenizer, seg.runs, anchored, with_ex):
                return TokenisationPlan(no_example, seg, cut=1)
        return TokenisationPlan(no_example, whole.with_example, cut=1, exact=False)
    return TokenisationPlan(no_example, with_example, cut=cut)


# --------------------------------------------------------------------------- tokenising a set

# Samples at which tokenisation shows a progress bar by default.
PROGRESS_MIN_SAMPLES = 20_000


def _encode_run(tokenizer, texts: Sequence[str], anchored: bool, chunk: int, bar) -> tuple[Ragged, np.ndarray]:
    """Tokenise in chunks (only one chunk's Python lists alive at a time).

    Returns the tokens and a mask of the rows whose anchor merged with the text (their
    tokens are empty; the caller tokenises those rows whole).
    """
    parts, bad = [], np.zeros(len(texts), dtype=bool)
    for s in range(0, len(texts), chunk):
        batch = list(texts[s : s + chunk])
        ids = _encode_anchored(tokenizer, batch) if anchored else _encode(tokenizer, batch)
        for k, row in enumerate(ids):
            if row is None:
                bad[s + k] = True
        parts.append(Ragged.from_lists([row or [] for row in ids]))
        if bar is not None:
            bar.update(len(batch))
    return Ragged.concat(parts), bad


class _RunCache:
    """Tokens of each distinct run over all samples, tokenised once (see Segment.key)."""

    def __init__(self, tokenizer, prompts: Sequence[str], responses: Sequence[str], chunk: int, bar):
        self.tokenizer, self.prompts, self.responses, self.chunk, self.bar = tokenizer, prompts, responses, chunk, bar
        self.done: dict[tuple[str, bool], tuple[Ragged, np.ndarray]] = {}

    def get(self, key: tuple[str, bool]) -> tuple[Ragged, np.ndarray]:
        if key not in self.done:
            run, anchored = key
            n = len(self.responses)
            if not _fields(run):  # literal: once, then the same row for every sample
                ids = (_encode_anchored if anchored else _encode)(self.tokenizer, [run.format()])[0]
                if ids is None:
                    self.done[key] = (Ragged.from_lists([[]]).take(np.zeros(n, np.int64)), np.ones(n, dtype=bool))
                else:
                    self.done[key] = (Ragged.from_lists([ids]).take(np.zeros(n, np.int64)), np.zeros(n, dtype=bool))
            elif run == "{p}":
                self.done[key] = _encode_run(self.tokenizer, self.prompts, anchored, self.chunk, self.bar)
            elif run == "{r}":
                self.done[key] = _encode_run(self.tokenizer, self.responses, anchored, self.chunk, self.bar)
            else:
                texts = [run.format(p=p, r=r) for p, r in zip(self.prompts, self.responses)]
                self.done[key] = _encode_run(self.tokenizer, texts, anchored, self.chunk, self.bar)
        return self.done[key]


def hstack(parts: Sequence[Ragged]) -> Ragged:
    """Row k of the result is row k of every part, end to end (vectorised)."""
    n = len(parts[0])
    lens = [p.lengths() for p in parts]
    total = np.sum(lens, axis=0) if parts else np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(total, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int32)
    start = offsets[:-1].copy()
    for p, ln in zip(parts, lens):
        pos = np.repeat(start - p.offsets[:-1], ln) + np.arange(p.flat.size, dtype=np.int64)
        flat[pos] = p.flat
        start += ln
    return Ragged(flat, offsets)


def _assemble(cache: _RunCache, seg: Segment, runs: range, whole: Callable[[np.ndarray], Ragged]) -> Ragged:
    """The segment's runs end to end; rows an anchor failed on are tokenised whole instead."""
    got = [cache.get(seg.key(k)) for k in runs]
    out = hstack([g[0] for g in got])
    bad = np.logical_or.reduce([g[1] for g in got]) if got else np.zeros(len(out), bool)
    if bad.any():
        idx = np.flatnonzero(bad)
        redo = whole(idx)
        rows = [redo[i] if b else out[k] for k, (b, i) in enumerate(zip(bad, np.cumsum(bad) - 1))]
        out = Ragged.from_lists(rows)
    return out


def tokenize_set(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    templates: TemplateConfig,
    plan: Optional[TokenisationPlan] = None,
    progress: Optional[bool] = None,
    chunk: int = 8192,
) -> TokenizedSet:
    """Tokenise every sample's segments by ``plan`` (default: :func:`plan_tokenisation` on
    this tokenizer, the templates and the first samples).

    ``progress``: a tqdm bar over the texts tokenised (default: on from
    :data:`PROGRESS_MIN_SAMPLES` samples).
    """
    from tqdm import tqdm

    if plan is None:
        plan = plan_tokenisation(tokenizer, templates, prompts, responses)
    n = len(prompts)
    runs_per_sample = len(
        {
            seg.key(k)
            for seg in (plan.no_example, plan.with_example)
            for k in range(len(seg.runs))
            if _fields(seg.runs[k])
        }
        | {("{r}", False)}
    )
    show = progress if progress is not None else n >= PROGRESS_MIN_SAMPLES
    bar = tqdm(
        total=n * runs_per_sample, unit="text", desc="tokenise", disable=not show, dynamic_ncols=True, leave=False
    )
    try:
        cache = _RunCache(tokenizer, prompts, responses, chunk, bar)
        response, _ = cache.get(("{r}", False))  # tok(r_i): the scored part, by definition alone

        def whole_rows(template: str, role_values: Callable[[int], dict], anchored: bool = False):
            def rows(idx):
                texts = [template.format(**role_values(int(i))) for i in idx]
                ids = _encode_anchored(tokenizer, texts) if anchored else [None] * len(texts)
                return Ragged.from_lists([a if a is not None else b for a, b in zip(ids, _encode(tokenizer, texts))])

            return rows

        ne, we = plan.no_example, plan.with_example
        no_example = _assemble(
            cache, ne, range(len(ne.runs)), whole_rows(templates.no_example, lambda i: {"query": prompts[i]})
        )
        head_t, tail_t = "".join(we.runs[: plan.cut]), "".join(we.runs[plan.cut :])
        head = _assemble(
            cache,
            we,
            range(plan.cut),
            whole_rows(head_t, lambda i: {"example_prompt": prompts[i], "example_response": responses[i]}),
        )
        tail = _assemble(
            cache, we, range(plan.cut, len(we.runs)), whole_rows(tail_t, lambda i: {"query": prompts[i]}, we.anchored)
        )
    finally:
        bar.close()
    keep = 0
    if n and not _fields(we.runs[plan.cut - 1]):  # the head ends in literal text: a cut keeps it
        keep = len(cache.get(we.key(plan.cut - 1))[0][0])
    return TokenizedSet(no_example=no_example, tail=tail, head=head, response=response, head_keep=keep)


def template_head_length(tokenizer, templates: TemplateConfig, plan: Optional[TokenisationPlan] = None) -> int:
    """Tokens of the with-example head with an empty example (the least an example can shrink to)."""
    plan = plan or plan_tokenisation(tokenizer, templates)
    head = "".join(plan.with_example.runs[: plan.cut])
    return len(_encode(tokenizer, [head.format(example_prompt="", example_response="")])[0])


def fits(tok: TokenizedSet, k: int, max_len: int, min_head: int) -> bool:
    """Whether sample k can be scored: its query and response fit with and without an example."""
    resp = len(tok.response[k]) + 2
    return len(tok.no_example[k]) + resp <= max_len and min_head + len(tok.tail[k]) + resp <= max_len


def baseline_sequence(tok: TokenizedSet, i: int, eos: int) -> tuple[list[int], int]:
    """(tokens, first scored position) of helped sample i without an example."""
    ctx = tok.no_example[i]
    return ctx + [eos] + tok.response[i] + [eos], len(ctx) + 1


def pair_sequence(
    helped: TokenizedSet, i: int, examples: TokenizedSet, j: int, eos: int, max_len: int
) -> tuple[list[int], int]:
    """(tokens, first scored position) of helped i with example j.

    A head too long for ``max_len`` loses tokens from its example, right before the
    ``head_keep`` tokens of literal that end it.
    """
    tail = helped.tail[i]
    resp = helped.response[i]
    room = max(max_len - len(tail) - len(resp) - 2, 0)
    head = examples.head[j]
    if len(head) > room:
        keep = min(examples.head_keep, room)
        head = head[: room - keep] + (head[len(head) - keep :] if keep else [])
    ctx_len = len(head) + len(tail)
    return head + tail + [eos] + resp + [eos], ctx_len + 1


def take(tok: TokenizedSet, idx) -> TokenizedSet:
    """The segments of samples ``idx`` only (what one block needs)."""
    return TokenizedSet(
        no_example=tok.no_example.take(idx),
        tail=tok.tail.take(idx),
        head=tok.head.take(idx),
        response=tok.response.take(idx),
        head_keep=tok.head_keep,
    )
