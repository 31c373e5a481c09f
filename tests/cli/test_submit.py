"""`delift-ray submit/status/logs`: the job sent through the Ray Jobs API.

The client is faked here (tests/cli/test_jobs_api.py runs the same commands against a real
Ray head with the Jobs API); what is checked is what a cluster would receive: a validated
job file inside the uploaded working dir and an entrypoint that the real CLI parses back
into the same config.
"""

import os
import shlex
from types import SimpleNamespace

import pytest

from delift_ray import cli
from delift_ray.config import load_config
from delift_ray.errors import DeliftError


class FakeClient:
    submitted = []

    def __init__(self, address):
        self.address = address

    def submit_job(self, entrypoint, runtime_env, submission_id=None):
        # The job file must be in the working dir while the upload happens (inside submit_job).
        job_file = shlex.split(entrypoint)[shlex.split(entrypoint).index("--config") + 1]
        text = open(os.path.join(runtime_env["working_dir"], job_file)).read()
        FakeClient.submitted.append((self.address, entrypoint, runtime_env, text))
        return submission_id or "raysubmit_123"

    def get_job_info(self, job_id):
        failed = job_id.endswith(("failed", "crashed"))
        return SimpleNamespace(
            status="FAILED" if failed else "RUNNING",
            message="Job entrypoint command failed with exit code 2" if failed else "",
        )

    def get_job_logs(self, job_id):
        if job_id.endswith("crashed"):
            return 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: something broke\n'
        return f"logs of {job_id}\n" + (
            "delift-ray: error: output directory x is in use by another run\n" if job_id.endswith("failed") else ""
        )


@pytest.fixture
def fake_jobs(monkeypatch):
    import ray.job_submission

    FakeClient.submitted = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    return FakeClient


def test_submit_sends_a_validated_job_file(fake_jobs, tmp_path, capsys):
    code = cli.main(
        [
            "submit",
            "--address",
            "http://head:8265",
            "--working-dir",
            str(tmp_path),
            "--data",
            "/data/pool.jsonl",
            "--model",
            "org/model",
            "--out",
            "s3://bucket/run",
            "--budget",
            "100",
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == "raysubmit_123"
    ((address, entrypoint, env, text),) = fake_jobs.submitted
    assert address == "http://head:8265" and env["working_dir"] == str(tmp_path)
    assert {".venv", "/runs", "__pycache__"} <= set(env["excludes"])
    args = cli.build_parser().parse_args(shlex.split(entrypoint)[1:])
    assert args.command == "select"
    (tmp_path / "sent.yaml").write_text(text)
    cfg = load_config(tmp_path / "sent.yaml")
    assert (cfg.data, cfg.model, cfg.out, cfg.budget) == ("/data/pool.jsonl", "org/model", "s3://bucket/run", 100)
    assert sorted(os.listdir(tmp_path)) == ["sent.yaml"]  # the job file left with the upload


def test_submit_refuses_a_relative_out(fake_jobs, tmp_path, capsys):
    code = cli.main(
        [
            "submit",
            "--address",
            "http://head:8265",
            "--working-dir",
            str(tmp_path),
            "--data",
            "/data/pool.jsonl",
            "--model",
            "org/model",
            "--out",
            "runs/x",
        ]
    )
    assert code == 2 and "out 'runs/x' is relative" in capsys.readouterr().err
    assert fake_jobs.submitted == [] and os.listdir(tmp_path) == []


def test_upload_excludes_virtualenvs_by_their_marker(tmp_path):
    (tmp_path / "py311").mkdir()
    (tmp_path / "py311" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "src").mkdir()
    assert "/py311" in cli.upload_excludes(str(tmp_path)) and "/src" not in cli.upload_excludes(str(tmp_path))


def test_submit_validates_before_sending(fake_jobs, tmp_path, capsys):
    code = cli.main(
        [
            "submit",
            "--address",
            "http://head:8265",
            "--working-dir",
            str(tmp_path),
            "--data",
            "d",
            "--model",
            "m",
            "--out",
            "o",
            "--stage",
            "task",
        ]
    )
    assert code == 2 and "needs a target set" in capsys.readouterr().err
    assert fake_jobs.submitted == []


def test_status_and_logs(fake_jobs, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert cli.main(["status", "raysubmit_1"]) == 0 and capsys.readouterr().out.strip() == "RUNNING"
    assert cli.main(["logs", "raysubmit_1"]) == 0 and "logs of raysubmit_1" in capsys.readouterr().out
    # A failed job's status carries its error line.
    assert cli.main(["status", "raysubmit_failed"]) == 0
    assert capsys.readouterr().out.strip() == "FAILED: delift-ray: error: output directory x is in use by another run"
    assert cli.main(["status", "raysubmit_crashed"]) == 0  # no delift-ray error line: the exception that ended it
    assert capsys.readouterr().out.strip() == "FAILED: ValueError: something broke"


def test_no_address_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["status", "x"]) == 2
    assert "no Ray Jobs address" in capsys.readouterr().err


def test_a_job_driver_joins_ray_address(monkeypatch):
    """Inside a Ray job RAY_ADDRESS names the job's cluster: the driver joins it (no embedded
    Ray, so no num_cpus / object_store_memory, which Ray refuses for an existing cluster)."""
    from delift_ray import dispatch
    from delift_ray.config import RayConfig

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert dispatch.cluster_address(RayConfig()) == "10.0.0.1:6379"
    assert dispatch.cluster_address(RayConfig(address="auto")) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    with pytest.raises(DeliftError, match="is a Ray Jobs API address"):
        dispatch.cluster_address(RayConfig())
    monkeypatch.delenv("RAY_ADDRESS")
    assert dispatch.cluster_address(RayConfig()) is None


def test_a_server_traceback_becomes_its_error_line():
    """Ray's Jobs API answers a refused submit (HTTP 400/500) with Python tracebacks, nested."""
    body = (
        'Request failed with status code 500: Traceback (most recent call last):\n  File "job_head.py", line 1\n'
        'RuntimeError: Request failed with status code 400: Traceback (most recent call last):\n  File "job_manager.py"\n'
        "ValueError: Job with submission_id raysubmit_1 already exists. Please use a different submission_id.\n."
    )
    assert cli._error_line(body) == (
        "ValueError: Job with submission_id raysubmit_1 already exists. Please use a different submission_id."
    )
    assert (
        cli._error_line("Failed to connect to Ray at address: http://x:8265.\nmore")
        == "Failed to connect to Ray at address: http://x:8265."
    )
