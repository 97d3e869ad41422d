# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs blue/green releases: the state machine of _release driven against the real components.

A run plans from the release record in Consul KV and what HAProxy serves, takes the service's
lock (the one skynet_scale takes, skynet/lock/<service>), plans again and runs the phases. The
parts live apart: records in KV (_bluegreen_records), routing over the HAProxy nodes
(_bluegreen_routing), waits (_bluegreen_waits), analysis (_bluegreen_analysis) and the phases
(_bluegreen_phases). A rollback or abort asked for by another controller reaches the running
release through the `request` key.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_analysis import Analyser
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_phases import Phases
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_records import PREFIX, ReleaseStore
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_routing import HAProxyNode, Router
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_waits import Interrupted, StepFailed, Waiter
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LOCK_PREFIX, LockLost, ServiceLock

__all__ = ("PREFIX", "BlueGreen", "HAProxyNode", "Interrupted", "ReleaseOptions", "StepFailed")


@dataclass
class ReleaseOptions:
    service: str
    image: str = ""
    version: str = ""
    count: int | None = None
    port: int = 8080
    env: dict = field(default_factory=dict)
    command: tuple = ()
    memory: str = ""
    cpus: float = 0.0
    health: dict = field(default_factory=dict)
    tags: tuple = ()
    health_timeout: float = 120
    preview: dict = field(default_factory=dict)  # enabled, url, rate, duration, max_failures
    pre: rel.Analysis = field(default_factory=rel.Analysis)
    post: rel.Analysis = field(default_factory=rel.Analysis)
    scale_down_delay: float = 30
    keep_warm: bool = False
    drain_period: float = 5
    stop_timeout: int = 10
    lock_wait: float = 30

    def spec(self, color, image=None):
        return make_spec(
            self.service, color, image or self.image, self.port, self.env, self.command, self.memory, self.cpus
        )


def assemble(opts, registry, driver, nodes, prometheus, clock, monotonic, sleep, lock=None):
    """The parts of one run of a release of opts.service; every change is fenced by lock when given."""
    store = ReleaseStore(registry, opts.service)
    router = Router(nodes, opts.service, monotonic)
    waiter = Waiter(registry, store, nodes, lock, monotonic, sleep)
    analyser = Analyser(prometheus, waiter, monotonic)
    fence = lock.fence if lock else (lambda before: None)
    return Phases(opts, driver, registry, store, router, waiter, analyser, clock, sleep, fence=fence)


class BlueGreen:
    def __init__(
        self,
        consul,
        registry,
        driver,
        nodes,
        prometheus=None,
        clock=time.time,
        monotonic=time.monotonic,
        sleep=time.sleep,
        lock_prefix=LOCK_PREFIX,
        make_lock=None,
    ):
        self.consul, self.registry, self.driver = consul, registry, driver
        self.nodes, self.prometheus = list(nodes), prometheus
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.make_lock = make_lock or (lambda service: ServiceLock(registry, service, "release", prefix=lock_prefix))
        self.phases = None

    def _parts(self, opts, lock=None):
        self.phases = assemble(
            opts, self.registry, self.driver, self.nodes, self.prometheus, self.clock, self.monotonic, self.sleep, lock
        )
        return self.phases

    # -- the run -----------------------------------------------------------------------------------

    def run(self, opts, state="released", check_mode=False):
        """The result of one invocation: plan, phases run, timings, live color; `failed` and `msg` on failure."""
        service = opts.service
        if state not in rel.STATES:
            raise SkynetError(f"state must be one of {', '.join(rel.STATES)}, not {state!r}")
        if not self.nodes:
            raise SkynetError("blue/green needs at least one HAProxy node (option haproxy) to move traffic")
        self.registry.check()
        self.driver.check(opts.spec("blue") if state == "released" else None)
        parts = self._parts(opts)
        plan, live = self._plan(opts, state)
        if plan.action in ("release", "resume") and (opts.pre.enabled or opts.post.enabled):
            parts.analyser.check()
        if check_mode or not plan.changes:
            return self._result(plan, live, changed=plan.changes)

        kind = "rollback" if state == "rolled_back" else "abort"
        asked = False

        def ask():
            nonlocal asked
            if state != "released":
                parts.store.ask(kind, socket.gethostname(), self.clock())
                asked = True

        lock = self.make_lock(service)
        if not lock.acquire(opts.lock_wait, on_busy=ask):
            holder = lock.holder()
            if asked and holder.startswith("a release"):  # a scale cycle does not read requests: it just ends
                raise SkynetError(
                    f"asked {holder} to {'roll back' if kind == 'rollback' else 'abort'} the release of "
                    f"{service}; it did not finish within lock_wait ({opts.lock_wait:g}s): look at "
                    f"{parts.store.key('release')} in Consul"
                )
            raise SkynetError(
                f"{holder} holds the lock of {service} ({lock.key}); it was not released within "
                f"lock_wait ({opts.lock_wait:g}s)"
            )
        try:
            parts = self._parts(opts, lock)
            before = plan.record.get("id") if plan.record else None
            plan, live = self._plan(opts, state)  # the record may have moved while this run waited
            if asked and not plan.changes:
                record = parts.store.record() or {}
                result = {**self._result(plan, live, changed=record.get("id") == before), "release": record}
            else:
                parts.store.clear_request()
                result = self._execute(opts, plan, live)
        finally:
            # A lock that cannot be given back ends with its session's TTL; it never hides the result.
            problem = lock.release()
        if problem:
            result.setdefault("warnings", []).append(f"the lock of {service} was not released cleanly: {problem}")
        return result

    def _plan(self, opts, state):
        service, store, router = opts.service, self.phases.store, self.phases.router
        record = store.record()
        if state != "released":
            live = store.live() or "blue"
            return rel.plan_undo("rollback" if state == "rolled_back" else "abort", service, record, live), live
        routes = router.routes()
        live = record["from"] if rel.in_progress(record) else router.agreed_live(store.live(), routes)
        images = [i.image for i in self.phases.running(live)]
        plan = rel.plan_release(service, record, live, images, opts.image, opts.count)
        if plan.action == "release":
            wrong = sorted(n for n, c in routes.items() if c != live)
            if wrong:
                raise SkynetError(
                    f"the live color of {service} is {live} but HAProxy node(s) {', '.join(wrong)} send it to "
                    f"{rel.other(live)}: put them straight (state=rolled_back undoes the last release) before "
                    "releasing; nothing was changed"
                )
            if opts.preview.get("enabled"):
                router.routes(preview=True)
        return plan, live

    def _result(self, plan, live, changed):
        p = self.phases
        return {
            "changed": changed,
            "plan": plan.as_dict(),
            "live": live,
            "previous": live,
            "phases": list(p.ran),
            "timings": rel.timings(p.ran),
            "analysis": list(p.analyser.results),
            "nodes": list(p.nodes),
            "release": plan.record or {},
            "preview": p.preview or {},
            "msg": plan.reason,
        }

    # -- executing the plan ------------------------------------------------------------------------

    def _execute(self, opts, plan, live):
        p = self.phases
        if plan.action == "release":
            live_instances = p.running(live)
            record = rel.new_record(
                f"{int(self.clock())}-{uuid.uuid4().hex[:6]}",
                opts.service,
                opts.image,
                opts.version or rel.version_of(opts.image),
                live,
                live_instances[-1].image if live_instances else None,
                plan.count,
                self.clock(),
            )
            record["keep_warm"] = opts.keep_warm
            p.store.save(record)
        else:
            record = plan.record
            record.pop("stopped", None)
            if plan.action == "resume":
                record["error"] = None
        try:
            if plan.action in ("rollback", "abort"):
                try:
                    p.undo(record, plan.action, plan.terminal, f"{plan.action} asked for", plan.steps)
                except LockLost:
                    raise
                except SkynetError as e:
                    return self._failure(plan, live, record, str(e))
                return self._final(plan, live, record)
            return self._phases(opts, plan, live, record)
        except LockLost as e:
            return self._stopped(plan, live, record, e)

    def _phases(self, opts, plan, live, record):
        p = self.phases
        try:
            for step in plan.steps:
                getattr(p, step)(record)
        except Interrupted as i:
            p.close_running(record, "interrupted", f"{i.kind} asked for")
            p.store.clear_request()
            terminal = "rolled_back" if i.kind == "rollback" else "aborted"
            try:
                p.undo(record, i.kind, terminal, f"{i.kind} asked for by {i.request.get('by', '?')}")
            except LockLost:
                raise
            except SkynetError as e:
                return self._failure(plan, live, record, str(e))
            return self._final(plan, live, record)
        except LockLost:
            raise
        except SkynetError as e:
            return self._undo_failed_step(plan, live, record, e)
        rel.finish(record, "done", self.clock())
        p.store.save(record)
        p.store.archive(record)
        return self._final(plan, live, record)

    def _undo_failed_step(self, plan, live, record, e):
        p = self.phases
        p.close_running(record, "failed", str(e))
        phase = record["phase"]
        if phase == "retire":
            record["error"] = str(e)
            p.store.save(record)
            return self._failure(
                plan,
                live,
                record,
                f"{e}; {record['to']} is live and stays so: run the release again to finish retiring {record['from']}",
            )
        if phase == "switch" and not isinstance(e, StepFailed):
            record["error"] = str(e)
            p.store.save(record)
            return self._failure(plan, live, record, str(e))
        switched = record.get("switched")
        try:
            p.undo(record, "rollback", "rolled_back" if switched else "failed", str(e))
        except LockLost:
            raise
        except SkynetError as undo_error:
            return self._failure(plan, live, record, f"{e}; undoing it failed too: {undo_error}")
        what = (
            f"rolled back automatically: {record['from']} is live again and {record['to']} was removed"
            if switched
            else f"{record['to']} was removed; {record['from']} was not touched and stays live"
        )
        return self._failure(
            plan,
            live,
            record,
            f"release of {record['service']} to {record['image']} failed in phase {phase}: {e}; {what}",
        )

    def _stopped(self, plan, live, record, lost):
        """The release lost its lock: it stops where it is and, if nobody else changed it, records so."""
        p = self.phases
        p.close_running(record, "stopped", str(lost))
        phase = record["phase"]
        record.update(error=str(lost), stopped={"phase": phase, "at": self.clock(), "reason": str(lost)})
        try:
            written = p.store.save_if_unchanged(record)
        except SkynetError as e:
            written, record["stopped"]["not_recorded"] = False, str(e)
        if phase in rel.UNDOING:
            then = f"run again with state={'rolled_back' if phase == 'rollback' else 'aborted'} to finish it"
        else:
            then = "run it again to resume it, or with state=rolled_back to undo it"
        where = (
            f"{p.store.key('release')} records it"
            if written
            else f"{p.store.key('release')} was changed by another run and is left as it is"
        )
        release = f"the release of {record['service']} to {record['image']}"
        msg = f"{lost}; {release} stopped in phase {phase} ({where}): {then}"
        result = self._final(plan, live, record)
        result.update(failed=True, msg=msg)
        return result

    def _final(self, plan, live, record):
        result = self._result(plan, live, changed=True)
        try:
            now_live = self.phases.store.live()
        except SkynetError:
            now_live = None
        result.update(live=now_live or live, release=record)
        if record["phase"] == "done":
            result["msg"] = f"{record['service']} runs {record['image']} on {record['to']}, live"
        elif record["phase"] in ("rolled_back", "aborted"):
            result["msg"] = (
                f"release of {record['service']} to {record['image']} {record['phase'].replace('_', ' ')}: "
                f"{record['from']} is live"
            )
        return result

    def _failure(self, plan, live, record, msg):
        if any(e.get("outcome") == "running" for e in record.get("phases", [])):
            self.phases.close_running(record, "failed", msg)
            with contextlib.suppress(SkynetError):
                self.phases.store.save(record)
        result = self._final(plan, live, record)
        result.update(failed=True, msg=msg)
        return result
