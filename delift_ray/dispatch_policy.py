"""What happens to a block when its task ends: the dispatcher's failure policy, free of Ray.

:func:`delift_ray.dispatch.dispatch` classifies how a block's task ended (:class:`Outcome`)
and asks :func:`decide` what to do with the block (:class:`Action`):

========================  ================================================================
outcome                   action
========================  ================================================================
``DONE``                  ``DONE``: keep the result
``RECYCLED``              ``REQUEUE``: the actor was replaced on purpose (after an error in
                          another of its blocks); the block is sent again, no attempt counted
``NODE_LOST``             ``REQUEUE``: its node died (pre-emption, a dead host); not the
                          block's fault, no attempt counted
``ENGINE_START_FAILED``   ``STOP``: the engine cannot start; no retry can help
``ACTOR_DIED``,           an attempt is counted: ``RETRY`` while attempts <= max_retries,
``TASK_ERROR``            then ``SKIP`` (``skip_failed``) or ``STOP``
========================  ================================================================

:func:`node_verdict` decides whether an actor's death was its node's, waiting a bounded
time for the cluster's health check, on an injected clock (tests pass a fake one).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable, Optional

NODE_VERDICT_S = 45.0  # longest wait for the GCS to say whether a silent actor's node is dead (Ray's check: ~30 s)
POLL_S = 0.5


class Outcome(enum.Enum):
    DONE = "done"
    RECYCLED = "recycled"
    NODE_LOST = "node_lost"
    ENGINE_START_FAILED = "engine_start_failed"
    ACTOR_DIED = "actor_died"
    TASK_ERROR = "task_error"


class Action(enum.Enum):
    DONE = "done"
    REQUEUE = "requeue"  # send again, no attempt counted
    RETRY = "retry"  # send again, an attempt counted
    SKIP = "skip"  # give up on the block, go on without it
    STOP = "stop"  # give up on the job


@dataclass(frozen=True)
class Decision:
    action: Action
    attempts: int  # failed attempts of the block after this outcome


def decide(outcome: Outcome, attempts: int, max_retries: int, skip_failed: bool) -> Decision:
    """The action for a block whose task ended with ``outcome`` after ``attempts`` earlier
    failed attempts."""
    if max_retries < 0 or attempts < 0:
        raise ValueError(f"max_retries and attempts must be >= 0, got {max_retries}, {attempts}")
    if outcome is Outcome.DONE:
        return Decision(Action.DONE, attempts)
    if outcome in (Outcome.RECYCLED, Outcome.NODE_LOST):
        return Decision(Action.REQUEUE, attempts)
    if outcome is Outcome.ENGINE_START_FAILED:
        return Decision(Action.STOP, attempts + 1)
    n = attempts + 1
    if n <= max_retries:
        return Decision(Action.RETRY, n)
    return Decision(Action.SKIP if skip_failed else Action.STOP, n)


def node_verdict(
    error_text: str,
    node: Optional[str],
    node_alive: Callable[[str], bool],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wait_s: float = NODE_VERDICT_S,
) -> Optional[str]:
    """The node whose loss killed an actor (``node``: where it ran, if known), or None when
    it died some other way.

    * Ray's error says "its node has died": that node (from the error when ``node`` is not
      known; "unknown" when neither says).
    * "worker process has died", or no known node: None (its raylet reported the death,
      so the node is up).
    * Otherwise (the connection to the actor broke, no cause yet) the cluster's health
      check declares a node that is going away dead within ``wait_s``: poll
      ``node_alive`` until it says dead (that node) or the time is up (None). Replacing the
      actor before that verdict would ask for an accelerator that may never come back.
    """
    if "its node has died" in error_text:
        if node is None and "Node Id: " in error_text:
            node = error_text.split("Node Id: ", 1)[1].split()[0]
        return node or "unknown"
    if node is None or "worker process has died" in error_text:
        return None
    deadline = clock() + wait_s
    while node_alive(node):
        if clock() > deadline:
            return None
        sleep(POLL_S)
    return node
