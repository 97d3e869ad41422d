# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lock per service, taken by everything that changes the service: scale cycles, releases.

The lock is a Consul KV key held by a session with a TTL. While held, a thread renews the
session, so a change that outlasts the TTL keeps it. A holder calls fence() before each change
that another holder could contradict: it fails once the session is gone (destroyed, expired,
Consul restarted), so a holder that lost the lock stops before acting on it. The session's
lock-delay keeps the key of a holder that crashed from being taken at once, while a holder that
ends normally releases the key first, which Consul does not delay.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

LOCK_PREFIX = "skynet/lock"
SESSION_TTL = 15
LOCK_DELAY = 15


class LockLost(SkynetError):
    """The holder's session is gone: another run may hold the lock now."""


class ServiceLock:
    def __init__(
        self,
        registry,
        service,
        purpose,
        ttl=SESSION_TTL,
        lock_delay=LOCK_DELAY,
        prefix=LOCK_PREFIX,
        clock=time.time,
        monotonic=time.monotonic,
        sleep=time.sleep,
    ):
        self.registry, self.consul = registry, registry.client
        self.service, self.purpose = service, purpose
        self.ttl, self.lock_delay = ttl, lock_delay
        self.key = f"{prefix.rstrip('/')}/{service}"
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.session = None
        self._lost = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread = None

    # -- taking and giving back ------------------------------------------------------------

    def acquire(self, wait=0.0, on_busy=None):
        """True once held; False when another holder kept it for `wait` seconds. on_busy runs once if busy."""
        sid = self.registry.call(
            f"create a session for the lock of {self.service}",
            self.consul.session.create,
            name=f"skynet-{self.purpose}-{self.service}",
            ttl=self.ttl,
            behavior="release",
            lock_delay=self.lock_delay,
        )
        value = json.dumps(
            {
                "session": sid,
                "purpose": self.purpose,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": self.clock(),
            }
        )
        deadline = self.monotonic() + wait
        renewed = self.monotonic()
        told = False
        try:
            while True:
                if self.registry.call(f"lock {self.service}", self.consul.kv.put, self.key, value, acquire=sid):
                    break
                if on_busy and not told:
                    on_busy()
                    told = True
                if self.monotonic() >= deadline:
                    self._destroy(sid)
                    return False
                if self.monotonic() - renewed >= self.ttl / 3:  # a long wait must not outlive the session
                    self.registry.call("renew a session", self.consul.session.renew, sid)
                    renewed = self.monotonic()
                self.sleep(0.25)
        except BaseException:
            self._destroy(sid)
            raise
        self.session, self._lost, self._renewed = sid, None, self.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name=f"skynet-lock-{self.service}", daemon=True)
        self._thread.start()
        return True

    def release(self):
        """Gives the lock back; never raises. Returns why it could not be released cleanly, or None."""
        if self._thread:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
        sid, self.session = self.session, None
        if not sid:
            return None
        problems = []
        for what, call in (
            ("release the lock", lambda: self.consul.kv.put(self.key, None, release=sid)),
            ("destroy the session", lambda: self.consul.session.destroy(sid)),
        ):
            try:
                self.registry.call(f"{what} of {self.service}", call)
            except SkynetError as e:
                problems.append(str(e))
        return "; ".join(problems) or None

    def _destroy(self, sid):
        with contextlib.suppress(SkynetError):  # its TTL ends it
            self.registry.call("destroy a session", self.consul.session.destroy, sid)

    # -- keeping it ------------------------------------------------------------------------

    def _renew(self):
        while not self._stop.wait(self.ttl / 3):
            sid = self.session
            if not sid:
                return
            try:
                alive = self.consul.session.renew(sid)
            except Exception as e:  # noqa: BLE001 - a renewal that fails is judged by its age in fence()
                if type(e).__name__ == "NotFound":
                    self._lost = "its Consul session no longer exists"
                    return
                continue
            if not alive:
                self._lost = "its Consul session no longer exists"
                return
            self._renewed = self.monotonic()

    def fence(self, before):
        """Raises LockLost unless this run still holds the lock; `before` names the change about to be made."""
        why = self.lost()
        if why:
            raise LockLost(f"the lock of {self.service} was lost ({why}): stopped before {before}")

    def lost(self):
        """Why the lock is not held any more, or None while it is (one KV read)."""
        if not self.session:
            return "it is not held"
        if self._lost:
            return self._lost
        age = self.monotonic() - self._renewed
        if age > self.ttl:
            return f"its session was last renewed {age:.0f}s ago, more than its TTL of {self.ttl}s"
        try:
            entry = self.registry.call(f"read the lock of {self.service}", self.consul.kv.get, self.key)[1]
        except SkynetError as e:
            return f"it cannot be checked: {e}"
        if not entry or entry.get("Session") != self.session:
            return "Consul no longer has this run's session on its key"
        return None

    def holder(self):
        """Who holds the lock, as a phrase: 'a release on host-1 (since 2026-12-01 10:00:00)'."""
        try:
            entry = self.registry.call(f"read the lock of {self.service}", self.consul.kv.get, self.key)[1]
        except SkynetError:
            entry = None
        try:
            holder = json.loads(entry["Value"]) if entry and entry.get("Session") else None
        except (TypeError, ValueError):
            holder = None
        if not isinstance(holder, dict):
            return "another run"
        since = holder.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
        kind = {"scale": "a scale cycle", "release": "a release"}.get(holder.get("purpose"), "a run")
        return f"{kind} on {holder.get('host', '?')} (since {when})"
