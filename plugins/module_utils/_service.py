# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converges a service's instances on a compute to a desired state, keeping Consul in step.

Everything is checked before anything changes; whatever fails after that is undone (a
created instance that cannot be registered or never passes is removed) or reported exactly.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import plan
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registrator import container_labels


def instance_argument_spec():
    """The argument spec paired with the cyberdyne.skynet.instance doc fragment."""
    return dict(
        port=dict(type="int", default=8080),
        env=dict(type="dict", default={}),
        command=dict(type="list", elements="str"),
        memory=dict(type="str"),
        cpus=dict(type="float"),
        tags=dict(type="list", elements="str", default=[]),
        health=dict(
            type="dict",
            default={},
            options=dict(
                type=dict(type="str", choices=["http", "tcp"], default="http"),
                path=dict(type="str", default="/"),
                interval=dict(type="str", default="2s"),
                timeout=dict(type="str", default="1s"),
                deregister_after=dict(type="str", default="1m"),
            ),
        ),
        drain_period=dict(type="float", default=5),
        stop_timeout=dict(type="int", default=10),
    )


@dataclass
class Desired:
    spec: object  # _compute.Spec
    count: int
    state: str = "present"
    health: dict = field(default_factory=dict)
    tags: tuple = ()
    wait: bool = True
    wait_timeout: float = 120
    drain_period: float = 5
    stop_timeout: int = 10
    scale_in_policy: str = "newest_first"
    roll: bool = True  # replace instances whose image differs from spec.image
    discard: tuple = ()  # ids of running instances to remove and not count (failed health, left drained)
    uncounted: tuple = ()  # ids of running instances kept but not counted (failing, not for long yet)


@dataclass
class Outcome:
    created: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    registered: list = field(default_factory=list)

    @property
    def changed(self):
        return bool(self.created or self.removed or self.replaced or self.registered)


def _no_fence(before):
    return None


class ServiceConverger:
    """fence(what) is called before each change and raises to stop it (a lock that was lost)."""

    def __init__(self, driver, registry, sleep=time.sleep, fence=_no_fence):
        self.driver, self.registry, self.sleep, self.fence = driver, registry, sleep, fence

    def preflight(self, desired):
        self.registry.check()
        self.driver.check(desired.spec if desired.state == "present" and desired.count else None)

    def converge(self, desired, check_mode=False):
        """Returns (outcome, instances before, instances after as predicted or observed)."""
        self.preflight(desired)
        spec = desired.spec
        count = desired.count if desired.state == "present" else 0
        # Every color: a pool places on the service's instances as listed here, under the caller's lock.
        before = [i for i in self.driver.list(spec.service) if i.color == spec.color]
        discard = [i for i in before if i.state == "running" and i.id in desired.discard]
        running = [i for i in before if i.state == "running" and i not in discard]
        counted = [i for i in running if i.id not in desired.uncounted]
        dead = [i for i in before if i.state != "running"]
        if not check_mode:
            self.registry.keep_checked(running + discard)
        statuses = self.registry.statuses(spec.service)
        unregistered = [i for i in running if i.id not in statuses]
        target_image = spec.image if desired.state == "present" and desired.roll else None
        todo = plan(counted, count, target_image, desired.scale_in_policy, choose=self.driver.choose_removals)

        out = Outcome()
        if check_mode:
            out.removed = [i.id for i in dead + discard + todo.remove]
            out.replaced = [i.id for i in todo.replace]
            out.created = [f"(new {n + 1})" for n in range(todo.create)]
            out.registered = [i.id for i in unregistered if i not in todo.remove]
            kept = [i.id for i in running if i not in todo.remove and i not in todo.replace]
            after_ids = kept + [f"(replacing {i})" for i in out.replaced] + out.created
            return out, before, after_ids

        for inst in dead:
            self._remove(inst, drain=False)
            out.removed.append(inst.id)
        for inst in unregistered:
            if inst not in todo.remove:
                self.fence(f"registering {inst.id}")
                self.registry.register(inst, desired.health, desired.tags)
                out.registered.append(inst.id)
        if todo.remove:
            self._scale_in(todo.remove, desired)
            out.removed.extend(i.id for i in todo.remove)
        if todo.create:
            new = self._start(todo.create, desired)
            out.created.extend(i.id for i in new)
        # Replacements are passing before what they replace goes, which serves nothing already.
        for inst in discard:
            self._remove(inst, stop_timeout=desired.stop_timeout)
            out.removed.append(inst.id)
        for old in todo.replace:
            new = self._start(1, desired, replacing=old)[0]
            out.replaced.append(old.id)
            out.created.append(new.id)
            self._scale_in([old], desired)
        after = self.driver.list(spec.service, spec.color)
        return out, before, after

    def _start(self, n, desired, replacing=None):
        """Starts n instances, registers them and waits until they pass; undoes them all on failure."""
        started = []
        # Labels that make a registrator on the host register the instance exactly as we do.
        spec = replace(desired.spec, labels={**container_labels(desired.health, desired.tags), **desired.spec.labels})
        try:
            made, error = self.driver.create_many(
                spec, n, lambda: self.fence(f"starting an instance of {spec.service}")
            )
            started.extend(made)
            if error is not None:
                raise error if isinstance(error, SkynetError) else SkynetError(str(error))
            for inst in started:
                self.registry.register(inst, desired.health, desired.tags)
            if desired.wait:
                waiting = self.registry.wait_passing(desired.spec.service, started, desired.wait_timeout)
                if waiting:
                    raise SkynetError(
                        f"{len(waiting)} new instance(s) of {desired.spec.service} ({', '.join(waiting)}) did not "
                        f"pass their health check within {desired.wait_timeout:g}s; they were removed"
                    )
        except SkynetError as e:
            failed = []
            for inst in started:
                for what, undo in (("instance", self.driver.remove), ("registration", self.registry.deregister)):
                    try:
                        undo(inst)
                    except SkynetError as cleanup:
                        failed.append((what, inst, cleanup))
            # A cleanup step can fail on what is already gone (a registration that was refused,
            # a container removed despite an error): only what still exists is reported.
            leftovers = [f"{what} {i.id} ({err})" for what, i, err in failed if self._exists(what, i, desired)]
            if leftovers:
                raise SkynetError(f"{e}; could not remove what was started: {'; '.join(leftovers)}") from e
            raise
        return started

    def _exists(self, what, instance, desired):
        """Whether a started instance or its Consul registration is still there; True when that cannot be read."""
        spec = desired.spec
        try:
            if what == "instance":
                return instance.id in {i.id for i in self.driver.list(spec.service, spec.color)}
            return self.registry.registered(instance)
        except SkynetError:
            return True

    def _scale_in(self, instances, desired):
        for inst in instances:
            self.fence(f"draining {inst.id}")
            self.registry.drain(inst)
        if desired.drain_period:
            self.sleep(desired.drain_period)
        # Each host stops its own one after the other; the hosts of a pool do so side by side.
        by_host = {}
        for inst in instances:
            by_host.setdefault(inst.host, []).append(inst)

        def on(group):
            for inst in group:
                self._remove(inst, drain=False, stop_timeout=desired.stop_timeout)

        with ThreadPoolExecutor(max_workers=len(by_host) or 1) as pool:
            for future in [pool.submit(on, group) for group in by_host.values()]:
                future.result()  # the first failure is raised, once every host has done what it could

    def _remove(self, inst, drain=True, stop_timeout=10, fenced=True):
        if fenced:
            self.fence(f"removing {inst.id}")
        if drain:
            self.registry.drain(inst)
        self.driver.remove(inst, stop_timeout)
        self.registry.deregister(inst)
