# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One autoscaling cycle over every service definition: validate all, measure all, then act.

Each service is decided and changed under a Consul session lock, so concurrent runs (a timer,
AWX, a human) never act twice; decisions and cooldown state live in Consul KV, so the cycle
keeps no local state.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import State, decide, parse_policy
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import convert_result, is_empty
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import Desired, ServiceConverger

HISTORY = 50
RELEASE_DONE = ("done", "rolled_back", "aborted", "failed")


def spec_of(definition, color, image=None):
    return Spec(
        service=definition["name"],
        color=color,
        image=image or definition.get("image") or "",
        port=int(definition.get("port", 8080)),
        env={k: str(v) for k, v in (definition.get("env") or {}).items()},
        command=tuple(definition.get("command") or ()),
        memory=definition.get("memory") or "",
        cpus=float(definition.get("cpus") or 0),
    )


def validate(definitions, limit=None):
    """{name: (definition, Policy)} for every definition with a scaling policy; all errors at once."""
    errors, policies = [], {}
    names = [d.get("name") for d in definitions if isinstance(d, dict)]
    for n, definition in enumerate(definitions):
        if not isinstance(definition, dict) or not definition.get("name"):
            errors.append(f"services[{n}] has no name")
            continue
        name = definition["name"]
        if names.count(name) > 1:
            errors.append(f"service {name} is defined more than once")
            continue
        if limit and name not in limit:
            continue
        if "scaling" not in definition:
            continue
        if not definition.get("image"):
            errors.append(f"service {name}: no image to start instances from")
        try:
            policies[name] = (definition, parse_policy(name, definition["scaling"]))
        except SkynetError as e:
            errors.append(str(e))
    unknown = sorted(set(limit or ()) - set(names))
    if unknown:
        errors.append(f"unknown service(s) in limit: {', '.join(unknown)} (defined: {', '.join(sorted(names))})")
    if errors:
        raise SkynetError("invalid scaling policies, nothing was changed: " + "; ".join(errors))
    return policies


class Autoscaler:
    def __init__(self, consul, registry, driver, prometheus, key_prefix="skynet/scale", clock=time.time):
        self.consul, self.registry, self.driver, self.prometheus = consul, registry, driver, prometheus
        self.prefix, self.clock = key_prefix.rstrip("/"), clock

    # -- metrics -----------------------------------------------------------------------------

    def measure(self, policies):
        """{service: {check: value or None}}. Bad PromQL or an unreachable Prometheus raises."""
        values = {}
        for name, (_definition, policy) in policies.items():
            values[name] = {}
            for check in policy.checks:
                if check.strategy == "schedule":
                    continue
                if check.query is None:
                    values[name][check.name] = check.value
                    continue
                values[name][check.name] = self._query(name, check)
        return values

    def _query(self, service, check):
        try:
            data = self.prometheus.query(check.query)
            if is_empty(data):
                return None
            value = convert_result(data, "scalar")
        except SkynetError as e:
            raise SkynetError(f"service {service}: check {check.name}: {e}; nothing was changed") from e
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    # -- KV state ----------------------------------------------------------------------------

    def _key(self, service, leaf):
        return f"{self.prefix}/{service}/{leaf}"

    def release_in_progress(self, service):
        release = self.registry.read_json(f"skynet/bluegreen/{service}/release")
        if release and release.get("phase") not in RELEASE_DONE:
            return release.get("phase") or "unknown"
        return None

    def live_color(self, definition):
        live = self.registry.read_json(f"skynet/bluegreen/{definition['name']}/live")
        return live if live in ("blue", "green") else definition.get("color", "blue")

    # -- locking -----------------------------------------------------------------------------

    def _lock(self, service, wait):
        sid = self.registry.call(
            "create a session",
            self.consul.session.create,
            name=f"skynet-scale-{service}",
            ttl=60,
            behavior="delete",
            lock_delay=0,
        )
        deadline = time.monotonic() + wait
        while True:
            got = self.registry.call(
                f"lock {service}", self.consul.kv.put, self._key(service, "lock"), sid, acquire=sid
            )
            if got:
                return sid
            if time.monotonic() >= deadline:
                self.registry.call("destroy a session", self.consul.session.destroy, sid)
                return None
            time.sleep(0.2)

    def _unlock(self, sid):
        self.registry.call("destroy a session", self.consul.session.destroy, sid)

    # -- the cycle ---------------------------------------------------------------------------

    def run(
        self, definitions, limit=None, check_mode=False, dry_run=False, lock_wait=0.0, converge_options=None, parallel=8
    ):
        """Decisions in the order of the definitions; services are decided and changed `parallel` at a time."""
        policies = validate(definitions, limit)
        self.registry.check()
        self.driver.check()
        values = self.measure(policies)

        def one(item):
            name, (definition, policy) = item
            return self._one(definition, policy, values[name], check_mode, dry_run, lock_wait, converge_options or {})

        # Services are independent (a lock each); most of a change is waiting for health checks.
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(one, policies.items()))

    def _one(self, definition, policy, values, check_mode, dry_run, lock_wait, options):
        name = definition["name"]
        sid = None if check_mode else self._lock(name, lock_wait)
        if not check_mode and sid is None:
            return {
                "service": name,
                "action": "skipped",
                "applied": False,
                "reason": "another autoscale run holds the lock",
                "metrics": values,
            }
        try:
            color = self.live_color(definition)
            running = [i for i in self.driver.list(name, color) if i.state == "running"]
            state = State.from_dict(self.registry.read_json(self._key(name, "state")))
            decision, new_state = decide(policy, len(running), values, state, self.clock())
            result = {**decision.as_dict(), "color": color, "applied": False, "error": None}
            release = self.release_in_progress(name)
            if release and decision.action != "hold":
                result.update(
                    desired=decision.current,
                    action="hold",
                    reason=f"a blue/green release is in progress (phase {release}): holding; "
                    f"wanted {decision.desired} ({decision.reason})",
                )
                return result
            if check_mode or dry_run:
                return result
            if decision.action != "hold":
                image = running[-1].image if running else None
                desired = Desired(
                    spec=spec_of(definition, color, image),
                    count=decision.desired,
                    health=definition.get("health") or {},
                    roll=False,
                    **options,
                )
                try:
                    ServiceConverger(self.driver, self.registry).converge(desired)
                    result["applied"] = True
                except SkynetError as e:
                    result["error"] = str(e)
                    new_state = state
            self.registry.write_json(self._key(name, "state"), new_state.as_dict())
            self.registry.write_json(self._key(name, "last"), result)
            if decision.action != "hold" or result["error"]:
                history = self.registry.read_json(self._key(name, "history"), [])
                self.registry.write_json(self._key(name, "history"), [*history, result][-HISTORY:])
            return result
        finally:
            if sid:
                self._unlock(sid)
