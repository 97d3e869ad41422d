# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one cycle reads about every service at once, so that a thousand holding services cost a few reads.

One listing of the scale state keys and transactions reading them (TXN_OPS keys each), one recursive read
of the blue/green records, the wake records and the locks, one listing of every instance per compute (per host
of a pool, side by side), the probes of the instances whose checks Skynet runs (writing only the statuses that
changed), then one read of every health check. A service whose decision needs a change is read again,
live, under its lock: the snapshot only decides that nothing needs doing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _names, _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._control import LEAF as CONTROL
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import service_id
from ansible_collections.cyberdyne.skynet.plugins.module_utils._release import TERMINAL

BLUEGREEN_PREFIX = "skynet/bluegreen"


def release_of(record):
    """{phase, since} of a blue/green release record that has not ended, else None."""
    if not isinstance(record, dict) or record.get("phase") in TERMINAL:
        return None
    phases = [p for p in record.get("phases") or [] if isinstance(p, dict)]
    since = phases[-1].get("started") if phases else record.get("started")
    return {"phase": record.get("phase") or "unknown", "since": since}


def color_of(definition, live):
    return live if live in _names.COLORS else definition.get("color", "blue")


@dataclass
class Reads:
    """What deciding one service needs: its live color and running instances of it, the scale state (with
    its index, for a check-and-set), health by instance id, a release in progress, whether it is locked."""

    color: str
    instances: list
    state: dict
    index: int
    health: dict
    release: dict | None = None
    locked: bool = False
    control: object = None  # the raw control record (see _control), None without one
    wake: int = 0  # ModifyIndex of the service's wake record (see _wake), 0 without one
    dead: list = field(default_factory=list)  # its instances that stopped running (exited, stopped, terminating)


DEAD_STATES = ("created", "exited", "dead", "stopping", "stopped", "terminating")


def split_running(instances):
    """(running, dead) of listed instances: dead ones stopped (or never started) and are only to be removed; an
    instance restarting or paused is neither."""
    return [i for i in instances if i.state == "running"], [i for i in instances if i.state in DEAD_STATES]


class CycleSnapshot:
    def __init__(self, registry, state_prefix, lock_prefix, drivers, keep_checked=True):
        """State keys are <state_prefix>/<service>/state, locks <lock_prefix>/<service>; drivers: {service: the
        driver of its compute}; keep_checked: whether to run the checks Skynet keeps (a run that changes nothing,
        check mode or a dry run, does not)."""
        self.registry, self.state_prefix, self.drivers = registry, state_prefix.rstrip("/"), drivers
        wanted = {self.state_key(s) for s in drivers} | {self.control_key(s) for s in drivers}
        self.states = registry.read_many([k for k in registry.keys(self.state_prefix) if k in wanted])
        self.bluegreen = registry.read_json_tree(BLUEGREEN_PREFIX + "/")
        self.locked = self._locked(lock_prefix.rstrip("/"))
        self.wakes = registry.modify_indexes(_wake.PREFIX)
        self.instances = {}
        for driver in {id(d): d for d in drivers.values()}.values():
            for inst in driver.list(None):
                self.instances.setdefault((id(driver), inst.service, inst.color), []).append(inst)
        if keep_checked:
            # The checks Skynet runs itself (EC2 without consul-esm) are run now, so the health read next is fresh.
            registry.keep_checked([i for found in self.instances.values() for i in found])
        self.health = registry.health_all()

    def state_key(self, service):
        return f"{self.state_prefix}/{service}/state"

    def control_key(self, service):
        return f"{self.state_prefix}/{service}/{CONTROL}"

    def _locked(self, prefix):
        """The services whose lock key a session holds now."""
        entries = self.registry.call("read the locks", self.registry.client.kv.get, prefix + "/", recurse=True)[1]
        return {e["Key"].rsplit("/", 1)[-1] for e in entries or () if e.get("Session")}

    def reads(self, definition):
        name = definition["name"]
        color = color_of(definition, self.bluegreen.get(f"{name}/live"))
        driver = self.drivers[name]
        instances, dead = split_running(self.instances.get((id(driver), name, color), ()))
        state, index = self.states.get(self.state_key(name), ({}, 0))
        known = self.health.get(name, {})
        health = {i.id: known[service_id(i)] for i in instances if service_id(i) in known}
        if len(health) < len(instances):
            health = self.registry.health(name)  # one not found by its service ID: read the service itself
        return Reads(
            color=color,
            instances=instances,
            state=state if isinstance(state, dict) else {},
            index=index,
            health=health,
            release=release_of(self.bluegreen.get(f"{name}/release")),
            locked=name in self.locked,
            control=self.states.get(self.control_key(name), (None, 0))[0],
            wake=self.wakes.get(_wake.key(name), 0),
            dead=dead,
        )
