"""`delift-ray submit/status/logs`: the job sent through the Ray Jobs API.

The client is faked (no Ray Jobs server runs in CI); what is checked is what a cluster
would receive: a validated job file inside the uploaded working dir and an entrypoint
that the real CLI parses back into the same config.
"""

import shlex

import pytest

from delift_ray import cli
from delift_ray.config import load_config


class FakeClient:
    submitted = []

    def __init__(self, address):
        self.address = address

    def submit_job(self, entrypoint, runtime_env):
        FakeClient.submitted.append((self.address, entrypoint, runtime_env))
        return "raysubmit_123"

    def get_job_status(self, job_id):
        return f"RUNNING {job_id}"

    def get_job_logs(self, job_id):
        return f"logs of {job_id}\n"


@pytest.fixture
def fake_jobs(monkeypatch):
    import ray.job_submission

    FakeClient.submitted = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    return FakeClient


def test_submit_sends_a_validated_job_file(fake_jobs, tmp_path, capsys):
    code = cli.main(["submit", "--address", "http://head:8265", "--working-dir", str(tmp_path),
                     "--data", "/data/pool.jsonl", "--model", "org/model", "--out", "s3://bucket/run", "--budget", "100"])
    assert code == 0 and capsys.readouterr().out.strip() == "raysubmit_123"
    (address, entrypoint, env), = fake_jobs.submitted
    assert address == "http://head:8265" and env["working_dir"] == str(tmp_path)
    args = cli.build_parser().parse_args(shlex.split(entrypoint)[1:])
    assert args.command == "select"
    cfg = load_config(tmp_path / args.config)
    assert (cfg.data, cfg.model, cfg.out, cfg.budget) == ("/data/pool.jsonl", "org/model", "s3://bucket/run", 100)


def test_submit_validates_before_sending(fake_jobs, tmp_path, capsys):
    code = cli.main(["submit", "--address", "http://head:8265", "--working-dir", str(tmp_path),
                     "--data", "d", "--model", "m", "--out", "o", "--stage", "task"])
    assert code == 2 and "needs a target set" in capsys.readouterr().err
    assert fake_jobs.submitted == []


def test_status_and_logs(fake_jobs, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert cli.main(["status", "raysubmit_1"]) == 0 and "RUNNING raysubmit_1" in capsys.readouterr().out
    assert cli.main(["logs", "raysubmit_1"]) == 0 and "logs of raysubmit_1" in capsys.readouterr().out


def test_no_address_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.main(["status", "x"]) == 2
    assert "no Ray Jobs address" in capsys.readouterr().err
