"""The dispatcher's failure policy (delift_ray/dispatch_policy.py), every outcome, with fake
outcomes and a fake clock: no Ray. The real-cluster tests beside it (test_reliability.py,
test_multinode.py in tests/cluster/) exercise the same policy through Ray."""

import itertools

import pytest

from delift_ray.dispatch_policy import NODE_VERDICT_S, POLL_S, Action, Outcome, decide, node_verdict


@pytest.mark.parametrize(
    "outcome,attempts,max_retries,skip_failed",
    list(itertools.product(Outcome, range(4), range(3), (False, True))),
)
def test_decide_every_outcome(outcome, attempts, max_retries, skip_failed):
    d = decide(outcome, attempts, max_retries, skip_failed)
    if outcome is Outcome.DONE:
        assert d.action is Action.DONE and d.attempts == attempts
    elif outcome in (Outcome.RECYCLED, Outcome.NODE_LOST):  # not the block's fault: no attempt counted
        assert d.action is Action.REQUEUE and d.attempts == attempts
    elif outcome is Outcome.ENGINE_START_FAILED:  # no retry can help, skip_failed or not
        assert d.action is Action.STOP and d.attempts == attempts + 1
    else:  # ACTOR_DIED, TASK_ERROR: counted
        assert d.attempts == attempts + 1
        if attempts + 1 <= max_retries:
            assert d.action is Action.RETRY
        else:
            assert d.action is (Action.SKIP if skip_failed else Action.STOP)


def test_a_block_gets_max_retries_plus_one_attempts():
    attempts, actions = 0, []
    while True:
        d = decide(Outcome.TASK_ERROR, attempts, max_retries=2, skip_failed=False)
        attempts = d.attempts
        actions.append(d.action)
        if d.action is not Action.RETRY:
            break
    assert actions == [Action.RETRY, Action.RETRY, Action.STOP] and attempts == 3
    # Requeues in between (node losses, recycles) do not use up attempts.
    d = decide(Outcome.NODE_LOST, 1, 2, False)
    assert decide(Outcome.ACTOR_DIED, d.attempts, 2, False).action is Action.RETRY


def test_decide_rejects_negative_counts():
    with pytest.raises(ValueError):
        decide(Outcome.TASK_ERROR, -1, 2, False)
    with pytest.raises(ValueError):
        decide(Outcome.TASK_ERROR, 0, -1, False)


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = 0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps += 1
        self.now += s


def test_node_verdict_from_the_error_text_needs_no_wait():
    clock = FakeClock()

    def never(node):
        raise AssertionError("the GCS was asked")

    kw = dict(clock=clock, sleep=clock.sleep)
    assert node_verdict("The actor died because its node has died. Node Id: abc123 x", None, never, **kw) == "abc123"
    assert node_verdict("... its node has died.", "n1", never, **kw) == "n1"
    assert node_verdict("... its node has died.", None, never, **kw) == "unknown"
    assert node_verdict("The actor's worker process has died", "n1", never, **kw) is None
    assert node_verdict("connection lost", None, never, **kw) is None  # no known node
    assert clock.sleeps == 0


def test_node_verdict_waits_for_the_health_check_on_the_clock():
    clock = FakeClock()
    polls = iter([True, True, True, False])  # the GCS declares the node dead on the 4th poll
    assert node_verdict("connection lost", "n1", lambda n: next(polls), clock=clock, sleep=clock.sleep) == "n1"
    assert clock.sleeps == 3
    # A node that stays alive: an ordinary actor death after NODE_VERDICT_S, never longer.
    clock = FakeClock()
    assert node_verdict("connection lost", "n1", lambda n: True, clock=clock, sleep=clock.sleep) is None
    assert clock.sleeps == int(NODE_VERDICT_S / POLL_S) + 1
    assert clock.now - 100.0 <= NODE_VERDICT_S + POLL_S
