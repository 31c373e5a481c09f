"""The dispatcher's work per block, counted (issue 30 §2): Ray calls and sweeps over the actors.

A stand-in ``ray`` module (tasks finish in submission order) drives the real
:func:`delift_ray.dispatch.dispatch` over a real :class:`ActorGroup` of plain-Python actors.
A real Ray cluster runs the dispatcher in the whole-job tests (tests/job, tests/cluster).
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from delift_ray.dispatch import ActorGroup, dispatch


class Ref:
    def __init__(self, actor, block):
        self.actor, self.block = actor, block


class FakeRay(types.ModuleType):
    """wait / get / kill with counters; ``fail`` names blocks whose first attempt raises."""

    def __init__(self, fail=()):
        super().__init__("ray")
        self.calls = {"remote": 0, "wait": 0, "get": 0, "kill": 0}
        self.fail = set(fail)
        self.exceptions = types.ModuleType("ray.exceptions")
        for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError"):
            setattr(self.exceptions, name, type(name, (Exception,), {}))

    def is_initialized(self):
        return False  # delift_ray.metrics exports nothing

    def wait(self, refs, num_returns=1, timeout=None):
        self.calls["wait"] += 1
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        self.calls["get"] += 1
        if ref.block.name in self.fail:
            self.fail.discard(ref.block.name)
            raise RuntimeError("engine error")
        return ref.block.name

    def kill(self, actor, no_restart=True):
        self.calls["kill"] += 1


class Actor:
    def __init__(self, ray):
        self.ray = ray
        self.load = 0
        self.score_block = SimpleNamespace(remote=self.submit)

    def submit(self, block):
        self.ray.calls["remote"] += 1
        return Ref(self, block)


class CountingList(list):
    """A pool's actor list that counts the sweeps made over it."""

    sweeps = 0

    def __iter__(self):
        CountingList.sweeps += 1
        return super().__iter__()


@pytest.fixture
def fake_ray(monkeypatch):
    def make(fail=()):
        ray = FakeRay(fail)
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setitem(sys.modules, "ray.exceptions", ray.exceptions)
        return ray

    return make


def run(ray, n_actors, n_blocks):
    pool = ActorGroup(lambda: Actor(ray), n_actors, max_restarts=1)
    pool.actors = CountingList(pool.actors)
    CountingList.sweeps = 0
    blocks = [SimpleNamespace(name=f"b{i}", key=i, size=1) for i in range(n_blocks)]
    done = []
    report = dispatch(pool, blocks, "score_block", max_retries=2, on_done=lambda b, r: done.append(r))
    return report, done, CountingList.sweeps


def test_one_sweep_over_the_actors_per_job_not_per_block(fake_ray):
    ray = fake_ray()
    report, done, sweeps = run(ray, n_actors=256, n_blocks=2048)
    assert sorted(done) == sorted(f"b{i}" for i in range(2048)) and len(report.done) == 2048
    # One Ray submission, one wait and one get per block; the actors are swept once, at the start.
    assert ray.calls == {"remote": 2048, "wait": 2048, "get": 2048, "kill": 0}
    assert sweeps == 1


def test_a_failed_block_sweeps_again_and_is_retried_on_a_fresh_actor(fake_ray):
    ray = fake_ray(fail={"b5"})
    report, done, sweeps = run(ray, n_actors=8, n_blocks=64)
    assert sorted(done) == sorted(f"b{i}" for i in range(64))
    assert report.retries == 1 and ray.calls["kill"] == 1  # the engine that failed is recycled
    assert ray.calls["remote"] == 65 and ray.calls["wait"] == 65
    assert sweeps == 2  # the start, and once after the failure changed the pool
