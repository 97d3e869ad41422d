# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs blue/green releases: the state machine of _release driven against the real components.

Instances come from the compute driver through ServiceConverger, health from Consul, traffic is
moved by the HAProxy runtime API (map entries, no reload) on every node, analysis reads Prometheus.
The release record, the live color and the history live in Consul KV under
skynet/bluegreen/<service>/, where skynet_scale reads them; one run at a time holds a session lock
there, and a rollback or abort asked for by another controller reaches the running one through
the `request` key.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_runtime import is_up, write_map_file
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import convert_result, is_empty
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import service_id
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import Desired, ServiceConverger

try:
    import requests
except ImportError:  # pragma: no cover - py-consul, which every module needs, brings requests
    requests = None

PREFIX = "skynet/bluegreen"
SESSION_TTL = 30


class Interrupted(Exception):
    """A rollback or abort asked for by another controller while this run holds the release."""

    def __init__(self, kind, request):
        super().__init__(kind)
        self.kind, self.request = kind, request


class StepFailed(SkynetError):
    """A release step failed in a way the release undoes (health, analysis, a switch that was put back)."""


@dataclass
class HAProxyNode:
    runtime: object  # _haproxy_runtime.HAProxyRuntime
    map_dir: str
    persist: bool = True

    @property
    def name(self):
        return self.runtime.name

    def map_path(self, preview=False):
        return posixpath.join(self.map_dir, "preview.map" if preview else "live.map")

    def route(self, service, preview=False):
        """The backend the node's map sends service to, None when the map has no entry for it."""
        return self.runtime.get_map(self.map_path(preview), service)

    def set_route(self, service, color, preview=False):
        self.runtime.set_map(self.map_path(preview), service, rel.backend(service, color))

    def persist_route(self, service, color, preview=False):
        if self.persist:
            write_map_file(self.map_path(preview), service, rel.backend(service, color))

    def up(self, service, color, addresses):
        """(servers UP at the given host:port addresses, servers of the backend) on this node."""
        servers = self.runtime.servers(rel.backend(service, color))
        return len([s for s in servers if is_up(s) and s["address"] in addresses]), len(servers)


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
        return Spec(
            service=self.service,
            color=color,
            image=image or self.image,
            port=self.port,
            env=dict(self.env),
            command=tuple(self.command),
            memory=self.memory,
            cpus=self.cpus,
        )


class PreviewTraffic:
    """GET requests at a steady rate against the preview frontend, counting what fails."""

    def __init__(self, url, rate=5.0, timeout=5.0):
        self.url, self.interval, self.timeout = url, 1.0 / max(rate, 0.1), timeout
        self.ok, self.failed, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                answer = session.get(self.url, timeout=self.timeout)
                if answer.status_code < 400:
                    self.ok += 1
                else:
                    self._fail(f"HTTP {answer.status_code}")
            except requests.RequestException as e:
                self._fail(str(e))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _fail(self, why):
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(why)

    def start(self):
        if requests is None:
            raise SkynetError("the Python library requests is needed to send preview traffic")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 1)
        return {"url": self.url, "ok": self.ok, "failed": self.failed, "errors": self.errors}


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
    ):
        self.consul, self.registry, self.driver = consul, registry, driver
        self.nodes, self.prometheus = list(nodes), prometheus
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self._sid = None
        self._polled = 0.0
        self._keepalive = None
        self._service = None
        self._ran = []
        self._analysis = []
        self._switch_report = []
        self._preview = None

    # -- Consul KV -----------------------------------------------------------------------------

    def key(self, service, leaf):
        return f"{PREFIX}/{service}/{leaf}"

    def _delete(self, key):
        self.registry.call(f"delete {key}", self.consul.kv.delete, key)

    def _save(self, record):
        self.registry.write_json(self.key(record["service"], "release"), record)

    def _archive(self, record):
        history_key = self.key(record["service"], "history")
        self.registry.write_json(history_key, rel.with_history(self.registry.read_json(history_key, []), record))

    # -- lock, renewal and requests from other controllers -------------------------------------

    def _lock(self, service, wait, on_busy=None):
        sid = self.registry.call(
            "create a session",
            self.consul.session.create,
            name=f"skynet-bluegreen-{service}",
            ttl=SESSION_TTL,
            behavior="delete",
            lock_delay=0,
        )
        holder = {"session": sid, "host": socket.gethostname(), "since": self.clock()}
        deadline = self.monotonic() + wait
        busy_told = False
        while True:
            if self.registry.write_json(self.key(service, "lock"), holder, acquire=sid):
                self._sid = sid
                self._keep_alive(sid)
                return True
            if on_busy and not busy_told:
                on_busy()
                busy_told = True
            if self.monotonic() >= deadline:
                self.registry.call("destroy a session", self.consul.session.destroy, sid)
                return False
            self.sleep(0.25)

    def _keep_alive(self, sid):
        """Renews the session from a thread while the lock is held: deploys and drains can outlast its TTL."""
        stop = threading.Event()

        def renew():
            while not stop.wait(SESSION_TTL / 4):
                with contextlib.suppress(Exception):
                    self.consul.session.renew(sid)

        thread = threading.Thread(target=renew, name=f"skynet-bluegreen-{sid}", daemon=True)
        thread.start()
        self._keepalive = (stop, thread)

    def _unlock(self):
        if self._keepalive:
            stop, thread = self._keepalive
            stop.set()
            thread.join(5)
            self._keepalive = None
        if self._sid:
            sid, self._sid = self._sid, None
            self.registry.call("destroy a session", self.consul.session.destroy, sid)

    def _holder(self, service):
        holder = self.registry.read_json(self.key(service, "lock")) or {}
        if not isinstance(holder, dict) or not holder:
            return "another run"
        since = holder.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        return f"a run on {holder.get('host', '?')} (since {when})"

    def _tick(self):
        """Stops the release when another controller asked to."""
        if self._sid and self.monotonic() - self._polled >= 0.5:
            self._polled = self.monotonic()
            request = self.registry.read_json(self.key(self._service, "request"))
            if isinstance(request, dict) and request.get("kind") in ("rollback", "abort"):
                raise Interrupted(request["kind"], request)

    def _wait(self, seconds, interruptible=True):
        deadline = self.monotonic() + seconds
        while True:
            if interruptible:
                self._tick()
            left = deadline - self.monotonic()
            if left <= 0:
                return
            self.sleep(min(0.25, left))

    # -- reading the current state --------------------------------------------------------------

    def _routes(self, service, preview=False):
        """{node name: color} of every node; SkynetError when a node is unreachable or lacks the entry."""
        routes, errors = {}, []
        which = "preview map" if preview else "map"
        for node in self.nodes:
            try:
                value = node.route(service, preview)
            except SkynetError as e:
                errors.append(str(e))
                continue
            if value is None:
                errors.append(
                    f"HAProxy node {node.name} has no entry for {service} in its {which} {node.map_path(preview)}: "
                    f"its configuration does not route {service}"
                )
                continue
            color = rel.color_of(service, value)
            if color is None:
                errors.append(
                    f"HAProxy node {node.name} sends {service} to backend {value!r}, "
                    f"not {rel.backend(service, 'blue')} or {rel.backend(service, 'green')}"
                )
                continue
            routes[node.name] = color
        if errors:
            raise SkynetError("; ".join(errors) + "; nothing was changed")
        return routes

    def _live(self, service, routes):
        live = self.registry.read_json(self.key(service, "live"))
        if live in rel.COLORS:
            return live
        colors = set(routes.values())
        if len(colors) > 1:
            raise SkynetError(
                f"no live color of {service} is recorded in Consul and the HAProxy nodes disagree: "
                + ", ".join(f"{n} sends it to {c}" for n, c in sorted(routes.items()))
            )
        return colors.pop() if colors else "blue"

    def _running(self, service, color):
        return [i for i in self.driver.list(service, color) if i.state == "running"]

    # -- the run -----------------------------------------------------------------------------------

    def run(self, opts, state="released", check_mode=False):
        """The result of one invocation: plan, phases run, timings, live color; `failed` and `msg` on failure."""
        service = self._service = opts.service
        if state not in rel.STATES:
            raise SkynetError(f"state must be one of {', '.join(rel.STATES)}, not {state!r}")
        if not self.nodes:
            raise SkynetError("blue/green needs at least one HAProxy node (option haproxy) to move traffic")
        self.registry.check()
        if state == "released":
            self.driver.check(opts.spec("blue"))
        else:
            self.driver.check()
        plan, live = self._plan(opts, state)
        if plan.action in ("release", "resume") and (opts.pre.enabled or opts.post.enabled):
            self._check_prometheus()
        result = self._result(plan, live, changed=plan.changes)
        if check_mode or not plan.changes:
            return result

        asked = False

        def ask():
            nonlocal asked
            if state != "released":
                self.registry.write_json(
                    self.key(service, "request"),
                    {
                        "kind": "rollback" if state == "rolled_back" else "abort",
                        "by": socket.gethostname(),
                        "at": self.clock(),
                    },
                )
                asked = True

        if not self._lock(service, opts.lock_wait, on_busy=ask):
            if asked:
                raise SkynetError(
                    f"asked {self._holder(service)} to {'roll back' if state == 'rolled_back' else 'abort'} the "
                    f"release of {service}; it did not finish within lock_wait ({opts.lock_wait:g}s): look at "
                    f"{self.key(service, 'release')} in Consul"
                )
            raise SkynetError(
                f"{self._holder(service)} holds the release lock of {service} ({self.key(service, 'lock')}); "
                f"it was not released within lock_wait ({opts.lock_wait:g}s)"
            )
        try:
            before = plan.record.get("id") if plan.record else None
            plan, live = self._plan(opts, state)  # the record may have moved while this run waited
            if asked and not plan.changes:
                record = self.registry.read_json(self.key(service, "release")) or {}
                return {**self._result(plan, live, changed=record.get("id") == before), "release": record}
            self._delete(self.key(service, "request"))
            return self._execute(opts, plan, live)
        finally:
            self._unlock()

    def _plan(self, opts, state):
        service = opts.service
        record = self.registry.read_json(self.key(service, "release"))
        if record is not None and not isinstance(record, dict):
            record = None
        if state == "released":
            routes = self._routes(service)
            live = record["from"] if rel.in_progress(record) else self._live(service, routes)
            images = [i.image for i in self._running(service, live)]
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
                    self._routes(service, preview=True)
        else:
            live = self.registry.read_json(self.key(service, "live"))
            live = live if live in rel.COLORS else "blue"
            plan = rel.plan_undo("rollback" if state == "rolled_back" else "abort", service, record, live)
        return plan, live

    def _check_prometheus(self):
        if self.prometheus is None:
            raise SkynetError("pre_analysis or post_analysis has checks but no Prometheus is configured")
        self.prometheus.query("vector(1)")

    def _result(self, plan, live, changed):
        return {
            "changed": changed,
            "plan": plan.as_dict(),
            "live": live,
            "previous": live,
            "phases": list(self._ran),
            "timings": rel.timings(self._ran),
            "analysis": list(self._analysis),
            "nodes": list(self._switch_report),
            "release": plan.record or {},
            "preview": self._preview or {},
            "msg": plan.reason,
        }

    def _execute(self, opts, plan, live):
        service = opts.service
        if plan.action in ("rollback", "abort"):
            record = plan.record
            terminal = plan.terminal
            try:
                self._undo(opts, record, plan.action, terminal, f"{plan.action} asked for", plan.steps)
            except SkynetError as e:
                return self._failure(plan, live, record, str(e))
            return self._final(plan, live, record)

        if plan.action == "release":
            live_instances = self._running(service, live)
            record = rel.new_record(
                f"{int(self.clock())}-{uuid.uuid4().hex[:6]}",
                service,
                opts.image,
                opts.version or rel.version_of(opts.image),
                live,
                live_instances[-1].image if live_instances else None,
                plan.count,
                self.clock(),
            )
            record["keep_warm"] = opts.keep_warm
            self._save(record)
        else:
            record = plan.record
            record["error"] = None
        try:
            for step in plan.steps:
                getattr(self, f"_phase_{step}")(opts, record)
        except Interrupted as i:
            self._close_running(record, "interrupted", f"{i.kind} asked for")
            self._delete(self.key(service, "request"))
            terminal = "rolled_back" if i.kind == "rollback" else "aborted"
            try:
                self._undo(opts, record, i.kind, terminal, f"{i.kind} asked for by {i.request.get('by', '?')}")
            except SkynetError as e:
                return self._failure(plan, live, record, str(e))
            return self._final(plan, live, record)
        except SkynetError as e:
            self._close_running(record, "failed", str(e))
            phase = record["phase"]
            if phase == "retire":
                record["error"] = str(e)
                self._save(record)
                return self._failure(
                    plan,
                    live,
                    record,
                    f"{e}; {record['to']} is live and stays so: run the release again to finish retiring "
                    f"{record['from']}",
                )
            if phase == "switch" and not isinstance(e, StepFailed):
                record["error"] = str(e)
                self._save(record)
                return self._failure(plan, live, record, str(e))
            switched = record.get("switched")
            terminal = "rolled_back" if switched else "failed"
            try:
                self._undo(opts, record, "rollback", terminal, str(e))
            except SkynetError as undo_error:
                return self._failure(plan, live, record, f"{e}; undoing it failed too: {undo_error}")
            what = (
                f"rolled back automatically: {record['from']} is live again and {record['to']} was removed"
                if switched
                else f"{record['to']} was removed; {record['from']} was not touched and stays live"
            )
            return self._failure(
                plan, live, record, f"release of {service} to {record['image']} failed in phase {phase}: {e}; {what}"
            )
        rel.finish(record, "done", self.clock())
        self._save(record)
        self._archive(record)
        return self._final(plan, live, record)

    def _final(self, plan, live, record):
        result = self._result(plan, live, changed=True)
        now_live = self.registry.read_json(self.key(record["service"], "live"))
        result.update(live=now_live if now_live in rel.COLORS else live, release=record)
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
            self._close_running(record, "failed", msg)
            with contextlib.suppress(SkynetError):
                self._save(record)
        result = self._final(plan, live, record)
        result.update(failed=True, msg=msg)
        return result

    # -- phases --------------------------------------------------------------------------------

    def _step(self, record, phase):
        entry = rel.begin(record, phase, self.clock())
        self._save(record)
        self._ran.append(entry)
        return entry

    def _close_running(self, record, outcome, detail):
        for entry in record.get("phases", []):
            if entry.get("outcome") == "running":
                rel.end(record, entry, self.clock(), outcome, detail)

    def _done(self, record, entry, outcome="ok", detail=""):
        rel.end(record, entry, self.clock(), outcome, detail)
        self._save(record)

    def _converge(self, opts, color, count, image=None, drain_period=0.0, wait=False):
        desired = Desired(
            spec=opts.spec(color, image),
            count=count,
            state="present" if count else "absent",
            health=opts.health,
            tags=tuple(opts.tags),
            wait=wait,
            wait_timeout=opts.health_timeout,
            drain_period=drain_period,
            stop_timeout=opts.stop_timeout,
        )
        return ServiceConverger(self.driver, self.registry, sleep=self.sleep).converge(desired)

    def _remove_color(self, opts, color, drain_period, attempts=3):
        """Drains and removes every instance of a color, returns how many; a failed removal is tried twice more."""
        count = len(self.driver.list(opts.service, color))
        for attempt in range(attempts):
            try:
                self._converge(opts, color, 0, drain_period=drain_period if attempt == 0 else 0)
                return count
            except SkynetError:
                if attempt == attempts - 1:
                    raise
                self.sleep(1 + attempt)
        return count

    def _phase_deploy(self, opts, record):
        entry = self._step(record, "deploy")
        outcome = self._converge(opts, record["to"], record["count"])[0]
        self._done(
            record,
            entry,
            detail=f"{record['to']}: {len(outcome.created)} started, {len(outcome.removed)} removed, "
            f"{record['count']} running {record['image']}",
        )

    def _phase_verify(self, opts, record):
        entry = self._step(record, "verify")
        service, color = record["service"], record["to"]
        deadline = self.monotonic() + opts.health_timeout
        instances = self._running(service, color)
        self._wait_passing(service, color, instances, deadline, opts.health_timeout)
        self._wait_backends(service, color, instances, max(deadline, self.monotonic() + 10))
        details = [f"{len(instances)} instance(s) passing in Consul and UP on {len(self.nodes)} HAProxy node(s)"]
        if opts.preview.get("enabled"):
            self._route_all(service, color, preview=True)
            details.append("preview map points at " + color)
        traffic = None
        if opts.preview.get("url"):
            traffic = PreviewTraffic(opts.preview["url"], opts.preview.get("rate") or 5).start()
        try:
            started = self.monotonic()
            self._analyse("pre-promotion", opts.pre, record)
            if traffic:
                self._wait(max(0.0, (opts.preview.get("duration") or 0) - (self.monotonic() - started)))
        finally:
            if traffic:
                self._preview = traffic.stop()
        if traffic:
            allowed = opts.preview.get("max_failures") or 0
            details.append(f"preview traffic: {self._preview['ok']} ok, {self._preview['failed']} failed")
            if self._preview["failed"] > allowed:
                raise StepFailed(
                    f"{self._preview['failed']} preview request(s) to {self._preview['url']} failed "
                    f"(max_failures {allowed}): {'; '.join(self._preview['errors'])}"
                )
        if opts.pre.enabled:
            details.append(f"pre-promotion analysis passed for {opts.pre.duration:g}s")
        self._done(record, entry, detail="; ".join(details))

    def _phase_switch(self, opts, record):
        entry = self._step(record, "switch")
        service, old, new = record["service"], record["from"], record["to"]
        resumed = record.get("switched")  # an earlier run may have left nodes on the new color
        record["switched"] = True  # from here on traffic may reach the new color
        self._save(record)
        started = self.monotonic()
        self._switch_report = report = []
        switched, failure = [], None
        for node in self.nodes:
            try:
                node.set_route(service, new)
            except SkynetError as e:
                failure = e
                report.append({"name": node.name, "switched": False, "error": str(e)})
                break
            switched.append(node)
            report.append({"name": node.name, "switched": True, "error": None})
        switch_seconds = round(self.monotonic() - started, 4)
        if failure is None:
            for node in self.nodes:
                try:
                    node.persist_route(service, new)
                except SkynetError as e:
                    failure = e
                    break
        if failure is not None:
            put_back, stuck = self._route_nodes(self.nodes if resumed else switched, service, old)
            for item in report:
                if item["name"] in put_back:
                    item.update(switched=False, put_back=True)
            if stuck:
                record["error"] = f"switch failed: {failure}; could not put back: {'; '.join(stuck)}"
                self._save(record)
                raise SkynetError(
                    f"switching {service} to {new} failed: {failure}. Putting back {old} failed on "
                    f"{'; '.join(stuck)}: those nodes may still send {service} to {new}, so {new} was kept running. "
                    "Run the release again, or with state=rolled_back, once the nodes answer"
                )
            record["switched"] = False
            self._done(record, entry, "failed", str(failure))
            back = f"{', '.join(put_back)} put back to {old}" if put_back else "no node had been switched"
            raise StepFailed(f"switch failed: {failure}; {back}")
        self.registry.write_json(self.key(service, "live"), new)
        record["switch_seconds"] = switch_seconds
        details = [
            f"{len(self.nodes)} HAProxy node(s) send {service} to {new} (map change {switch_seconds * 1000:.1f} ms)",
            *self._sync_preview(service, new),
        ]
        self._done(record, entry, detail="; ".join(details))

    def _phase_watch(self, opts, record):
        entry = self._step(record, "watch")
        if not opts.post.enabled:
            self._done(record, entry, "skipped", "no post_analysis checks")
            return
        self._analyse("post-promotion", opts.post, record)
        self._done(record, entry, detail=f"post-promotion analysis passed for {opts.post.duration:g}s")

    def _phase_retire(self, opts, record):
        entry = self._step(record, "retire")
        self._wait(opts.scale_down_delay)
        if record.get("keep_warm", opts.keep_warm):
            self._done(record, entry, detail=f"{record['from']} kept warm for an instant rollback")
            return
        removed = self._remove_color(opts, record["from"], opts.drain_period)
        self._done(record, entry, detail=f"{record['from']}: {removed} drained and stopped")

    # -- undoing -------------------------------------------------------------------------------

    def _undo(self, opts, record, kind, terminal, reason, steps=None):
        steps = steps or rel.undo_steps(record)
        record["undo_reason"] = reason
        entry = self._step(record, kind)
        service, old, new = record["service"], record["from"], record["to"]
        done = []
        if "restore" in steps and record.get("from_image"):
            restored = self._restore(opts, record)
            done.append(f"{old}: {restored}")
        if "switch_back" in steps:
            put_back, stuck = self._route_nodes(self.nodes, service, old)
            if stuck:
                record["error"] = f"could not put back {old} on {'; '.join(stuck)}"
                self._done(record, entry, "failed", record["error"])
                raise SkynetError(
                    f"{reason}; putting {service} back on {old} failed on {'; '.join(stuck)}: {new} is kept running "
                    f"for those nodes; run again with state={'aborted' if kind == 'abort' else 'rolled_back'} "
                    "once they answer"
                )
            self.registry.write_json(self.key(service, "live"), old)
            record["switched"] = False
            done.append(f"{len(put_back)} HAProxy node(s) send {service} to {old}")
            done.extend(self._sync_preview(service, old))
        drain = opts.drain_period if "switch_back" in steps else 0
        removed = self._remove_color(opts, new, drain)
        done.append(f"{new}: {removed} removed")
        self._done(record, entry, detail="; ".join(done))
        rel.finish(record, terminal, self.clock(), error=None if terminal != "failed" else reason)
        self._save(record)
        self._archive(record)

    def _restore(self, opts, record):
        """Brings the old color back to the release's count (after retire it is started again) and waits for it."""
        service, old = record["service"], record["from"]
        for inst in self._running(service, old):
            self.registry.call(
                f"end the maintenance of {service_id(inst)}",
                self.consul.agent.service.maintenance,
                service_id(inst),
                "false",
            )
        outcome = self._converge(opts, old, record["count"], image=record["from_image"])[0]
        instances = self._running(service, old)
        deadline = self.monotonic() + opts.health_timeout
        self._wait_passing(service, old, instances, deadline, opts.health_timeout, interruptible=False)
        self._wait_backends(
            service, old, instances, self.monotonic() + opts.health_timeout, interruptible=False, lenient=True
        )
        if outcome.created:
            return f"{len(outcome.created)} started again from {record['from_image']}"
        return f"{len(instances)} still running"

    def _route_nodes(self, nodes, service, color, preview=False):
        """Points nodes at color (runtime and map file); returns (names done, failures)."""
        done, stuck = [], []
        for node in nodes:
            try:
                node.set_route(service, color, preview)
                node.persist_route(service, color, preview)
                done.append(node.name)
            except SkynetError as e:
                stuck.append(f"{node.name}: {e}")
        return done, stuck

    def _sync_preview(self, service, live):
        """Points the preview maps that route service at the idle color, as the HAProxy role renders them.

        A failure here leaves the live traffic as it is: it is reported, not raised.
        """
        idle, notes = rel.other(live), []
        for node in self.nodes:
            try:
                if node.map_path(preview=True) not in node.runtime.maps():
                    continue
                if node.route(service, preview=True) not in (None, rel.backend(service, idle)):
                    node.set_route(service, idle, preview=True)
                    node.persist_route(service, idle, preview=True)
            except SkynetError as e:
                notes.append(f"preview map of {node.name} not moved to {idle}: {e}")
        return notes

    def _route_all(self, service, color, preview=False):
        done, stuck = self._route_nodes(self.nodes, service, color, preview)
        if stuck:
            raise StepFailed(f"pointing the {'preview ' if preview else ''}map at {color} failed: {'; '.join(stuck)}")
        return done

    # -- waiting for health ----------------------------------------------------------------------

    def _wait_passing(self, service, color, instances, deadline, timeout, interruptible=True):
        ids = [i.id for i in instances]
        while True:
            statuses = self.registry.statuses(service)
            waiting = [i for i in ids if statuses.get(i) != "passing"]
            if not waiting:
                return
            if self.monotonic() >= deadline:
                raise StepFailed(
                    f"{len(waiting)} of {len(ids)} instance(s) of {service} ({color}: {', '.join(waiting)}) did not "
                    f"pass their health check within health_timeout ({timeout:g}s)"
                )
            self._wait(0.5, interruptible)

    def _wait_backends(self, service, color, instances, deadline, interruptible=True, lenient=False):
        """Waits until every HAProxy node has every instance UP in the color's backend."""
        addresses = {f"{i.address}:{i.port}" for i in instances}
        while True:
            lagging = []
            for node in self.nodes:
                try:
                    up, slots = node.up(service, color, addresses)
                except SkynetError as e:
                    if lenient:
                        continue
                    raise StepFailed(str(e)) from e
                if up < len(addresses):
                    hint = f" (its server-template has only {slots} slots)" if slots < len(addresses) else ""
                    lagging.append(
                        f"{node.name} has {up} of {len(addresses)} UP in {rel.backend(service, color)}{hint}"
                    )
            if not lagging:
                return
            if self.monotonic() >= deadline:
                if lenient:
                    return
                raise StepFailed("HAProxy does not see the new instances: " + "; ".join(lagging))
            self._wait(0.5, interruptible)

    # -- analysis --------------------------------------------------------------------------------

    def _sample(self, query):
        """(value or None, None) or (None, why the query cannot be evaluated)."""
        try:
            data = self.prometheus.query(query)
            if is_empty(data):
                return None, None
            value = convert_result(data, "scalar")
        except SkynetError as e:
            return None, str(e)
        if isinstance(value, str):
            return None, f"it returned a string ({value!r}), not a number"
        return (None if math.isnan(value) else value), None

    def _analyse(self, which, analysis, record):
        if not analysis.enabled:
            return
        service, color, previous = record["service"], record["to"], record["from"]
        results = {
            c.name: {
                "phase": which,
                "name": c.name,
                "query": rel.substitute(c.query, service, color, previous),
                "min": c.min,
                "max": c.max,
                "samples": 0,
                "last": None,
                "passed": None,
                "reason": "",
            }
            for c in analysis.checks
        }
        self._analysis.extend(results.values())
        deadline = self.monotonic() + analysis.duration
        while True:
            for check in analysis.checks:
                result = results[check.name]
                value, error = self._sample(result["query"])
                result["samples"] += 1
                result["last"] = value
                if error:
                    result.update(passed=False, reason=f"cannot be evaluated: {error}")
                    raise StepFailed(
                        f"{which} analysis: check {check.name}: the query {result['query']!r} cannot be evaluated, "
                        f"which counts as a failure: {error}"
                    )
                ok, why = rel.judge(check, value)
                result["reason"] = why
                if not ok:
                    result["passed"] = False
                    raise StepFailed(f"{which} analysis failed: check {check.name} ({result['query']}): {why}")
            left = deadline - self.monotonic()
            if left <= 0:
                break
            self._wait(min(analysis.interval, left))
        for result in results.values():
            result["passed"] = True
