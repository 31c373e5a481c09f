"""Process inspection for the fault tests and the chaos benchmark (Linux /proc).

They kill scorer actors by pid; these helpers find only the actors started below a given
process, so other Ray clusters on the same machine are never touched.
"""

from __future__ import annotations

import glob
import os


def descendants(root: int) -> set[int]:
    """Pids of every process below ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(os.path.basename(d)))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def scorer_pids(root: int | None = None) -> list[int]:
    """Pids of live BlockScorer actor processes (Ray titles them 'ray::BlockScorer') below
    ``root`` (default: this process, whose embedded Ray starts them). Other people's Ray
    clusters on the same machine are never touched."""
    pids = []
    for pid in sorted(descendants(os.getpid() if root is None else root)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.startswith(b"ray::BlockScorer"):
            pids.append(pid)
    return pids
