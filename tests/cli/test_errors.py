"""delift_ray.errors: an exception as one line, and the machine's refusals as user errors."""

import errno

import pyarrow as pa
import pytest

from delift_ray import cli
from delift_ray.errors import environment_error, one_line


def test_one_line_is_safe_on_empty_and_blank_messages():
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(ValueError("\n \n")) == "ValueError"
    assert one_line(ValueError("\n  first\nsecond")) == "first"
    assert one_line(KeyError("k"), with_type=True) == "KeyError: 'k'"
    assert one_line(ValueError("x" * 500), 10) == "x" * 10
    assert one_line(RuntimeError(), with_type=True) == "RuntimeError"


@pytest.mark.parametrize(
    "code,words",
    [
        (errno.ENOSPC, "no space left"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.EDQUOT, "disk quota"),
    ],
)
def test_environment_errors_name_the_cause_and_the_path(code, words):
    exc = OSError(code, "os text", "/data/out/run.json")
    assert environment_error(exc).startswith(words)
    assert environment_error(exc).endswith(": /data/out/run.json")


def test_environment_error_reads_pyarrow_errno_text_and_causes():
    try:
        raise pa.ArrowIOError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    except OSError as arrow:
        assert environment_error(arrow).startswith("no space left on the device: ")
        try:
            raise RuntimeError("while writing a shard") from arrow
        except RuntimeError as wrapped:
            assert environment_error(wrapped).startswith("no space left on the device")
    assert environment_error(OSError(errno.ENOENT, "missing", "/x")) is None  # not the machine refusing
    assert environment_error(KeyError("a bug")) is None


def test_a_full_disk_is_a_user_error_not_a_bug(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/shards/K-0.parquet")

    monkeypatch.setattr(cli, "cmd_config_reference", full)
    code = cli.main(["config-reference"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert err.strip() == "delift-ray: error: no space left on the device: /data/out/shards/K-0.parquet"


def test_a_bug_is_still_a_bug(monkeypatch, capsys):
    def boom(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(cli, "cmd_config_reference", boom)
    assert cli.main(["config-reference"]) == 1
    assert "internal error: OSError" in capsys.readouterr().err
