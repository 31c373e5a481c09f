"""`delift-ray submit / status / logs` against a real Ray head with the Jobs API.

One head per module, started as a user starts one: ``ray start --head`` with the dashboard on
loopback and token authentication on (what Ray 2.60 does by default for ``ray start``), in its
own short temp dir (Unix socket paths are limited to ~107 bytes) with free ports, so it never
meets another cluster on this machine. It is stopped alone at the end: every process of its
session, by pid (never ``ray stop``, which would stop every cluster here).

The CLI runs as a user runs it: ``delift-ray`` in a subprocess with its own HOME (no
``~/.ray/auth_token`` to fall back on) and the token given by RAY_AUTH_TOKEN_PATH. The job on
the cluster scores the tiny model of tests/conftest.py with the real CPU vLLM engine; model,
data and out are absolute paths under a temp dir (one machine: every "node" sees them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.alpaca import ALPACA_ROWS
from tests.helpers import ROOT, assert_one_line_error, write_rows

pytestmark = [pytest.mark.ray, pytest.mark.engine]

BIN = Path(sys.executable).parent
HEAD_START_ATTEMPTS = 3
HEAD_START_TIMEOUT_S = 240
JOB_TIMEOUT_S = 900


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def session_pids(leader: int) -> list[int]:
    """Every live process of the session that ``ray start --block`` leads (raylet, GCS, dashboard,
    agents, workers: Ray gives workers their own process group, but they keep the session)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(fields[3]) == leader and fields[0] != "Z":  # session id; zombies are gone already
                pids.append(int(name))
    return pids


def stop_session(proc: subprocess.Popen) -> None:
    """Stop one head: SIGTERM to each of its processes, SIGKILL to what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not session_pids(proc.pid):
                break
            time.sleep(0.2)
    proc.wait(timeout=10)


@dataclass
class Head:
    address: str  # the Jobs API, http://127.0.0.1:PORT
    token_path: Path
    home: Path
    temp_dir: Path
    proc: subprocess.Popen

    def env(self, token: str | None = "cluster", mode: str | None = "token", **extra) -> dict:
        """A client's environment; token: "cluster" (the right one), a path, or None."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            HOME=str(self.home),
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]),
        )
        if mode:
            env["RAY_AUTH_MODE"] = mode
        if token == "cluster":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        elif token:
            env["RAY_AUTH_TOKEN_PATH"] = str(token)
        env.update(extra)
        return env

    def cli(self, *args, timeout=JOB_TIMEOUT_S, cwd=None, **env) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "delift_ray.cli", *args]
        if args[0] in ("submit", "status", "logs"):
            cmd += ["--address", self.address]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=self.env(**env))

    def api(self, path: str) -> dict:
        req = urllib.request.Request(
            self.address + path, headers={"Authorization": "Bearer " + self.token_path.read_text().strip()}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def _start_head(root: Path, token_path: Path, home: Path) -> Head:
    ports = free_ports(10)
    temp_dir = root / "r"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]),
        VLLM_CPU_KVCACHE_SPACE="1",
    )
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={ports[0]}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports[1]}",
        f"--ray-client-server-port={ports[2]}",
        f"--dashboard-agent-listen-port={ports[3]}",
        f"--dashboard-agent-grpc-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
        f"--metrics-export-port={ports[6]}",
        f"--node-manager-port={ports[7]}",
        f"--object-manager-port={ports[8]}",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--num-cpus=2",
        f"--object-store-memory={150 * 1024**2}",
        f"--temp-dir={temp_dir}",
        "--include-log-monitor=false",
        "--disable-usage-stats",
    ]
    log = open(root / "ray-start.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    head = Head(f"http://127.0.0.1:{ports[1]}", token_path, home, temp_dir, proc)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if head.api("/api/version")["ray_version"] and raylet_alive(head):
                return head
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        if raylet_crashed(temp_dir):
            break
        time.sleep(1.0)
    stop_session(proc)
    raise RuntimeError(f"Ray head did not come up; see {root / 'ray-start.log'} and {temp_dir}/session_latest/logs")


def raylet_alive(head: Head) -> bool:
    nodes = head.api("/api/v0/nodes?limit=10")["data"]["result"]["result"]
    return any(n.get("state") == "ALIVE" for n in nodes)


def raylet_crashed(temp_dir: Path) -> bool:
    """The raylet aborts when the dashboard agent reports its ports late (a loaded machine)."""
    err = temp_dir / "session_latest" / "logs" / "raylet.err"
    try:
        return "Check failed" in err.read_text(errors="replace")
    except OSError:
        return False


@pytest.fixture(scope="module")
def head():
    # A short root: Ray puts Unix sockets under <temp-dir>/session_<timestamp>/sockets/.
    root = Path(tempfile.mkdtemp(prefix="drj", dir="/tmp"))
    (root / "home").mkdir()
    token_path = root / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    started = None
    try:
        for attempt in range(HEAD_START_ATTEMPTS):
            try:
                started = _start_head(root, token_path, root / "home")
                break
            except RuntimeError:
                if attempt == HEAD_START_ATTEMPTS - 1:
                    raise
                shutil.rmtree(root / "r", ignore_errors=True)
        yield started
    finally:
        if started is not None:
            stop_session(started.proc)
            assert not session_pids(started.proc.pid), "processes of the test's Ray head survived"
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("jobs-data") / "pool.jsonl"
    write_rows(path, ALPACA_ROWS[:5])
    return path


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A project dir as users have one: job files to ship, and a virtualenv, old runs and caches
    (5 MB each) that the cluster does not need."""
    w = tmp_path / "project"
    (w / "jobs").mkdir(parents=True)
    (w / "jobs" / "notes.yaml").write_text("budget: 2\n")
    for junk in (
        ".venv/lib/big.bin",
        "env311/lib/big.bin",
        "runs/old/big.bin",
        "__pycache__/x.pyc",
        ".pytest_cache/v/big.bin",
        ".git/objects/big.bin",
        "pkg/__pycache__/m.cpython-311.pyc",
    ):
        (w / junk).parent.mkdir(parents=True, exist_ok=True)
        (w / junk).write_bytes(os.urandom(5 * 1024**2 if junk.endswith("big.bin") else 1024))
    (w / "env311" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a virtualenv under another name
    (w / "pkg" / "m.py").write_text("X = 1\n")
    return w


def job_args(model, pool, out) -> list[str]:
    return [
        "--data",
        str(pool),
        "--model",
        str(model),
        "--out",
        str(out),
        "--budget",
        "2",
        "--engine.dtype",
        "float32",
        "--engine.max-model-len",
        "256",
        "--engine.block-size",
        "32",
        "--engine.kv-cache-space-gib",
        "1",
        "--scoring.block-size",
        "4",
    ]


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir() if p.name.startswith(".delift-ray-job-"))


RAY_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) ")  # Ray's own upload notes


def test_missing_or_wrong_token_is_refused_in_one_line(head, tiny_model_dir, pool, workdir, tmp_path):
    args = ["submit", "--working-dir", str(workdir), *job_args(tiny_model_dir, pool, tmp_path / "out")]
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_hex(32))
    secret = head.token_path.read_text().strip()
    cases = {
        "no RAY_AUTH_MODE": ({"mode": None, "token": None}, "RAY_AUTH_MODE is not 'token'"),
        "token mode, no token anywhere": ({"token": None}, "none was found"),
        "another cluster's token": ({"token": wrong}, "rejected the token"),
    }
    for name, (env, says) in cases.items():
        p = head.cli(*args, timeout=120, **env)
        line = assert_one_line_error(
            p,
            says,
            "RAY_AUTH_MODE=token",
            "RAY_AUTH_TOKEN_PATH",
            "ray get-auth-token",
            alone=True,
            ignore=RAY_LOG_RECORD,
        )
        assert secret not in p.stdout + p.stderr and wrong.read_text() not in line, name
        assert leftovers(workdir) == [], name
    # status and logs say the same
    assert_one_line_error(
        head.cli("status", "raysubmit_x", timeout=120, token=wrong),
        "rejected the token",
        alone=True,
        ignore=RAY_LOG_RECORD,
    )
    assert_one_line_error(
        head.cli("logs", "raysubmit_x", timeout=120, token=None), "none was found", alone=True, ignore=RAY_LOG_RECORD
    )
    assert head.api("/api/jobs/") == [], "a refused submit reached the cluster"


def test_relative_out_is_refused_before_upload(head, tiny_model_dir, pool, workdir):
    p = head.cli(
        "submit", "--working-dir", str(workdir), *job_args(tiny_model_dir, pool, "runs/x"), timeout=120, cwd=workdir
    )
    assert_one_line_error(
        p, "out 'runs/x' is relative", "temporary copy of the working dir", alone=True, ignore=RAY_LOG_RECORD
    )
    assert leftovers(workdir) == [] and head.api("/api/jobs/") == []


def test_submit_status_logs_and_the_run_lock(head, tiny_model_dir, pool, workdir, tmp_path):
    out = tmp_path / "run"
    args = ["--working-dir", str(workdir), *job_args(tiny_model_dir, pool, out)]

    # Job A: submitted, its id printed alone on stdout.
    p = head.cli("submit", *args, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    job_a = p.stdout.strip()
    assert job_a.startswith("raysubmit_") and "\n" not in job_a
    assert leftovers(workdir) == []

    # Job B on the same out while A holds the lock: refused by the lock; submit --wait streams
    # B's logs (the refusal among them) and exits 1 with the reason.
    lock = out / ".delift-ray.lock"
    deadline = time.monotonic() + 300
    while not (lock.exists() and lock.stat().st_size):  # created, then its owner record written
        assert time.monotonic() < deadline, "job A never took the run lock: " + head.cli("logs", job_a).stdout[-3000:]
        assert head.api(f"/api/jobs/{job_a}")["status"] in ("PENDING", "RUNNING"), head.cli("logs", job_a).stdout[
            -3000:
        ]
        time.sleep(1.0)
    held_by_a = lock.read_text()
    p = head.cli("submit", *args, "--wait", timeout=600)
    assert p.returncode == 1, (p.stdout[-3000:], p.stderr[-3000:])
    job_b = p.stdout.splitlines()[0].strip()
    assert "delift-ray: error: output directory" in p.stdout and "is in use by another run" in p.stdout
    assert f"delift-ray: job {job_b} FAILED: delift-ray: error: output directory" in p.stderr
    still_held = lock.exists() and lock.read_text() == held_by_a
    assert still_held or head.api(f"/api/jobs/{job_a}")["status"] != "RUNNING", "job B took or removed job A's lock"
    status_b = head.cli("status", job_b, timeout=120)
    assert status_b.returncode == 0 and status_b.stdout.startswith("FAILED: delift-ray: error: output directory")
    assert "is in use by another run" in status_b.stdout
    assert "is in use by another run" in head.cli("logs", job_b, timeout=120).stdout

    # status --follow streams A's logs until it ends; A succeeds.
    p = head.cli("status", job_a, "--follow")
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "delift-ray: selected 2 of 5 samples" in p.stdout
    assert f"delift-ray: job {job_a} SUCCEEDED" in p.stderr
    assert head.cli("status", job_a, timeout=120).stdout.strip() == "SUCCEEDED"
    logs = head.cli("logs", job_a, timeout=120).stdout
    assert f"delift-ray: selected 2 of 5 samples (stage instruction) -> {out}" in logs
    assert "pairs: 25 total, 25 scored, 0 reused" in logs and "first 2 selected" in logs
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["pairs_scored"] == 25 and (out / "selection.parquet").exists() and not lock.exists()

    # A submit the cluster refuses after the upload (a job id it knows) leaves nothing behind.
    p = head.cli("submit", *args, "--submission-id", job_a, timeout=300)
    assert_one_line_error(p, "already exists", alone=True, ignore=RAY_LOG_RECORD)
    assert leftovers(workdir) == [] and len(head.api("/api/jobs/")) == 2

    # The driver joined this cluster (RAY_ADDRESS): A's scorer actor ran here, under A's job id.
    info = head.api(f"/api/jobs/{job_a}")
    actors = head.api("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    assert any(a["class_name"] == "BlockScorer" and a["job_id"] == info["job_id"] for a in actors), actors

    # What was uploaded: the job file and the project's own files, not the virtualenvs,
    # runs/, caches or VCS data (35 MB of them in the working dir).
    pkg = info["runtime_env"]["working_dir"].rsplit("/", 1)[-1].removesuffix(".zip")
    unpacked = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files" / pkg
    files = sorted(str(f.relative_to(unpacked)) for f in unpacked.rglob("*") if f.is_file())
    job_files = [f for f in files if f.startswith(".delift-ray-job-")]
    assert len(job_files) == 1 and set(files) == {job_files[0], "jobs/notes.yaml", "pkg/m.py"}, files
    assert sum(f.stat().st_size for f in unpacked.rglob("*") if f.is_file()) < 64 * 1024
    assert leftovers(workdir) == []
