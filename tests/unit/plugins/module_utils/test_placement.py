from __future__ import annotations

import random
from collections import Counter

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._placement import (
    Host,
    Move,
    Placed,
    choose_removals,
    place,
    place_replacement,
    rebalance,
)

D1, D2, D3 = "docker-1", "docker-2", "docker-3"
POOL = [Host(D1), Host(D2), Host(D3)]
ZONED = [Host(D1, "a"), Host(D2, "a"), Host(D3, "b")]


def on(host, n, service="web", start=0):
    return [Placed(host, f"{service}-{host}-{start + i}", service, float(start + i)) for i in range(n)]


def apply(placed, service, hosts_of_new):
    return placed + [Placed(h, f"new-{len(placed) + i}", service, 1e9 + i) for i, h in enumerate(hosts_of_new)]


@pytest.mark.parametrize(
    ("hosts", "placed", "count", "zones", "expected"),
    [
        (POOL, [], 4, (), (D1, D2, D3, D1)),
        (POOL, on(D1, 2) + on(D2, 1), 2, (), (D3, D2)),
        # equal for the service: fewest instances overall wins
        (POOL, on(D1, 2, "db") + on(D3, 1, "db"), 2, (), (D2, D3)),
        # equal for the service and overall: the zone with fewest of the service wins, then the name
        (ZONED, on(D1, 1), 1, (), (D3,)),
        # fewest overall comes before the zone
        (ZONED, on(D1, 1) + on(D3, 1, "db"), 1, (), (D2,)),
        (POOL, on(D1, 1), 1, (), (D2,)),
        (ZONED, [], 3, (), (D1, D3, D2)),
        # capacity counts every service; an unavailable host gets nothing
        ([Host(D1, capacity=2), Host(D2)], on(D1, 2, "db"), 2, (), (D2, D2)),
        ([Host(D1, available=False), Host(D2)], [], 2, (), (D2, D2)),
        (ZONED, [], 3, ("b",), (D3, D3, D3)),
        (POOL, on(D1, 1), 0, (), ()),
    ],
)
def test_place(hosts, placed, count, zones, expected):
    p = place(hosts, placed, "web", count, zones)
    assert p.hosts == expected
    assert (p.unplaced, p.reason) == (0, "")


@pytest.mark.parametrize(
    ("hosts", "zones", "placed_hosts", "reason"),
    [
        (
            [Host(D1, capacity=1), Host(D2, capacity=2, available=False), Host(D3, capacity=2)],
            (),
            (D1, D3, D3),
            "2 of 5 new instance(s) of web could not be placed: no capacity left on the available hosts "
            "(docker-1 1/1, docker-3 2/2)",
        ),
        (
            [Host(D1, available=False), Host(D2, available=False)],
            (),
            (),
            "5 of 5 new instance(s) of web could not be placed: no available host (docker-1, docker-2 unavailable)",
        ),
        ([], (), (), "5 of 5 new instance(s) of web could not be placed: no available host (the pool has no hosts)"),
        (
            ZONED,
            ("c",),
            (),
            "5 of 5 new instance(s) of web could not be placed: it is pinned to zone(s) c, which no host has "
            "(zones: a, b)",
        ),
        (
            [Host(D1, "a"), Host(D3, "b", available=False)],
            ("b",),
            (),
            "5 of 5 new instance(s) of web could not be placed: no available host in zone(s) b (docker-3 unavailable)",
        ),
    ],
)
def test_place_says_what_could_not_be_placed_and_why(hosts, zones, placed_hosts, reason):
    p = place(hosts, [], "web", 5, zones)
    assert p.hosts == placed_hosts
    assert p.unplaced == 5 - len(placed_hosts)
    assert p.reason == reason


@pytest.mark.parametrize(
    ("hosts", "placed", "count", "policy", "expected"),
    [
        (POOL, on(D1, 3) + on(D2, 1), 2, "newest_first", ["web-docker-1-2", "web-docker-1-1"]),
        (POOL, on(D1, 3) + on(D2, 1), 2, "oldest_first", ["web-docker-1-0", "web-docker-1-1"]),
        # equal for the service: the host with most overall, then the zone with most of the service, then name
        (POOL, on(D1, 1) + on(D2, 1) + on(D2, 1, "db"), 1, "newest_first", ["web-docker-2-0"]),
        (ZONED, on(D3, 1) + on(D2, 1) + on(D1, 1), 1, "newest_first", ["web-docker-1-0"]),
        (ZONED, on(D3, 1) + on(D2, 1) + on(D1, 1) + on(D3, 1, "db"), 1, "newest_first", ["web-docker-3-0"]),
        (POOL, on(D3, 1) + on(D2, 1), 1, "newest_first", ["web-docker-2-0"]),
        # an unavailable host cannot be reached: fewer come back; other services are never taken
        (
            [Host(D1, available=False), Host(D2)],
            on(D1, 3) + on(D2, 1) + on(D2, 2, "db"),
            3,
            "newest_first",
            ["web-docker-2-0"],
        ),
    ],
)
def test_choose_removals(hosts, placed, count, policy, expected):
    assert [p.id for p in choose_removals(hosts, placed, "web", count, policy)] == expected


def test_newest_first_breaks_equal_ages_by_id_as_plan_does():
    twins = [Placed(D1, "b", "web", 5.0), Placed(D1, "a", "web", 5.0)]
    assert [p.id for p in choose_removals(POOL, twins, "web", 1)] == ["b"]
    assert [p.id for p in choose_removals(POOL, twins, "web", 1, "oldest_first")] == ["a"]


def test_rolling_change_keeps_each_instance_on_its_host():
    placed = on(D1, 3) + on(D2, 2) + on(D3, 2) + on(D2, 4, "db")
    for old in [p for p in placed if p.service == "web"]:
        assert place_replacement(POOL, placed, old).hosts == (old.host,)


@pytest.mark.parametrize(
    ("hosts", "placed", "expected"),
    [
        # the host is full while the old instance runs: the replacement goes to the next best host
        ([Host(D1, capacity=2), Host(D2), Host(D3)], on(D1, 2) + on(D2, 2) + on(D3, 2), D2),
        # an uneven spread is evened out by the replacement
        (POOL, on(D1, 3) + on(D2, 1) + on(D3, 2), D2),
        ([Host(D1, available=False), Host(D2)], on(D1, 1) + on(D2, 1), D2),
    ],
)
def test_replacement_goes_elsewhere_when_its_host_cannot_keep_it(hosts, placed, expected):
    assert place_replacement(hosts, placed, placed[0]).hosts == (expected,)


@pytest.mark.parametrize(
    ("hosts", "placed", "count", "remove", "moves"),
    [
        # docker-3 was lost, its 2 were replaced on the others, then it came back with them
        (
            POOL,
            on(D1, 3) + on(D2, 3) + on(D3, 2, start=10),
            6,
            ["web-docker-3-11", "web-docker-3-10"],
            [(D1, D3), (D2, D3)],
        ),
        # it came back empty
        (POOL, on(D1, 3) + on(D2, 3), 6, [], [(D1, D3), (D2, D3)]),
        # the surplus is smaller than what the lost host holds
        (POOL, on(D1, 3) + on(D2, 3) + on(D3, 2, start=10), 7, ["web-docker-3-11"], [(D1, D3)]),
        # more surplus than the lost host holds: the rest by scale-in
        (
            POOL,
            on(D1, 3) + on(D2, 3) + on(D3, 1, start=10),
            4,
            ["web-docker-3-10", "web-docker-1-2", "web-docker-2-2"],
            [(D1, D3)],
        ),
        (POOL, on(D1, 2) + on(D2, 2) + on(D3, 2), 6, [], []),
        # docker-3 has room for one only
        ([Host(D1), Host(D2), Host(D3, capacity=1)], on(D1, 3) + on(D2, 3), 6, [], [(D1, D3)]),
    ],
)
def test_rebalance_after_a_host_returns(hosts, placed, count, remove, moves):
    r = rebalance(hosts, placed, "web", count, lost=[D3])
    assert [p.id for p in r.remove] == remove
    assert [(m.instance.host, m.host) for m in r.moves] == moves
    assert r.changed == bool(remove or moves)
    assert all(isinstance(m, Move) and m.instance.service == "web" for m in r.moves)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: place([Host(D1), Host(D1)], [], "web", 1), "host docker-1 is listed twice"),
        (lambda: place([Host(D1, capacity=-1)], [], "web", 1), "capacity of host docker-1 must be a whole number"),
        (lambda: place([Host(D1, capacity=True)], [], "web", 1), "capacity of host docker-1"),
        (lambda: place([Host(D1, capacity=2.5)], [], "web", 1), "not 2.5"),
        (lambda: place(POOL, [], "web", -1), "number of instances must be a whole number, 0 or more, not -1"),
        (lambda: choose_removals(POOL, [], "web", 1, "random"), "scale_in_policy must be one of"),
        (lambda: rebalance(POOL, [], "web", 1, scale_in="lifo"), "not 'lifo'"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(SkynetError, match=message):
        call()


def cases(seed):
    return random.Random(seed)  # noqa: S311 - reproducible test cases, not secrets


def random_pool(rng, unlimited=False):
    hosts = []
    for n in range(rng.randint(1, 6)):
        capacity = None if unlimited or rng.random() < 0.5 else rng.randint(0, 8)
        hosts.append(Host(f"h{n}", rng.choice(["", "a", "b", "c"]), capacity, rng.random() < 0.85))
    others = [Placed(rng.choice(hosts).name, f"o{i}", rng.choice(["db", "api"])) for i in range(rng.randint(0, 12))]
    return hosts, others


def fits(h, totals, zones):
    return h.available and (not zones or h.zone in zones) and (h.capacity is None or totals[h.name] < h.capacity)


@pytest.mark.parametrize("seed", range(400))
def test_property_placement(seed):
    rng = cases(seed)
    hosts, placed = random_pool(rng)
    zones = tuple(rng.sample(["a", "b", "c", "d"], rng.randint(1, 2))) if rng.random() < 0.3 else ()
    count = rng.randint(0, 15)
    before = Counter(p.host for p in placed)
    p = place(hosts, placed, "web", count, zones)

    one_by_one, state = [], list(placed)
    for _new in range(count):
        step = place(hosts, state, "web", 1, zones)
        if not step.hosts:
            break
        one_by_one += step.hosts
        state = apply(state, "web", step.hosts)
    assert p.hosts == tuple(one_by_one)
    assert len(p.hosts) + p.unplaced == count

    after = Counter(p.host for p in apply(placed, "web", p.hosts))
    mine = Counter(p.hosts)
    by_name = {h.name: h for h in hosts}
    for name in mine:
        h = by_name[name]
        assert h.available and (not zones or h.zone in zones)
        assert h.capacity is None or after[name] <= max(h.capacity, before[name])
    room = [h for h in hosts if fits(h, after, zones)]
    assert not (p.unplaced and room)
    assert bool(p.reason) == bool(p.unplaced)
    # no host holds more than one above a host that could still take one
    for n in mine.values():
        assert all(n <= mine[g.name] + 1 for g in room)
    if all(h.capacity is None for h in hosts) and count:
        eligible = [h.name for h in hosts if h.available and (not zones or h.zone in zones)]
        if eligible:
            assert max(mine[n] for n in eligible) - min(mine[n] for n in eligible) <= 1


@pytest.mark.parametrize("seed", range(200))
def test_property_scale_in_and_rolling_keep_the_spread(seed):
    rng = cases(seed)
    hosts, others = random_pool(rng, unlimited=True)
    up = [h.name for h in hosts if h.available]
    placed = apply(others, "web", place(hosts, others, "web", rng.randint(0, 14)).hosts)
    web = [p for p in placed if p.service == "web"]
    for old in web:
        assert place_replacement(hosts, placed, old).hosts == (old.host,)

    gone = choose_removals(hosts, placed, "web", rng.randint(0, len(web)), rng.choice(["newest_first", "oldest_first"]))
    assert all(p.service == "web" and p.host in up for p in gone)
    left = Counter(p.host for p in web if p not in gone)
    if up:
        assert max(left[n] for n in up) - min(left[n] for n in up) <= 1


@pytest.mark.parametrize("seed", range(300))
def test_property_rebalance_restores_the_spread(seed):
    rng = cases(seed)
    hosts, others = random_pool(rng, unlimited=True)
    hosts = [Host(h.name, h.zone) for h in hosts]
    web = [Placed(rng.choice(hosts).name, f"w{i}", "web", float(rng.randint(0, 5))) for i in range(rng.randint(0, 14))]
    lost = {h.name for h in hosts if rng.random() < 0.3}
    count = rng.randint(0, len(web) + 2)
    r = rebalance(hosts, others + web, "web", count, lost=lost, scale_in=rng.choice(["newest_first", "oldest_first"]))

    on_lost = [p for p in web if p.host in lost]
    first = min(len(on_lost), max(len(web) - count, 0))
    assert all(p.host in lost for p in r.remove[:first])
    assert len(r.remove) == max(len(web) - count, 0)
    moved = {m.instance for m in r.moves}
    assert not moved & set(r.remove)
    final = Counter(p.host for p in web if p not in r.remove and p not in moved) + Counter(m.host for m in r.moves)
    assert sum(final.values()) == min(count, len(web))
    names = [h.name for h in hosts]
    assert max(final[n] for n in names) - min(final[n] for n in names) <= 1
    assert len(r.moves) <= len(web)
