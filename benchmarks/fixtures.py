"""What the tests and the benchmarks build or inspect, and delift-ray itself never uses.

* :func:`build_tiny_model` builds a tiny random Llama plus a byte-level BPE tokenizer trained
  locally (no download): the model of the test suite and of the small benchmarks.
* :func:`descendants` and :func:`scorer_pids` inspect processes (Linux /proc) for the fault
  tests and the chaos benchmark, which kill scorer actors by pid: they find only the actors
  started below a given process, so other Ray clusters on the same machine are never touched.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Optional, Union

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------- processes


def descendants(root: int) -> set[int]:
    """Pids of every process below ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(os.path.basename(d)))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def scorer_pids(root: int | None = None) -> list[int]:
    """Pids of live BlockScorer actor processes (Ray titles them 'ray::BlockScorer') below
    ``root`` (default: this process, whose embedded Ray starts them). Other people's Ray
    clusters on the same machine are never touched."""
    pids = []
    for pid in sorted(descendants(os.getpid() if root is None else root)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.startswith(b"ray::BlockScorer"):
            pids.append(pid)
    return pids


# --------------------------------------------------------------------------- the tiny test model

# A small English text written for this project, used to train the tiny model's byte-level
# BPE. Any text is tokenisable regardless (the 256 byte symbols are always in the vocab);
# the corpus only decides which merges exist.
TINY_CORPUS = """\
Instruction: Please generate a response to the following query.
Query: What is the capital of France?
Response: The capital of France is Paris. It is known for the Eiffel Tower and its museums.
Query: How do I make a cup of tea?
Response: Boil some water, pour it over a tea bag in a cup, wait three to five minutes,
then remove the bag. Add milk or sugar if you like.
Use the following example as a guide to answer the query in the same format and style,
providing a clear and concise response.
Example: Write a short poem about the sea.
The sea is wide, the sea is deep, it sings the sailors off to sleep.
Explain why the sky is blue. Sunlight is scattered by the molecules in the air, and blue
light is scattered more than red light because it has a shorter wavelength.
Give me three tips for staying healthy. Eat a balanced diet with plenty of vegetables,
get regular exercise, and make sure you sleep well every night.
Summarize the main ideas of the article in a few bullet points for the reader.
Can you write a Python function that returns the sum of a list of numbers?
def total(numbers):
    return sum(numbers)
Translate the sentence into French and explain the grammar of each word.
What are the advantages and disadvantages of working from home for a small team?
The model selects the most informative examples for fine tuning a language model.
Data selection helps us train faster, with fewer examples and better results.
This is a test of the tokenizer. It should handle numbers like 1, 2, 3, 42 and 2024,
punctuation such as commas, periods, question marks? and exclamation marks!
It should also handle new lines, tabs\tand "quoted" text, as well as (brackets) and [lists].
Thank you for your help. You are welcome; let me know if there is anything else I can do.
"""

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # pad, bos, eos


def _train_tiny_tokenizer(corpus: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    return tok


def build_tiny_model(
    path: PathLike,
    *,
    seed: int = 0,
    vocab_corpus: Optional[Union[str, Iterable[str]]] = None,
    vocab_size: int = 512,
    initializer_range: float = 0.1,
) -> Path:
    """Build and save a tiny random ``LlamaForCausalLM`` (float32) with its tokenizer.

    2 layers, hidden 256, 4 heads (head_dim 64, the least vLLM CPU accepts), 2 KV heads,
    intermediate 512, 2048 positions, tied embeddings. The tokenizer is a byte-level BPE
    trained in memory on :data:`TINY_CORPUS` (plus ``vocab_corpus`` if given) with at most
    ``vocab_size`` entries; it encodes any text without unknown tokens, adds no special
    tokens (like SmolLM2), and has pad ``<|endoftext|>``, bos ``<|im_start|>``, eos
    ``<|im_end|>``. ``initializer_range`` 0.1 (not Llama's 0.02) gives logits with a
    standard deviation of about 1.5, so log-probabilities depend visibly on the context.
    Deterministic given ``seed`` and the corpus. Returns ``path``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = TINY_CORPUS
    if vocab_corpus is not None:
        corpus += "\n" + (vocab_corpus if isinstance(vocab_corpus, str) else "\n".join(vocab_corpus))
    raw = _train_tiny_tokenizer(corpus, vocab_size)
    pad, bos, eos = TINY_SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    n_vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=-(-n_vocab // 64) * 64,  # rows past the tokenizer are never produced
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
