"""delift_ray.registry: names in order, one entry per name, and a refusal that lists the known ones."""

from __future__ import annotations

import pytest

from delift_ray import kernel_types, scalings
from delift_ray.registry import Registry


def test_entries_keep_their_order_and_a_name_is_registered_once():
    r: Registry[int] = Registry("widget")
    r.add("b", 2)
    r.add("a", 1)
    assert r.names() == ("b", "a") and r.entries() == (2, 1) and r.get("a") == 1
    assert r.find("c") is None
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        r.add("a", 3)
    with pytest.raises(ValueError, match=r"widget must be one of \('b', 'a'\), got 'c'"):
        r.get("c")


def test_the_packages_load_every_module_with_the_named_ones_first():
    assert scalings.names() == ("clip", "minmax", "rank")  # by module name
    assert kernel_types.names()[0] == "dense"  # first=("dense",): the estimate's first column
