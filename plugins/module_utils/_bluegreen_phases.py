# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phases of a release and of its undoing, each a change of the real components recorded as it goes.

Every change another holder of the service's lock could contradict is fenced first: each converge
(before every create, drain and remove), the switch (before the first node), each undo step and
the retire. A lost lock raises LockLost there, which stops the release where it is.
"""

from __future__ import annotations

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_analysis import PreviewTraffic
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_waits import StepFailed
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LockLost
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import service_id
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import Desired, ServiceConverger


def _no_fence(before):
    return None


class Phases:
    def __init__(self, opts, driver, registry, store, router, waiter, analyser, clock, sleep, fence=_no_fence):
        self.opts, self.driver, self.registry, self.store = opts, driver, registry, store
        self.router, self.waiter, self.analyser = router, waiter, analyser
        self.clock, self.sleep, self.fence = clock, sleep, fence
        self.service = opts.service
        self.ran, self.nodes, self.preview = [], [], None

    # -- the record ------------------------------------------------------------------------------

    def step(self, record, phase):
        entry = rel.begin(record, phase, self.clock())
        self.store.save(record)
        self.ran.append(entry)
        return entry

    def done(self, record, entry, outcome="ok", detail=""):
        rel.end(record, entry, self.clock(), outcome, detail)
        self.store.save(record)

    def close_running(self, record, outcome, detail):
        for entry in record.get("phases", []):
            if entry.get("outcome") == "running":
                rel.end(record, entry, self.clock(), outcome, detail)

    # -- instances -------------------------------------------------------------------------------

    def running(self, color):
        return [i for i in self.driver.list(self.service, color) if i.state == "running"]

    def converge(self, color, count, image=None, drain_period=0.0):
        opts = self.opts
        desired = Desired(
            spec=opts.spec(color, image),
            count=count,
            state="present" if count else "absent",
            health=opts.health,
            tags=tuple(opts.tags),
            wait=False,
            wait_timeout=opts.health_timeout,
            drain_period=drain_period,
            stop_timeout=opts.stop_timeout,
        )
        return ServiceConverger(self.driver, self.registry, sleep=self.sleep, fence=self.fence).converge(desired)

    def remove_color(self, color, drain_period, attempts=3):
        """Drains and removes every instance of a color, returns how many; a failed removal is tried twice more."""
        count = len(self.driver.list(self.service, color))
        for attempt in range(attempts):
            try:
                self.converge(color, 0, drain_period=drain_period if attempt == 0 else 0)
                return count
            except LockLost:
                raise
            except SkynetError:
                if attempt == attempts - 1:
                    raise
                self.sleep(1 + attempt)
        return count

    # -- the release -----------------------------------------------------------------------------

    def deploy(self, record):
        entry = self.step(record, "deploy")
        outcome = self.converge(record["to"], record["count"])[0]
        self.done(
            record,
            entry,
            detail=f"{record['to']}: {len(outcome.created)} started, {len(outcome.removed)} removed, "
            f"{record['count']} running {record['image']}",
        )

    def verify(self, record):
        opts, entry, color = self.opts, self.step(record, "verify"), record["to"]
        started = self.waiter.monotonic()
        instances = self.running(color)
        self.waiter.passing(self.service, color, instances, opts.health_timeout)
        left = opts.health_timeout - (self.waiter.monotonic() - started)
        self.waiter.backends(self.service, color, instances, max(left, 10))
        details = [f"{len(instances)} instance(s) passing in Consul and UP on {len(self.router.nodes)} HAProxy node(s)"]
        if opts.preview.get("enabled"):
            stuck = self.router.point_preview(color)
            if stuck:
                raise StepFailed(f"pointing the preview map at {color} failed: {'; '.join(stuck)}")
            details.append("preview map points at " + color)
        traffic = None
        if opts.preview.get("url"):
            traffic = PreviewTraffic(opts.preview["url"], opts.preview.get("rate") or 5).start()
        try:
            started = self.waiter.monotonic()
            self.analyser.run("pre-promotion", opts.pre, self.service, color, record["from"])
            if traffic:
                self.waiter.wait(max(0.0, (opts.preview.get("duration") or 0) - (self.waiter.monotonic() - started)))
        finally:
            if traffic:
                self.preview = traffic.stop()
        if traffic:
            allowed = opts.preview.get("max_failures") or 0
            details.append(f"preview traffic: {self.preview['ok']} ok, {self.preview['failed']} failed")
            if self.preview["failed"] > allowed:
                raise StepFailed(
                    f"{self.preview['failed']} preview request(s) to {self.preview['url']} failed "
                    f"(max_failures {allowed}): {'; '.join(self.preview['errors'])}"
                )
        if opts.pre.enabled:
            details.append(f"pre-promotion analysis passed for {opts.pre.duration:g}s")
        self.done(record, entry, detail="; ".join(details))

    def switch(self, record):
        old, new = record["from"], record["to"]
        self.fence(f"switching {self.service} to {new}")
        entry = self.step(record, "switch")
        resumed = record.get("switched")  # an earlier run may have left nodes on the new color
        record["switched"] = True  # from here on traffic may reach the new color
        self.store.save(record)
        self.nodes, seconds, ok = self.router.switch(old, new, unchanged_is_old=not resumed)
        if not ok:
            failure = "; ".join(n["error"] for n in self.nodes if n["error"]) or "a node did not switch"
            self.nodes, stuck = self.router.put_back(old, self.nodes)
            if stuck:
                record["error"] = f"switch failed: {failure}; could not put back: {'; '.join(stuck)}"
                self.store.save(record)
                raise SkynetError(
                    f"switching {self.service} to {new} failed: {failure}. Putting back {old} failed on "
                    f"{'; '.join(stuck)}: those nodes may still send {self.service} to {new}, so {new} was kept "
                    "running. Run the release again, or with state=rolled_back, once the nodes answer"
                )
            record["switched"] = False
            self.done(record, entry, "failed", failure)
            put_back = [n["name"] for n in self.nodes if n.get("put_back")]
            back = f"{', '.join(put_back)} put back to {old}" if put_back else "no node had been switched"
            raise StepFailed(f"switch failed: {failure}; {back} (read back: {self.served()})")
        self.store.set_live(new)
        record["switch_seconds"] = seconds
        details = [
            f"{len(self.nodes)} HAProxy node(s) send {self.service} to {new}, read back "
            f"(map change {seconds * 1000:.1f} ms)",
            *[f"{n['name']}: {n['note']}" for n in self.nodes if n.get("note")],
            *self.router.sync_preview(new),
        ]
        self.done(record, entry, detail="; ".join(details))

    def served(self):
        return ", ".join(f"{n['name']} serves {n['serves'] or 'an unknown color'}" for n in self.nodes)

    def watch(self, record):
        entry = self.step(record, "watch")
        if not self.opts.post.enabled:
            self.done(record, entry, "skipped", "no post_analysis checks")
            return
        self.analyser.run("post-promotion", self.opts.post, self.service, record["to"], record["from"])
        self.done(record, entry, detail=f"post-promotion analysis passed for {self.opts.post.duration:g}s")

    def retire(self, record):
        entry = self.step(record, "retire")
        self.waiter.wait(self.opts.scale_down_delay)
        if record.get("keep_warm", self.opts.keep_warm):
            self.done(record, entry, detail=f"{record['from']} kept warm for an instant rollback")
            return
        self.fence(f"retiring {record['from']}")
        removed = self.remove_color(record["from"], self.opts.drain_period)
        self.done(record, entry, detail=f"{record['from']}: {removed} drained and stopped")

    # -- undoing ---------------------------------------------------------------------------------

    def undo(self, record, kind, terminal, reason, steps=None):
        steps = steps or rel.undo_steps(record)
        record["undo_reason"] = reason
        entry = self.step(record, kind)
        old, new = record["from"], record["to"]
        done = []
        if "restore" in steps and record.get("from_image"):
            self.fence(f"starting {old} again")
            done.append(f"{old}: {self.restore(record)}")
        if "switch_back" in steps:
            self.fence(f"putting {self.service} back on {old}")
            self.nodes, stuck = self.router.put_back(old)
            if stuck:
                record["error"] = f"could not put back {old} on {'; '.join(stuck)}"
                self.done(record, entry, "failed", record["error"])
                raise SkynetError(
                    f"{reason}; putting {self.service} back on {old} failed on {'; '.join(stuck)}: {new} is kept "
                    f"running for those nodes; run again with state={'aborted' if kind == 'abort' else 'rolled_back'} "
                    "once they answer"
                )
            self.store.set_live(old)
            record["switched"] = False
            done.append(f"{len(self.nodes)} HAProxy node(s) send {self.service} to {old}, read back")
            done.extend(self.router.sync_preview(old))
        self.fence(f"removing {new}")
        drain = self.opts.drain_period if "switch_back" in steps else 0
        done.append(f"{new}: {self.remove_color(new, drain)} removed")
        self.done(record, entry, detail="; ".join(done))
        rel.finish(record, terminal, self.clock(), error=None if terminal != "failed" else reason)
        self.store.save(record)
        self.store.archive(record)

    def restore(self, record):
        """Brings the old color back to the release's count (after retire it is started again) and waits for it."""
        old, timeout = record["from"], self.opts.health_timeout
        for inst in self.running(old):
            self.registry.call(
                f"end the maintenance of {service_id(inst)}",
                self.registry.client.agent.service.maintenance,
                service_id(inst),
                "false",
            )
        outcome = self.converge(old, record["count"], image=record["from_image"])[0]
        instances = self.running(old)
        self.waiter.passing(self.service, old, instances, timeout, interruptible=False)
        self.waiter.backends(self.service, old, instances, timeout, interruptible=False, lenient=True)
        if outcome.created:
            return f"{len(outcome.created)} started again from {record['from_image']}"
        return f"{len(instances)} still running"
