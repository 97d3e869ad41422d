# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hosts of a compute that stop answering: when each first failed, kept in Consul KV, and which are lost.

A host that failed less than `grace` seconds ago (counted from the first failure any run recorded) is
in its grace period: its instances still count, nothing replaces them. After that it is lost: its
instances count as gone and are replaced on the other hosts. A host that answers again has its record
removed. Every run on every controller reads the same records, so the grace period is the cluster's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "skynet/compute"
DEFAULT_GRACE = 30


@dataclass
class HostView:
    """What one run knows of a compute's hosts: {host: reason} of those down, in grace or lost."""

    in_grace: dict = field(default_factory=dict)
    lost: dict = field(default_factory=dict)
    since: dict = field(default_factory=dict)
    returned: tuple = ()  # hosts that had been lost and answer again

    def report(self):
        hosts = {**self.in_grace, **self.lost}
        return {
            h: {"reason": why, "failing_since": self.since.get(h), "lost": h in self.lost}
            for h, why in sorted(hosts.items())
        }


def key(compute, host):
    return f"{PREFIX}/{compute}/hosts/{host}"


def assess(records, down, now, grace):
    """The HostView of records ({host: {"since": t, ...}} read from KV) and down ({host: why} of this run).

    Pure: returns the view and the writes it needs, ({host: record to create}, [hosts whose record to delete]).
    """
    view, create, delete = HostView(), {}, []
    for host, why in down.items():
        record = records.get(host)
        since = record.get("since") if isinstance(record, dict) else None
        if not isinstance(since, (int, float)):
            since = now
            create[host] = {"since": now, "reason": why}
        view.since[host] = since
        (view.lost if now - since >= grace else view.in_grace)[host] = why
    returned = []
    for host, record in records.items():
        if host not in down:
            delete.append(host)
            since = record.get("since") if isinstance(record, dict) else None
            if isinstance(since, (int, float)) and now - since >= grace:
                returned.append(host)
    view.returned = tuple(sorted(returned))
    return view, create, sorted(delete)


class HostFailures:
    """The KV side of assess(): one recursive read per compute, writes only for what changed."""

    def __init__(self, registry, grace=DEFAULT_GRACE):
        self.registry, self.grace = registry, grace

    def observe(self, compute, down, now, record=True):
        prefix = f"{PREFIX}/{compute}/hosts/"
        records = self.registry.read_json_tree(prefix)
        view, create, delete = assess(records, down, now, self.grace)
        if record:
            for host, value in create.items():
                # cas=0: a record another run wrote first keeps its (earlier) time.
                self.registry.write_json(key(compute, host), value, cas=0)
            for host in delete:
                self.registry.delete(key(compute, host))
        return view
