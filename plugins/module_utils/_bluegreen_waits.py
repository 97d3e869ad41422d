# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The waits of a release: for time, for Consul health, for HAProxy to see instances.

Every wait that may be interrupted looks, twice a second, for a request of another controller
(rollback, abort) and for the loss of the service's lock, so that a release stops soon after it
no longer holds the service.
"""

from __future__ import annotations

import time

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


class Interrupted(Exception):
    """A rollback or abort asked for by another controller while this run holds the release."""

    def __init__(self, kind, request):
        super().__init__(kind)
        self.kind, self.request = kind, request


class StepFailed(SkynetError):
    """A release step failed in a way the release undoes (health, analysis, a switch that was put back)."""


class Waiter:
    def __init__(self, registry, store, nodes, lock=None, monotonic=time.monotonic, sleep=time.sleep, poll=0.5):
        self.registry, self.store, self.nodes, self.lock = registry, store, list(nodes), lock
        self.monotonic, self.sleep, self.poll = monotonic, sleep, poll
        self._polled = None

    def tick(self):
        """Raises Interrupted when another controller asked to stop, LockLost when the lock is gone."""
        if self._polled is not None and self.monotonic() - self._polled < self.poll:
            return
        self._polled = self.monotonic()
        if self.lock is not None:
            self.lock.fence("its next step")
        request = self.store.request()
        if request:
            raise Interrupted(request["kind"], request)

    def wait(self, seconds, interruptible=True):
        deadline = self.monotonic() + seconds
        while True:
            if interruptible:
                self.tick()
            left = deadline - self.monotonic()
            if left <= 0:
                return
            self.sleep(min(0.25, left))

    def passing(self, service, color, instances, timeout, interruptible=True):
        """Waits until every instance passes its Consul check; StepFailed naming those that did not."""
        deadline = self.monotonic() + timeout
        ids = [i.id for i in instances]
        while True:
            self.registry.keep_checked(instances)
            statuses = self.registry.statuses(service)
            waiting = [i for i in ids if statuses.get(i) != "passing"]
            if not waiting:
                return
            if self.monotonic() >= deadline:
                raise StepFailed(
                    f"{len(waiting)} of {len(ids)} instance(s) of {service} ({color}: {', '.join(waiting)}) did not "
                    f"pass their health check within health_timeout ({timeout:g}s)"
                )
            self.wait(0.5, interruptible)

    def backends(self, service, color, instances, timeout, interruptible=True, lenient=False):
        """Waits until every HAProxy node has every instance UP in the color's backend.

        lenient (while undoing) gives up quietly at the timeout and skips nodes that do not answer.
        """
        deadline = self.monotonic() + timeout
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
            self.wait(0.5, interruptible)
