"""Reading and normalising data: any supported source in, a :class:`SampleSet` out.

Pipeline: ``read_records`` (HF datasets, with a tolerant line reader for broken JSONL)
-> ``resolve_columns`` (Alpaca / prompt-response / chat, or the user's mapping)
-> ``extract_pair`` per row (prompt, response, or a skip reason)
-> content hash and exact-duplicate merge -> :class:`SampleSet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from delift_ray.config import ColumnConfig
from delift_ray.errors import DataError, one_line
from delift_ray.storage import local_copy

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

# Skip reasons, as counted in run.json under counts.skipped.
UNDECODABLE = "undecodable_line"
NOT_AN_OBJECT = "not_an_object"
MISSING_PROMPT = "missing_prompt"
MISSING_RESPONSE = "missing_response"
EMPTY_PROMPT = "empty_prompt"
EMPTY_RESPONSE = "empty_response"
NON_STRING = "non_string_field"
BAD_MESSAGES = "bad_messages"
UNENCODABLE = "unencodable_text"
DUPLICATE = "duplicate"


@dataclass
class SampleSet:
    """The valid, de-duplicated samples of one dataset, in input order.

    ``rows[k]`` is the 0-based index of sample k's first occurrence in the input as
    loaded; ``copies[k]`` counts its exact duplicates (1 = unique).
    """

    name: str
    sample_ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    originals: list[str] = field(default_factory=list)
    copies: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, keep: Iterable[int]) -> "SampleSet":
        keep = list(keep)
        out = SampleSet(self.name, skipped=Counter(self.skipped), rows_read=self.rows_read)
        for attr in ("sample_ids", "rows", "prompts", "responses", "originals", "copies"):
            src = getattr(self, attr)
            setattr(out, attr, [src[k] for k in keep])
        return out


class BadRow(Exception):
    """A row that cannot become a sample; ``reason`` is one of the skip reasons."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def normalise_text(text: str) -> str:
    """Unicode NFC, Unix newlines, no surrounding white space."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def sample_id(prompt: str, response: str) -> str:
    """Content hash of a normalised (prompt, response): 16 hex digits, stable across runs."""
    h = hashlib.blake2b(digest_size=8)
    h.update(prompt.encode("utf-8"))
    h.update(b"\x1f")
    h.update(response.encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_FORMATS)
    except OSError as exc:  # a sub-folder we may not list
        raise DataError(f"cannot list data folder {path}: {exc.strerror or exc} ({exc.filename})") from None
    if not files:
        raise DataError(f"no .json/.jsonl/.parquet/.csv files found in folder {path}")
    kinds = {LOCAL_FORMATS[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        raise DataError(f"folder {path} mixes formats {sorted(kinds)}; use one format per dataset")
    return files


def _exists(path: Path, source: str) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL, a folder we may not enter
        raise DataError(f"cannot use data path {source[:200]!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _check_readable(files: list[Path]) -> None:
    """Open each file once, so that a file we may not read is one line, not a reader's traceback."""
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise DataError(
                f"cannot read data file {f}: {exc.strerror or exc}; check that it is a readable file"
            ) from None


def _only_object_lines(files: list[Path]) -> bool:
    """Whether every non-blank line of the JSON files starts an object (``{``).

    Anything else goes to the line reader, not to pyarrow: pyarrow 26's JSON reader
    crashes the process (SIGSEGV, no exception) on a top-level ``null`` line that starts
    one of its blocks, e.g. a file whose first line is ``null``; datasets also turns a JSON
    array holding ``null`` into such a line. The scan reads each file once.
    """
    for f in files:
        with open(f, "rb") as fh:
            for n, raw in enumerate(fh):
                line = raw.lstrip(b" \t\r\n")
                if n == 0 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, which datasets strips
                    line = line[3:].lstrip(b" \t\r\n")
                if line and not line.startswith(b"{"):
                    return False
    return True


def _read_json_lines_tolerant(files: list[Path]) -> Iterator[dict | BadRow]:
    """Line-by-line JSONL reader used when datasets cannot parse the file as a whole."""
    for f in files:
        with open(f, "rb") as fh:
            first = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
            fh.seek(0)
            if first == b"[":  # a JSON array (datasets' reader is not given arrays, see _only_object_lines)
                try:
                    data = json.loads(fh.read().decode("utf-8-sig"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise DataError(f"{f}: not valid JSON ({exc.__class__.__name__}: {str(exc)[:120]})") from None
                for obj in data:
                    yield obj if isinstance(obj, dict) else BadRow(NOT_AN_OBJECT)
                continue
            for n, raw in enumerate(fh):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8-sig" if n == 0 else "utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    yield BadRow(UNDECODABLE)
                    continue
                yield obj if isinstance(obj, dict) else BadRow(NOT_AN_OBJECT)


class DatasetRows:
    """The rows of a ``datasets.Dataset`` as dicts, read ``batch`` rows at a time.

    Same rows as ``iter(ds)``, which formats every row on its own and is the slow part of
    reading a million rows. Sized, so a progress bar knows the total.
    """

    def __init__(self, ds, batch: int = 4096):
        self.ds, self.batch = ds, batch

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self) -> Iterator[dict]:
        for cols in self.ds.iter(batch_size=self.batch):
            names = list(cols)
            for values in zip(*(cols[c] for c in names)):
                yield dict(zip(names, values))


def read_records(
    source: str, split: str = "train", max_rows: Optional[int] = None
) -> tuple[list[str], Iterable[dict | BadRow]]:
    """Open a dataset; return (column names, the rows or BadRow markers, sized).

    Local files and folders go through HF ``datasets`` (json/parquet/csv builders). JSON
    that the builder rejects (a malformed line, mixed types), and JSON that is not lines of
    objects only (see :func:`_only_object_lines`), is read line by line so that only the
    bad lines are lost. Anything else is tried as a hub dataset name.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(local_copy(source)).expanduser()  # a dataset on object storage is read from a local copy
    if _exists(path, source):
        files = _local_files(path)
        _check_readable(files)
        builder = LOCAL_FORMATS[files[0].suffix.lower()]
        ds = None
        if builder != "json" or _only_object_lines(files):
            try:
                ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
            except Exception as exc:  # datasets raises several types for malformed input
                if builder != "json":
                    raise DataError(f"cannot read {source}: {_read_error_text(exc)}") from None
        if ds is None:  # JSON that is not plain lines of objects, or that the builder rejected
            return _tolerant_records(source, files, max_rows)
        if len(ds) == 0:
            raise DataError(f"{source} is empty: no rows")
    elif os.sep in source or source.startswith(".") or source.endswith(tuple(LOCAL_FORMATS)):
        raise DataError(f"data file not found: {source}")
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:
            raise DataError(
                f"cannot load dataset {source!r} (not a local path; hub load failed: {one_line(exc, 160)})"
            ) from None
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return list(ds.column_names), DatasetRows(ds)


def _tolerant_records(source: str, files: list[Path], max_rows: Optional[int]) -> tuple[list[str], list[dict | BadRow]]:
    rows = list(_read_json_lines_tolerant(files))
    if not rows:
        raise DataError(f"{source} is empty: no rows")
    if not any(isinstance(r, dict) for r in rows):
        reasons = Counter(r.reason for r in rows if isinstance(r, BadRow))
        raise DataError(
            f"{source}: no readable rows ({len(rows)} read; "
            + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
            + ")"
        )
    if max_rows is not None:
        rows = rows[:max_rows]
    columns = sorted({k for r in rows if isinstance(r, dict) for k in r})
    return columns, rows


def _read_error_text(exc: BaseException) -> str:
    """The most useful line of a datasets read error: its root cause where that says more."""
    seen = exc
    while seen is not None:
        if isinstance(seen, UnicodeDecodeError):
            return (
                f"not UTF-8 text (byte 0x{seen.object[seen.start]:02x} at offset {seen.start} of a chunk); "
                "re-encode the file as UTF-8"
            )
        seen = seen.__cause__ or seen.__context__
    return one_line(exc)


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class ColumnMap:
    """Where prompt and response come from: either a chat column or prompt/response columns."""

    prompt: Optional[str] = None
    response: Optional[str] = None
    input: Optional[str] = None
    messages: Optional[str] = None


def resolve_columns(found: list[str], user: ColumnConfig | None = None) -> ColumnMap:
    """Pick the column mapping: the user's where given, else auto-detection.

    Auto-detection, in order: chat ``messages``; Alpaca ``instruction``/``input``/``output``;
    ``prompt``/``response``.
    """
    user = user or ColumnConfig()
    cols = set(found)

    def need(name: Optional[str]) -> Optional[str]:
        if name is not None and name not in cols:
            raise DataError(f"column '{name}' not found; columns found: {', '.join(sorted(cols)) or '(none)'}")
        return name

    if user.messages:
        return ColumnMap(messages=need(user.messages))
    if user.prompt or user.response:
        if not (user.prompt and user.response):
            raise DataError("columns.prompt and columns.response must be given together")
        return ColumnMap(prompt=need(user.prompt), response=need(user.response), input=need(user.input))
    if "messages" in cols:
        return ColumnMap(messages="messages")
    if {"instruction", "output"} <= cols:
        return ColumnMap(prompt="instruction", response="output", input="input" if "input" in cols else None)
    if {"prompt", "response"} <= cols:
        return ColumnMap(prompt="prompt", response="response")
    raise DataError(
        "cannot find prompt/response columns; expected 'messages', 'instruction'+'output' or "
        f"'prompt'+'response' (or set columns.*); columns found: {', '.join(sorted(cols)) or '(none)'}"
    )


def _text_field(row: dict, name: str, missing: str, empty: str) -> str:
    if name not in row or row[name] is None:
        raise BadRow(missing)
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(NON_STRING, f"column '{name}' holds {type(value).__name__}")
    value = normalise_text(value)
    if not value:
        raise BadRow(empty)
    if not _encodable(value):
        raise BadRow(UNENCODABLE, f"column '{name}' holds a lone surrogate, which UTF-8 cannot encode")
    return value


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode for UTF-8 (JSON's ``\\ud800`` escapes give lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def original_json(rec: dict) -> str:
    """The row as one JSON line for subset.jsonl; lone surrogates in other columns are escaped."""
    text = json.dumps(rec, ensure_ascii=False, default=str)
    return text if _encodable(text) else json.dumps(rec, ensure_ascii=True, default=str)


def _first_chat_turn(messages: Any) -> tuple[str, str]:
    if not isinstance(messages, list):
        raise BadRow(BAD_MESSAGES, "messages is not a list")
    for k, msg in enumerate(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            nxt = messages[k + 1] if k + 1 < len(messages) else None
            if not (isinstance(nxt, dict) and nxt.get("role") == "assistant"):
                raise BadRow(MISSING_RESPONSE, "no assistant reply after the first user message")
            prompt = _text_field(msg, "content", MISSING_PROMPT, EMPTY_PROMPT)
            response = _text_field(nxt, "content", MISSING_RESPONSE, EMPTY_RESPONSE)
            return prompt, response
    raise BadRow(MISSING_PROMPT, "no user message")


def extract_pair(row: dict, cols: ColumnMap) -> tuple[str, str]:
    """(prompt, response) of one row, or BadRow with the reason."""
    if cols.messages:
        return _first_chat_turn(row.get(cols.messages))
    prompt = _text_field(row, cols.prompt, MISSING_PROMPT, EMPTY_PROMPT)
    if cols.input:
        extra = row.get(cols.input)
        if extra is not None and not isinstance(extra, str):
            raise BadRow(NON_STRING, f"column '{cols.input}' holds {type(extra).__name__}")
        extra = normalise_text(extra or "")
        if extra and not _encodable(extra):
            raise BadRow(UNENCODABLE, f"column '{cols.input}' holds a lone surrogate, which UTF-8 cannot encode")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
    response = _text_field(row, cols.response, MISSING_RESPONSE, EMPTY_RESPONSE)
    return prompt, response


# --------------------------------------------------------------------------- entry point


def load_samples(
    source: str,
    name: str = "pool",
    *,
    columns: ColumnConfig | None = None,
    split: str = "train",
    max_rows: Optional[int] = None,
    strict: bool = False,
    progress: bool = False,
) -> SampleSet:
    """Read, normalise, hash and de-duplicate one dataset.

    Bad rows are skipped and counted by reason; with ``strict`` the first one raises a
    :class:`DataError` naming the row. A dataset with no valid row is an error.
    ``progress``: a progress bar over the rows (stderr).
    """
    from tqdm import tqdm

    found, records = read_records(source, split=split, max_rows=max_rows)
    cols = resolve_columns(found, columns)
    out = SampleSet(name)
    index: dict[str, int] = {}
    rows = tqdm(
        records,
        total=len(records),
        unit="row",
        desc=f"reading {name}",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    for row_no, rec in enumerate(rows):
        out.rows_read += 1
        try:
            if isinstance(rec, BadRow):
                raise rec
            prompt, response = extract_pair(rec, cols)
        except BadRow as bad:
            if strict:
                raise DataError(f"{source}: row {row_no}: {bad.reason} ({bad})") from None
            out.skipped[bad.reason] += 1
            continue
        sid = sample_id(prompt, response)
        if sid in index:
            out.copies[index[sid]] += 1
            out.skipped[DUPLICATE] += 1
            continue
        index[sid] = len(out.sample_ids)
        out.sample_ids.append(sid)
        out.rows.append(row_no)
        out.prompts.append(prompt)
        out.responses.append(response)
        out.originals.append(original_json(rec))
        out.copies.append(1)
    if not out.sample_ids:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(out.skipped.items())) or "the dataset is empty"
        raise DataError(f"{name} data {source}: no valid rows ({out.rows_read} read; {reasons})")
    return out


# --------------------------------------------------------------------------- length screen

# The screen reads a row in pieces of (limit + 1) * CHARS_PER_TOKEN characters. Natural text
# averages 3-5 characters a token; 8 keeps rows that could fit out of the screen entirely.
CHARS_PER_TOKEN = 8
# Tokens that a cut between two pieces (or a template around the text) can add: a word cut
# in two, a SentencePiece dummy prefix. A row is screened out only past this margin.
CUT_SLACK = 16


def exceeds_tokens(tokenizer, texts: Iterable[str], max_tokens: int, piece_chars: int) -> bool:
    """Whether ``texts`` together surely hold more than ``max_tokens`` tokens.

    The texts are tokenised piece by piece, at most ``piece_chars`` characters at a time,
    and the count stops as soon as it passes ``max_tokens`` by more than the cut margin
    (CUT_SLACK tokens per piece read): time and memory are bounded by the pieces read, not
    by the length of the texts. Pieces are cut before white space where there is some, so
    that words stay whole.
    """
    n = pieces = 0
    for text in texts:
        start, size = 0, len(text)
        while start < size:
            if n > max_tokens + CUT_SLACK * (pieces + 1):
                return True
            end = min(start + piece_chars, size)
            if end < size:
                space = max(
                    text.rfind(" ", start + piece_chars // 2, end), text.rfind("\n", start + piece_chars // 2, end)
                )
                end = space if space > start else end
            n += len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            pieces += 1
            start = end
    return n > max_tokens + CUT_SLACK * (pieces + 1)


def too_long_rows(tokenizer, prompts: list[str], responses: list[str], max_tokens: int) -> list[int]:
    """Indices of samples far over ``max_tokens``, found without tokenising them in full.

    Characters first: a sample of at most (max_tokens + 1) * CHARS_PER_TOKEN characters is
    left to the exact check after full tokenisation. A longer one is counted piece by piece
    (:func:`exceeds_tokens`): prompt tokens + response tokens is a lower bound of every
    sequence the scorer builds from it (the templates only add tokens), so once the count
    passes ``max_tokens`` by more than the cut margin the sample cannot fit, and the count
    stops there: a 50 MB row costs one or two pieces of tokenisation. A long sample that the
    count does not rule out (more than CHARS_PER_TOKEN characters a token, e.g. long runs
    of white space) goes on to the exact check.
    """
    piece = (max_tokens + 1) * CHARS_PER_TOKEN
    return [
        k
        for k, (p, r) in enumerate(zip(prompts, responses))
        if len(p) + len(r) > piece and exceeds_tokens(tokenizer, (p, r), max_tokens, piece)
    ]
