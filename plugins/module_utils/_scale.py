# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One autoscaling cycle over every service definition: validate all, measure all, then act.

Each service is decided and changed under a Consul session lock, so concurrent runs (a timer,
AWX, a human) never act twice; decisions and cooldown state live in Consul KV, so the cycle
keeps no local state.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _computes, _control, _names, _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._computes import DEFAULT
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._host_failures import (
    DEFAULT_GRACE,
    HostFailures,
    HostView,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LOCK_PREFIX, ServiceLock
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import (
    State,
    Unavailable,
    assess,
    counted,
    decide,
    parse_policy,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    QueryRejected,
    Unreachable,
    convert_result,
    is_empty,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale_snapshot import (
    BLUEGREEN_PREFIX,
    CycleSnapshot,
    Reads,
    color_of,
    release_of,
    split_running,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import Desired, ServiceConverger

HISTORY = 50


def spec_of(definition, color, image=None):
    d = definition
    return make_spec(
        d["name"],
        color,
        image or d.get("image"),
        d.get("port"),
        d.get("env"),
        d.get("command"),
        d.get("memory"),
        d.get("cpus"),
    )


def validate(definitions, limit=None):
    """{name: (definition, Policy)} for every definition with a scaling policy; all errors at once."""
    errors, policies = [], {}
    names = [d.get("name") for d in definitions if isinstance(d, dict) and isinstance(d.get("name"), str)]
    for n, item in enumerate(limit or ()):
        errors.append(_names.problem(_names.service_name, item, f"limit[{n}]"))
    for n, definition in enumerate(definitions):
        if not isinstance(definition, dict) or not definition.get("name"):
            errors.append(f"services[{n}] has no name")
            continue
        name = definition["name"]
        wrong = _names.problem(_names.service_name, name, f"services[{n}].name")
        if definition.get("color") is not None:
            wrong = wrong or _names.problem(_names.color, definition["color"], f"services[{n}].color")
        if wrong:
            errors.append(wrong)
            continue
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
    errors = [e for e in errors if e]
    valid_limit = {i for i in limit or () if not _names.problem(_names.service_name, i, "limit")}
    unknown = sorted(valid_limit - set(names))
    if unknown:
        errors.append(f"unknown service(s) in limit: {', '.join(unknown)} (defined: {', '.join(sorted(names))})")
    if errors:
        raise SkynetError("invalid scaling policies, nothing was changed: " + "; ".join(errors))
    return policies


def triage(health, instances, state_raw, now, health_grace, unhealthy_after):
    """(usable, uncounted, discard, left drained, unregistered, critical_since) by Consul health and age.

    An instance in no catalog that no cycle saw registered (state "registered") or failing was left by a run
    killed between its start and its registration: it counts (it serves once registered) and is registered under
    the lock, not replaced for a check it never had. One seen before is failing: Consul deregisters a service
    critical for its deregister_after."""
    previous = (state_raw or {}).get("critical_since") or {}
    seen = set((state_raw or {}).get("registered") or ())
    usable, uncounted, discard, drained, unregistered, critical_since = [], [], [], [], [], {}
    for inst in instances:
        status, in_maintenance = health.get(inst.id, (None, False))
        if in_maintenance:
            drained.append(inst)  # only a run that died mid-drain leaves one: its lock is ours now
        elif status is None and inst.id not in previous and inst.id not in seen:
            usable.append(inst)
            unregistered.append(inst)
        elif status in ("passing", "warning") or now - inst.created < health_grace:
            usable.append(inst)
        else:
            since = float(previous.get(inst.id, now))
            critical_since[inst.id] = since
            (discard if now - since >= unhealthy_after else uncounted).append(inst)
    return usable, uncounted, discard, drained, unregistered, critical_since


class Autoscaler:
    def __init__(
        self,
        consul,
        registry,
        computes,
        prometheus,
        key_prefix="skynet/scale",
        clock=time.time,
        lock_prefix=LOCK_PREFIX,
        health_grace=60,
        unhealthy_after=60,
        host_grace=DEFAULT_GRACE,
    ):
        """computes: a _drivers.Computes, the drivers by compute name (Computes.of(driver) for one driver)."""
        self.consul, self.registry, self.prometheus = consul, registry, prometheus
        self.computes, self.host_failures = computes, HostFailures(registry, host_grace)
        self.prefix, self.clock = key_prefix.rstrip("/"), clock
        self.lock_prefix, self.health_grace, self.unhealthy_after = lock_prefix, health_grace, unhealthy_after
        self.hosts = {}  # compute name -> HostView of this run

    # -- metrics -----------------------------------------------------------------------------

    def measure(self, policies, parallel=8):
        """{service: {check: value}}: a float (perhaps not finite), None when no series matched, or
        Unavailable saying why it could not be read. A query that can never give one number raises.
        Queries run `parallel` at a time; once Prometheus is unreachable the others are not sent."""
        values, down, queries = {}, [], []
        for name, (_definition, policy) in policies.items():
            values[name] = {}
            for check in policy.checks:
                if check.strategy == "schedule":
                    continue
                if check.query is None:
                    values[name][check.name] = check.value
                else:
                    queries.append((name, check))

        def one(item):
            name, check = item
            if down:
                return down[0]  # every other query would wait for it too
            try:
                return self._query(name, check)
            except Unreachable as e:
                down.append(Unavailable(str(e)))
                return down[0]

        # The first query alone: a Prometheus that does not answer is waited for once, not once per worker.
        answers = [one(q) for q in queries[:1]]
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(queries) or 1))) as pool:
            answers += list(pool.map(one, queries[1:]))
        for (name, check), value in zip(queries, answers, strict=True):
            values[name][check.name] = down[0] if down and isinstance(value, Unavailable) else value
        return values

    def _query(self, service, check):
        where = f"service {service}: check {check.name}"
        try:
            data = self.prometheus.query(check.promql)
        except QueryRejected as e:
            raise SkynetError(f"{where}: {e}; nothing was changed") from e
        except Unreachable:
            raise
        except SkynetError as e:
            return Unavailable(str(e))
        kind = data.get("resultType")
        if kind in ("matrix", "string"):
            raise SkynetError(
                f"{where}: the query {check.promql!r} returned a {'range of samples' if kind == 'matrix' else kind}, "
                "where one number is needed; nothing was changed"
            )
        if is_empty(data):
            return None
        try:
            return convert_result(data, "scalar")
        except SkynetError as e:  # such as two series where there was one
            return Unavailable(f"the query {check.promql!r}: {e}")

    # -- KV state ----------------------------------------------------------------------------

    def _key(self, service, leaf):
        return f"{self.prefix}/{service}/{leaf}"

    def live_reads(self, definition):
        """Reads of one service from Consul and its compute now (under its lock)."""
        name = definition["name"]
        driver = self.computes.driver_of(definition)
        color = color_of(definition, self.registry.read_json(f"{BLUEGREEN_PREFIX}/{name}/live"))
        state, index = self.registry.read_versioned(self._key(name, "state"), {})
        instances, dead = split_running(driver.list(name, color))
        return Reads(
            color=color,
            instances=instances,
            dead=dead,
            state=state if isinstance(state, dict) else {},
            index=index,
            health=self.registry.health(name),
            release=release_of(self.registry.read_json(f"{BLUEGREEN_PREFIX}/{name}/release")),
            control=self.registry.read_json(self._key(name, _control.LEAF)),
            wake=self.registry.read_versioned(_wake.key(name))[1],
        )

    # -- the cycle ---------------------------------------------------------------------------

    def run(
        self, definitions, limit=None, check_mode=False, dry_run=False, lock_wait=0.0, converge_options=None, parallel=8
    ):
        """Decisions in the order of the definitions; services are decided and changed `parallel` at a time."""
        policies = validate(definitions, limit)
        used = self._computes_of(policies)
        self.registry.check()
        now = self.clock()
        for compute in sorted(set(used.values())):
            driver = self.computes.drivers[compute]
            driver.check()
            record = not (check_mode or dry_run)
            self.hosts[compute] = self.host_failures.observe(compute, driver.unavailable(), now, record=record)
        values = self.measure(policies, parallel)
        drivers = {name: self.computes.drivers[compute] for name, compute in used.items()}
        snapshot = CycleSnapshot(
            self.registry, self.prefix, self.lock_prefix, drivers, keep_checked=not (check_mode or dry_run)
        )
        deferred = []  # holds decided on the snapshot: their state and decision, written in transactions

        def one(item):
            name, (definition, policy) = item
            return self._one(
                definition,
                policy,
                values[name],
                check_mode,
                dry_run,
                lock_wait,
                converge_options or {},
                snapshot,
                deferred,
            )

        # Services are independent (a lock each); most of a change is waiting for health checks.
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(one, policies.items()))
        self._write_deferred(deferred, results)
        for result, (name, (_definition, policy)) in zip(results, policies.items(), strict=True):
            metrics, missing, outage = assess(policy, values[name])
            result["metrics"] = metrics  # no NaN, Infinity or Unavailable in JSON
            result.setdefault("missing", list(missing))
            result.setdefault("outage", outage)
        return results

    def _computes_of(self, policies):
        """{service: compute name}; an unknown compute, or zones no host has, fail the run before anything."""
        used, errors = {}, []
        for name, (definition, _policy) in policies.items():
            try:
                used[name] = _computes.compute_of(
                    definition, self.computes.definitions, f"service {name}: compute"
                ).name
            except SkynetError as e:
                errors.append(str(e))
        if errors:
            raise SkynetError("invalid scaling policies, nothing was changed: " + "; ".join(errors))
        return used

    def _write_deferred(self, deferred, results):
        """The state and decision of the holds decided on the snapshot; a state that changed since is left as
        the other run wrote it (that hold is then not recorded, and says so)."""
        if not deferred:
            return
        refused = self.registry.write_many([w for _name, writes in deferred for w in writes])
        by_name = {r["service"]: r for r in results}
        for name, writes in deferred:
            if writes[0][0] in refused:
                by_name[name].setdefault("warnings", []).append(
                    f"the scaling state of {name} changed under this run (another run acted): "
                    "this hold was not recorded"
                )

    def _one(self, definition, policy, values, check_mode, dry_run, lock_wait, options, snapshot, deferred):
        name = definition["name"]
        reads = snapshot.reads(definition)
        if check_mode:
            return self._decide_and_apply(definition, policy, values, None, True, dry_run, options, reads)
        if not reads.locked:
            # Most services hold: decided on the snapshot, with no lock and no read of their own. Anything
            # else is decided again under the lock, on what Consul and the compute say then.
            held = []
            result = self._decide_and_apply(definition, policy, values, None, False, dry_run, options, reads, held)
            if result is not None:
                if held:
                    deferred.append((name, held))
                return result
        lock = ServiceLock(self.registry, name, "scale", prefix=self.lock_prefix)
        if not lock.acquire(lock_wait):
            return {
                "service": name,
                "action": "skipped",
                "applied": False,
                "reason": f"{lock.holder()} holds the lock of {name}",
                "metrics": values,
            }
        try:
            reads = self.live_reads(definition)
            result = self._decide_and_apply(definition, policy, values, lock, check_mode, dry_run, options, reads)
        finally:
            # A lock that cannot be given back ends with its session's TTL; it never hides the result.
            problem = lock.release()
        if problem:
            result.setdefault("warnings", []).append(f"the lock of {name} was not released cleanly: {problem}")
        return result

    def _decide_and_apply(self, definition, policy, values, lock, check_mode, dry_run, options, reads, held=None):
        """The decision, applied under lock. Without a lock (held is a list): a hold is returned with its writes
        appended to held; None when the decision needs a change, which is then for the locked path."""
        name = definition["name"]
        now = self.clock()
        color, instances = reads.color, reads.instances
        compute = definition.get("compute") or DEFAULT
        driver, hosts = self.computes.drivers[compute], self.hosts.get(compute) or HostView()
        listed = {i.id for i in instances}
        # A host in its grace period is not listed; its instances in the catalog still count (a blip
        # is not a loss). Once it is lost they count as gone and are replaced on the other hosts.
        away, lost = [], []
        if hosts.in_grace:  # a read of the catalog only then: most cycles have no host in its grace period
            away = [i for i in self.registry.instances_on(name, set(hosts.in_grace), color) if i not in listed]
        if hosts.lost:
            lost = [i for i in self.registry.instances_on(name, set(hosts.lost), color) if i not in listed]
        state_raw, index = reads.state, reads.index
        state = State.from_dict(state_raw)
        usable, uncounted, discard, drained, unregistered, critical_since = triage(
            reads.health, instances, state_raw, now, self.health_grace, self.unhealthy_after
        )
        # Only passing instances count towards the decided number, so a failing one, or one on a lost host,
        # gets a replacement at once (a failing one is removed once it failed for unhealthy_after).
        decided = state_raw.get("decided")
        decided = decided if isinstance(decided, int) and not isinstance(decided, bool) else None
        dead = reads.dead
        current = counted(len(usable), len(away), len(uncounted) + len(discard) + len(lost) + len(dead), decided)
        decision, new_state = decide(policy, current, values, state, now, wake=reads.wake)
        control, control_error, desired, action, reason = _control.apply(
            reads.control, name, decision.current, decision.desired, decision.action, decision.reason
        )
        if control is not None or control_error:
            # The operator's word wins over the policy; the policy's timers (cooldowns) stay as they were.
            decision, new_state = replace(decision, desired=desired, action=action, reason=reason), state
        result = {**decision.as_dict(), "color": color, "compute": compute, "applied": False, "error": control_error}
        if control is not None:
            result["control"] = control.as_dict()
        if hosts.in_grace or hosts.lost:
            result["unavailable_hosts"] = hosts.report()
            result["unreachable"] = away
        replaced = [i.id for i in discard]
        total = int(state_raw.get("replacements_total") or 0) + len(replaced)
        result.update(
            running=len(instances),
            passing=len(usable),
            unhealthy=[i.id for i in uncounted + discard],
            replaced=replaced,
            left_drained=[i.id for i in drained],
            replacements_total=total,
        )
        notes = []
        if discard:
            notes.append(
                f"replacing {len(discard)} instance(s) failing their health check for over "
                f"{self.unhealthy_after:g}s: {', '.join(replaced)}"
            )
        if uncounted:
            notes.append(
                f"{len(uncounted)} instance(s) failing their health check, not counted: "
                + ", ".join(i.id for i in uncounted)
            )
        if drained:
            notes.append(f"removing {len(drained)} instance(s) an interrupted run left drained")
        if dead:
            notes.append(f"removing {len(dead)} instance(s) that stopped running: " + ", ".join(i.id for i in dead))
        if unregistered:
            notes.append(
                f"registering {len(unregistered)} instance(s) an interrupted run left unregistered: "
                + ", ".join(i.id for i in unregistered)
            )
        if away:
            notes.append(
                f"{len(away)} instance(s) on host(s) not answering ({', '.join(sorted(hosts.in_grace))}) still counted "
                f"for their grace period of {self.host_failures.grace:g}s"
            )
        if hosts.lost:
            notes.append(f"host(s) {', '.join(sorted(hosts.lost))} lost: their instances are replaced on the others")
        if notes:
            result["reason"] = "; ".join([result["reason"], *notes])
        release = reads.release
        if release:
            result.update(release_phase=release["phase"], release_since=release["since"])
            if decision.action != "hold" or discard:
                result.update(
                    desired=decision.current,
                    action="hold",
                    replaced=[],
                    replacements_total=total - len(replaced),
                    reason=f"a blue/green release is in progress (phase {release['phase']}): holding; "
                    f"wanted {decision.desired} ({result['reason']})",
                )
                return result
        if check_mode or dry_run or control_error:
            return result

        health_state = {
            "critical_since": critical_since,
            "decided": decision.desired,
            "replacements_total": total,
            # The instances seen in the catalog (or registered now): one of them missing later was deregistered.
            "registered": sorted(i.id for i in instances if i.id in reads.health or i in unregistered),
        }
        stored = {**new_state.as_dict(), **health_state}
        target = max(decision.desired - len(away), 0)
        change = decision.action != "hold" or discard or drained or dead or unregistered or len(usable) < target
        if lock is None:
            if change:
                return None
            held.extend([(self._key(name, "state"), stored, index), (self._key(name, "last"), result, None)])
            return result
        # The cooldown is recorded before acting: a run that dies mid-change still counts as having scaled.
        lock.fence(f"recording the decision for {name}")
        if not self.registry.write_json(self._key(name, "state"), stored, cas=index):
            result["error"] = f"the scaling state of {name} changed under this run: nothing was changed"
            return result
        if change:
            image = usable[-1].image if usable else (instances[-1].image if instances else None)
            desired = Desired(
                spec=spec_of(definition, color, image),
                count=target,
                health=definition.get("health") or {},
                roll=False,
                discard=tuple(i.id for i in discard + drained),
                uncounted=tuple(i.id for i in uncounted),
                **options,
            )
            # The driver is shared by the cycle's services: what refused before this change is not this one's.
            known = {**hosts.in_grace, **hosts.lost, **driver.unavailable()}
            try:
                ServiceConverger(driver, self.registry, fence=lock.fence).converge(desired)
                result["applied"] = True
            except SkynetError as e:
                result["error"] = str(e)
            failed = {h: why for h, why in driver.unavailable().items() if h not in known}
            if failed:
                # Hosts (EC2 subnets) that refused a start in this change: what they refused started elsewhere.
                result["unavailable_hosts"] = {
                    **result.get("unavailable_hosts", {}),
                    **{h: {"reason": why, "failing_since": now, "lost": False} for h, why in sorted(failed.items())},
                }
        try:
            lock.fence(f"recording the outcome for {name}")
            if result["error"]:
                # A change that failed does not hold back the next attempt by a cooldown.
                health_state["decided"] = decided
                self.registry.write_json(self._key(name, "state"), {**state.as_dict(), **health_state})
            self.registry.write_json(self._key(name, "last"), result)
            if decision.action != "hold" or result["error"] or discard or drained or dead:
                history = self.registry.read_json(self._key(name, "history"), [])
                self.registry.write_json(self._key(name, "history"), [*history, result][-HISTORY:])
        except SkynetError as e:
            result["error"] = "; ".join(filter(None, [result["error"], str(e)]))
        return result
