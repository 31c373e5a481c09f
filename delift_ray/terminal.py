"""A quiet terminal: delift-ray's own lines on stderr, every other library's output in a log file.

Without ``-v`` the CLI calls :func:`quiet` once. From then on:

* the ``delift_ray`` logger writes its one line per step to stderr (and to the file);
* every other logger (Ray's token-auth notice, vLLM, transformers) and Python warnings
  go to the log file only;
* the output of Ray workers (scorer actors: vLLM's and torch's start-up notices) goes to
  the log file, except the lines delift-ray prints there itself (each engine's banner),
  which reach stderr as Ray would show them. :func:`route_worker_output` does that, once
  Ray is up (:func:`delift_ray.dispatch.connect` calls it).

The log is written to a temporary file while the command runs (a refused run must not
touch its out dir); :func:`keep_log` appends it to ``<out>/delift-ray.log`` when the
command succeeded (a command names its out with :func:`log_into`). ``-v`` shows everything on the terminal, as before.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from typing import Optional

OWN = "delift_ray"
LOG_NAME = "delift-ray.log"

_log_path: Optional[str] = None
_log_file = None
_out: Optional[str] = None
_saved: Optional[dict] = None  # what quiet() changed, for restore()
_lock = threading.Lock()


def quiet() -> str:
    """Route everything but delift-ray's own lines to a temporary log file; its path.

    :func:`restore` undoes it (the CLI calls it when the command ends), so a process that
    runs several commands (tests, a notebook) gets its logging back between them.
    """
    global _log_path, _log_file, _saved
    restore()
    fd, _log_path = tempfile.mkstemp(prefix="delift-ray-", suffix=".log")
    _log_file = os.fdopen(fd, "a", buffering=1)
    to_file = logging.StreamHandler(_log_file)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root, own = logging.getLogger(), logging.getLogger(OWN)
    _saved = {"root": (list(root.handlers), root.level), "own": (own.level, to_terminal), "libraries": {}}
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(to_file)
    root.setLevel(logging.WARNING)
    own.setLevel(logging.INFO)
    own.addHandler(to_terminal)  # and, through the root, the file
    logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the file
    quiet_library_loggers()
    return _log_path


def restore() -> None:
    """Undo :func:`quiet`: the logging configuration as it was, the log file closed."""
    global _log_path, _log_file, _saved, _out
    if _saved is None:
        return
    root, own = logging.getLogger(), logging.getLogger(OWN)
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers, level = _saved["root"]
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    own_level, to_terminal = _saved["own"]
    own.removeHandler(to_terminal)
    own.setLevel(own_level)
    for name, (lib_handlers, propagate) in _saved["libraries"].items():
        lg = logging.getLogger(name)
        for h in lib_handlers:
            lg.addHandler(h)
        lg.propagate = propagate
    logging.captureWarnings(False)
    with _lock:  # a Ray thread may be writing: it sees the file open or None, never closed
        if _log_file is not None:
            _log_file.close()
        _log_path = _log_file = _saved = _out = None


def log_path() -> Optional[str]:
    return _log_path


def quiet_library_loggers() -> None:
    """(Quiet terminal only.) Libraries that attach their own terminal handlers (Ray, vLLM) write to the file instead."""
    if _saved is None:
        return
    for name in ("ray", "vllm"):
        lg = logging.getLogger(name)
        gone = [
            h
            for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)
        ]
        for h in gone:
            lg.removeHandler(h)
        kept, propagate = _saved["libraries"].get(name, ([], lg.propagate))
        _saved["libraries"][name] = (kept + gone, propagate)
        lg.propagate = True


def write(text: str) -> None:
    """Append raw text to the log file (no-op when the terminal is not quiet)."""
    with _lock:
        if _log_file is not None:
            _log_file.write(text if text.endswith("\n") else text + "\n")


def route_worker_output() -> None:
    """Ray workers' output: to the log file, except delift-ray's own lines (to stderr).

    Replaces the driver's handler of worker output (Ray's ``ray_print_logs``), which Ray
    registers in ``ray.init(log_to_driver=True)``.
    """
    if _log_file is None:
        return
    quiet_library_loggers()  # ray.init configures Ray's loggers again
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray layout: its output stays as Ray prints it
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _worker_lines)


def _worker_lines(data: dict) -> None:
    if _log_file is None:  # the quiet command ended (restore): Ray's own printing again
        from ray._private.worker import print_to_stdstream

        print_to_stdstream(data, ignore_prefix=False)
        return
    if data.get("pid") == "autoscaler":  # Ray's own status; its session logs keep it
        return
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who} pid={data.get('pid')}) " if who or data.get("pid") else ""
    for line in data.get("lines") or []:
        if line.startswith("delift-ray"):
            print(f"{prefix}{line}", file=sys.stderr, flush=True)
        write(f"{prefix}{line}")


def log_into(out: Optional[str]) -> Optional[str]:
    """Name the command's out dir; returns where :func:`keep_log` will put the log:
    ``<out>/delift-ray.log`` for a local out, else the temporary file itself (None when
    the terminal is not quiet)."""
    global _out
    if _log_path is None:
        return None
    _out = out
    if not out or "://" in out:
        return _log_path
    return os.path.join(os.path.expanduser(out), LOG_NAME)


def keep_log(succeeded: bool) -> Optional[str]:
    """Put this command's log where it belongs; returns its path, or None when there is none
    to show (the terminal is not quiet, or a failed command's log holds only delift-ray's
    own lines, which the terminal showed).

    Succeeded with a local out dir (:func:`log_into`): appended to ``<out>/delift-ray.log``.
    Succeeded with a URI out: kept in the temporary file (the summary names it). Otherwise
    (failed, or no out dir): left in the temporary file when other libraries wrote to it
    (a refused run's out dir stays untouched), else removed.
    """
    if _log_path is None or not os.path.exists(_log_path):
        return None
    with _lock:
        if _log_file is not None:
            _log_file.flush()
    target = log_into(_out)
    if succeeded and target != _log_path and os.path.isdir(os.path.dirname(target)):
        with open(_log_path, "rb") as src, open(target, "ab") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(_log_path)
        return target
    if (succeeded and _out is not None) or _has_other_output(_log_path):
        return _log_path  # (a URI out's log, which the summary named; or other libraries' output)
    os.unlink(_log_path)
    return None


_OWN_LINE = re.compile(r"^\S+ \S+ [A-Z]+ delift_ray(\.\S+)?: ")  # the file handler's format


def _has_other_output(path: str) -> bool:
    with open(path, errors="replace") as f:
        return any(not _OWN_LINE.match(line) for line in f if line.strip())
