from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance, plan


def inst(n, image="app:1", created=None):
    return Instance(f"i{n}", "web", "blue", image, "127.0.0.1", 8000 + n, created if created is not None else n)


@pytest.mark.parametrize(
    ("current", "count", "image", "policy", "create", "replace", "remove"),
    [
        ([], 3, "app:1", "newest_first", 3, [], []),
        ([inst(1), inst(2), inst(3)], 3, "app:1", "newest_first", 0, [], []),
        ([inst(1), inst(2), inst(3)], 5, "app:1", "newest_first", 2, [], []),
        ([inst(1), inst(2), inst(3)], 1, "app:1", "newest_first", 0, [], ["i3", "i2"]),
        ([inst(1), inst(2), inst(3)], 1, "app:1", "oldest_first", 0, [], ["i1", "i2"]),
        ([inst(1), inst(2), inst(3)], 0, None, "newest_first", 0, [], ["i3", "i2", "i1"]),
        ([inst(1), inst(2)], 2, "app:2", "newest_first", 0, ["i2", "i1"], []),
        ([inst(1), inst(2, "app:2"), inst(3)], 2, "app:2", "newest_first", 0, ["i1"], ["i3"]),
        ([inst(1), inst(2)], 3, "app:2", "newest_first", 1, ["i2", "i1"], []),
        ([inst(1), inst(2)], 2, None, "newest_first", 0, [], []),
    ],
)
def test_plan(current, count, image, policy, create, replace, remove):
    p = plan(current, count, image, policy)
    assert p.create == create
    assert [i.id for i in p.replace] == replace
    assert [i.id for i in p.remove] == remove
    assert p.changed == bool(create or replace or remove)


def test_equal_ages_break_ties_by_id():
    p = plan([inst(2, created=0), inst(1, created=0)], 1, "app:1", "newest_first")
    assert [i.id for i in p.remove] == ["i2"]


@pytest.mark.parametrize(("count", "policy", "message"), [(-1, "newest_first", "count"), (1, "random", "scale_in")])
def test_plan_rejects_bad_input(count, policy, message):
    with pytest.raises(ValueError, match=message):
        plan([], count, "x", policy)
