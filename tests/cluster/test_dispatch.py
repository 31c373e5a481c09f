"""Dispatch without Ray: the affinity queue that keeps a column group's blocks on one engine."""

from types import SimpleNamespace

import pytest

from delift_ray.dispatch import AffinityQueue


def blocks_in_groups(sizes):
    return [SimpleNamespace(group=g, name=f"{g}.{k}") for g, n in enumerate(sizes) for k in range(n)]


def test_affinity_queue_one_actor_keeps_plan_order():
    blocks = blocks_in_groups([3, 2, 4])
    q = AffinityQueue(blocks)
    assert [q.pop_for("a").name for _ in range(len(blocks))] == [b.name for b in blocks]
    assert len(q) == 0
    with pytest.raises(IndexError):
        q.pop_for("a")


def test_affinity_queue_two_actors_share_a_group_only_to_balance():
    q = AffinityQueue(blocks_in_groups([4, 4, 1]))
    taken = {"a": [], "b": []}
    while len(q):  # the actors alternate, as they would finishing blocks of equal cost
        for actor in ("a", "b"):
            if len(q):
                taken[actor].append(q.pop_for(actor).group)
    assert taken["a"][:4] == [0, 0, 0, 0] and taken["b"][:4] == [1, 1, 1, 1]
    assert sorted(taken["a"] + taken["b"]) == [0] * 4 + [1] * 4 + [2]
    # Only group 2 was left when both ran dry; nobody joined another's group.
    assert {g for g in taken["a"]} & {g for g in taken["b"]} == set()


def test_affinity_queue_joins_the_largest_group_when_all_are_held_and_retries_rejoin():
    blocks = blocks_in_groups([1, 5])
    q = AffinityQueue(blocks)
    assert q.pop_for("a").group == 0
    assert q.pop_for("b").group == 1
    assert q.pop_for("a").group == 1  # group 0 is done: a joins b's group
    q.push(blocks[0])  # a retry of group 0's block: a still holds group 0
    assert q.pop_for("c").group == 1  # every group is held: c joins the largest
    q.forget("a")  # a died: its engine's cache is gone, group 0 is free
    assert q.pop_for("d").name == "0.0"  # a free group beats a shared one
    assert len(q) == 2  # 6 blocks + 1 retry, 5 taken


def test_affinity_queue_without_groups_is_fifo():
    q = AffinityQueue(list(range(5)))  # plain objects: no group attribute
    assert [q.pop_for(k % 2) for k in range(5)] == [0, 1, 2, 3, 4]
