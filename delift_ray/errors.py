"""User-facing errors.

Everything a user can cause (bad input, bad config, a missing file) is raised as a
:class:`DeliftError` subclass whose message is one line that says what was wrong and,
where possible, what was found instead. The CLI prints that line and exits 2; it never
shows a traceback for these. The machine refusing a write (no space, no permission, a
read-only file system: :func:`environment_error`) is reported the same way.
"""

from __future__ import annotations

import errno
import re


class DeliftError(Exception):
    """Base class of every error the CLI reports as a one-line message."""


class ConfigError(DeliftError):
    """The configuration (YAML file or flags) is invalid."""


class DataError(DeliftError):
    """The input data cannot be read or contains no usable rows."""


class BudgetError(DeliftError):
    """The selection budget does not fit the pool."""


class ScoringError(DeliftError):
    """Scoring failed in a way retries did not fix."""


class StorageError(DeliftError):
    """The output or cache location cannot be used."""


class EngineStartError(ScoringError):
    """A scoring engine could not start, for a reason that another attempt cannot fix."""


# Engine start failures, by class: (class, patterns found in the error text, the fix).
# Patterns are lower-case substrings of the messages vLLM / transformers / torch raise.
ENGINE_START_CLASSES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "missing weights",
        (
            "cannot find any model weights",
            "no model weights",
            "does not appear to have a file named",
            "error while deserializing header",
            "safetensorerror",
        ),
        "the checkpoint has no (readable) weight files: point `model` at a directory that holds "
        "config.json and *.safetensors (or pytorch_model*.bin)",
    ),
    (
        "remote code required",
        ("trust_remote_code", "trust-remote-code", "contains custom code", "requires you to execute"),
        "the checkpoint needs its own Python code: set engine.trust_remote_code true only if you trust it",
    ),
    (
        "unsupported architecture",
        (
            "are not supported for now",
            "is not supported anymore",
            "is not supported in-tree",
            "does not recognize this architecture",
            "unrecognized configuration class",
            "unsupported cpu attention",
        ),
        "this vLLM build cannot run the model's architecture: use a model that vLLM supports (on CPU: head_dim >= 64)",
    ),
    (
        "out of memory",
        (
            "out of memory",
            "outofmemoryerror",
            "cannot allocate memory",
            "insufficient memory",
            "no available memory for the cache blocks",
            "not enough memory",
            "larger than the available kv cache",
            "kv cache is needed",
        ),
        "the engine does not fit in memory: lower engine.max_model_len, engine.max_num_batched_tokens or "
        "engine.kv_cache_space_gib (CPU) / engine.gpu_memory_utilization (GPU), or use a smaller model",
    ),
)


def classify_engine_start_error(text: str) -> tuple[str, str] | None:
    """(class, fix) of an engine start failure from its error text; None if unknown.

    Pure: looks only at the text (an exception's message, or a remote traceback, of which
    only the exception lines count: source lines quoted in frames are ignored). The
    classes are checked in the order of :data:`ENGINE_START_CLASSES`, so missing weights
    are never reported as memory, however the failure cascades afterwards.
    """
    low = "\n".join(message_lines(text)).lower()
    for name, patterns, fix in ENGINE_START_CLASSES:
        if any(p in low for p in patterns):
            return name, fix
    return None


def engine_start_message(text: str, model: str = "") -> str | None:
    """One line for a classified engine start failure, or None when the class is unknown.

    A text that already holds an :class:`EngineStartError` line (raised by the engine
    inside an actor) gives that line's message as it is.
    """
    for line in message_lines(text):
        if line.startswith(EngineStartError.__name__ + ": ") or ("." + EngineStartError.__name__ + ": ") in line:
            return line.split(EngineStartError.__name__ + ": ", 1)[1]
    found = classify_engine_start_error(text)
    if found is None:
        return None
    name, fix = found
    where = f" for model {model!r}" if model else ""
    return f"the scoring engine could not start{where}: {name} ({cause_line(text)}); {fix}"


def one_line(exc: BaseException, limit: int = 200, *, with_type: bool = False) -> str:
    """An exception as one line: its message's first non-blank line, cut to ``limit``
    characters; the exception's class name when the message is empty. ``with_type`` puts
    ``ClassName: `` in front."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    name = exc.__class__.__name__
    if not lines:
        return name
    return f"{name}: {lines[0][:limit]}" if with_type else lines[0][:limit]


# Errors of the user's machine, not of delift-ray: the fix is theirs, so they are reported as
# user errors (exit 2, one line naming the path), never as bugs.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.I)


def environment_error(exc: BaseException) -> str | None:
    """One line for an exception (or a cause of it) that is the machine's refusal, e.g.
    "no space left on the device writing /data/out/run.json"; None for anything else.

    pyarrow reports such errors as ``OSError`` without ``errno`` set and the number in the
    text ("[errno 28] No space left on device"), so the text is read too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            code = exc.errno
            if code is None:
                m = _ERRNO_IN_TEXT.search(str(exc))
                code = int(m.group(1)) if m else None
            if code in ENVIRONMENT_ERRNOS:
                where = exc.filename or one_line(exc)
                return f"{ENVIRONMENT_ERRNOS[code]}: {where}"
        exc = exc.__cause__ or exc.__context__
    return None


def message_lines(text: str) -> list[str]:
    """The lines of an error text that are messages, not traceback frames or quoted source."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line[:1].isspace() and not line.startswith("Traceback (most recent call last)")
    ]


def cause_line(text: str, limit: int = 200) -> str:
    """The line of an error text that names the error: the last 'SomethingError: ...' line."""
    lines = message_lines(text)
    named = [line for line in lines if _names_error(line)]
    return " ".join((named or lines or [""])[-1].split())[:limit]


def _names_error(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and " " not in head and head.endswith(("Error", "Exception", "Exit"))


def exception_text(exc: BaseException) -> str:
    """An exception and its causes (``raise ... from``, or raised while handling), one per line."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{exc.__class__.__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)
