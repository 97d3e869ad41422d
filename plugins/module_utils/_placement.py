# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placement: which host of a pool gets a service's next instance, and which instance goes first.

Pure code: the caller reads hosts and instances through the drivers and applies what these functions return.

Data (frozen dataclasses):
- ``Host(name, zone="", capacity=None, available=True)``: one host of a pool. ``capacity`` is the most
  instances of all services the host may run (None: no limit). An unavailable host (not answering, or lost)
  gets nothing and nothing is taken from it.
- ``Placed(host, id, service, created=0.0)``: one running instance of any service and the host it runs on;
  ``created`` (a timestamp) orders one host's instances for the scale-in policy.
- ``Placement(hosts, unplaced=0, reason="")``: the host of each new instance in order, and how many could
  not be placed and why (no capacity, no available host, or pinned to zones no host has).
- ``Move(instance, host)``: start a copy of ``instance`` on ``host``, then remove ``instance``.
- ``Rebalance(remove, moves)``: the surplus to remove, then the moves that restore the spread.

Rules. A new instance goes to the host that can take it (available, room left, in the service's ``zones``
if it is pinned) with the fewest of the service's instances, then the fewest instances overall, then whose
zone holds the fewest of the service's instances, then by name. Each instance is placed on the counts the
previous one left, so placing n at once gives what placing them one by one gives. Scale-in takes from the
host with the most of the service, then the most overall, then whose zone holds the most of the service
(then by name), and on that host by the scale-in policy of plan(): the newest or the oldest first. The
replacement in a rolling image change is placed as a new instance, with the old one not counted and its
host winning a tie on the service's count, so a balanced spread keeps every instance where it was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import SCALE_IN_POLICIES
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


@dataclass(frozen=True)
class Host:
    name: str
    zone: str = ""
    capacity: int | None = None
    available: bool = True


@dataclass(frozen=True)
class Placed:
    host: str
    id: str
    service: str
    created: float = 0.0


@dataclass(frozen=True)
class Placement:
    hosts: tuple = ()
    unplaced: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Move:
    instance: Placed
    host: str


@dataclass(frozen=True)
class Rebalance:
    remove: tuple = ()
    moves: tuple = ()

    @property
    def changed(self) -> bool:
        return bool(self.remove or self.moves)


def _check(hosts, count=0, scale_in="newest_first"):
    seen = set()
    for h in hosts:
        if h.name in seen:
            raise SkynetError(f"placement: host {h.name} is listed twice in the pool")
        seen.add(h.name)
        cap = h.capacity
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise SkynetError(f"placement: capacity of host {h.name} must be a whole number, 0 or more, not {cap!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise SkynetError(f"placement: the number of instances must be a whole number, 0 or more, not {count!r}")
    if scale_in not in SCALE_IN_POLICIES:
        raise SkynetError(f"placement: scale_in_policy must be one of {', '.join(SCALE_IN_POLICIES)}, not {scale_in!r}")


class _Counts:
    """Instances per host (all services and this service) and per zone (this service), kept as they change."""

    def __init__(self, hosts, placed, service):
        self.zone_of = {h.name: h.zone for h in hosts}
        self.total = Counter(p.host for p in placed)
        self.mine = Counter(p.host for p in placed if p.service == service)
        self.zone = Counter(self.zone_of.get(p.host, "") for p in placed if p.service == service)

    def add(self, host, n=1, total=True):
        self.mine[host] += n
        self.zone[self.zone_of.get(host, "")] += n
        if total:
            self.total[host] += n

    def key(self, host):
        return self.mine[host], self.total[host], self.zone[self.zone_of.get(host, "")]


def _fits(h, c, zones):
    return h.available and (not zones or h.zone in zones) and (h.capacity is None or c.total[h.name] < h.capacity)


def _best(hosts, c, zones, stay=None):
    def rank(h):
        mine, total, zone = c.key(h.name)
        return mine, h.name != stay, total, zone, h.name

    return min((h for h in hosts if _fits(h, c, zones)), key=rank, default=None)


def _why(hosts, c, zones, service, unplaced, count):
    head = f"{unplaced} of {count} new instance(s) of {service} could not be placed"
    pool = [h for h in hosts if not zones or h.zone in zones]
    if zones and not pool:
        have = ", ".join(sorted({h.zone for h in hosts if h.zone})) or "none"
        return f"{head}: it is pinned to zone(s) {', '.join(sorted(zones))}, which no host has (zones: {have})"
    up = [h for h in pool if h.available]
    if not up:
        where = f" in zone(s) {', '.join(sorted(zones))}" if zones else ""
        down = f"{', '.join(h.name for h in pool)} unavailable" if pool else "the pool has no hosts"
        return f"{head}: no available host{where} ({down})"
    full = ", ".join(f"{h.name} {c.total[h.name]}/{h.capacity}" for h in up)
    return f"{head}: no capacity left on the available hosts ({full})"


def _place(hosts, c, service, count, zones, stay=None):
    chosen = []
    for _new in range(count):
        best = _best(hosts, c, zones, stay)
        if best is None:
            return Placement(
                tuple(chosen), count - len(chosen), _why(hosts, c, zones, service, count - len(chosen), count)
            )
        chosen.append(best.name)
        c.add(best.name)
    return Placement(tuple(chosen))


def place(hosts, placed, service, count, zones=()):
    """The hosts for count new instances of service, given every service's placed instances."""
    _check(hosts, count)
    return _place(hosts, _Counts(hosts, placed, service), service, count, tuple(zones or ()))


def place_replacement(hosts, placed, instance, zones=()):
    """Where the replacement of instance (a rolling image change) goes: with a balanced spread, its own host.

    The old instance no longer counts towards the spread but keeps its slot (it runs until its replacement
    passes); the replacement stays on the old one's host when that host ties on the service's count.
    """
    _check(hosts)
    c = _Counts(hosts, placed, instance.service)
    c.add(instance.host, -1, total=False)
    return _place(hosts, c, instance.service, 1, tuple(zones or ()), stay=instance.host)


def _take(c, candidates, scale_in):
    host = min({p.host for p in candidates}, key=lambda n: (*(-k for k in c.key(n)), n))
    mine = [p for p in candidates if p.host == host]
    return (max if scale_in == "newest_first" else min)(mine, key=lambda p: (p.created, p.id))


def _removals(c, candidates, n, scale_in):
    left, out = list(candidates), []
    while left and len(out) < n:
        victim = _take(c, left, scale_in)
        out.append(victim)
        left.remove(victim)
        c.add(victim.host, -1)
    return out


def choose_removals(hosts, placed, service, count, scale_in="newest_first"):
    """The count instances of service a scale-in removes, in order (fewer if fewer can be reached)."""
    _check(hosts, count, scale_in)
    down = {h.name for h in hosts if not h.available}
    mine = [p for p in placed if p.service == service and p.host not in down]
    return _removals(_Counts(hosts, placed, service), mine, count, scale_in)


def rebalance(hosts, placed, service, count, lost=(), scale_in="newest_first", zones=()):
    """What brings service back to count instances spread within one, after hosts in lost came back.

    The surplus goes first from the lost hosts (their instances were replaced elsewhere), then by scale-in;
    each move then takes from the host scale-in would take from to where a new instance would go, while
    that narrows the spread. A shortfall is place()'s to fill.
    """
    _check(hosts, count, scale_in)
    zones = tuple(zones or ())
    c = _Counts(hosts, placed, service)
    down = {h.name for h in hosts if not h.available}
    mine = [p for p in placed if p.service == service and p.host not in down]
    surplus = max(len(mine) - count, 0)
    remove = _removals(c, [p for p in mine if p.host in set(lost)], surplus, scale_in)
    rest = [p for p in mine if p not in remove]
    remove += _removals(c, rest, surplus - len(remove), scale_in)
    rest = [p for p in rest if p not in remove]
    moves = []
    while rest:
        target = _best(hosts, c, zones)
        source = _take(c, rest, scale_in)
        if target is None or c.mine[source.host] - c.mine[target.name] < 2:
            break
        moves.append(Move(source, target.name))
        rest.remove(source)
        c.add(target.name)
        c.add(source.host, -1)
    return Rebalance(tuple(remove), tuple(moves))
