# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pool of Docker API hosts behind the ComputeDriver interface, with placement and host failure.

A host that does not answer is marked unavailable for the rest of the run (which and why are kept in
unavailable()) and skipped: its instances are not listed, nothing is placed on it. Where a new instance
goes and which instance a scale-in takes are _placement's rules, on every managed instance of the pool.

Placement reads the run's view of the pool: each host listed in full once (the cycle's own listing, or the
first placement's), kept up to date with every listing since and with the pool's own starts and removals, so
that a cycle starting one instance for each of many services lists every host once, not once per instance.
What the view cannot know is what other runs did since. The service being placed is taken as last listed by
itself, every color (ServiceConverger does so before it starts anything), else listed first: the run holds its
lock by then, so its own instances are exact and the spread rules hold. A host with a capacity is listed again
in full before each placement (instances of every service fill it). Elsewhere the other services' instances
only break ties. One pool serves one run: a listing of every service (a new cycle's) starts it over.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _placement
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import ComputeDriver
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import HostUnavailable, ImageMissing, SkynetError


class PoolDriver(ComputeDriver):
    name = "docker"

    def __init__(self, compute, drivers, zones_of=None):
        """compute: a _computes.DockerPool; drivers: {host name: DockerDriver, or a function making it (a client
        asks the engine its API version: a host that does not answer fails there)}; zones_of(service): its zones."""
        self.compute, self._drivers = compute, dict(drivers)
        self.hosts = {h.name: h for h in compute.hosts}
        self.zones_of = zones_of or (lambda service: ())
        self.down = {}
        self._view, self._started, self._removed = {}, {}, set()  # {host: {id: Instance}}, as _view, {id}
        self._fresh = set()  # services listed by themselves, every color, since the listing of every service
        self._view_lock = threading.Lock()

    def unavailable(self):
        return dict(self.down)

    def driver(self, name):
        made = self._drivers[name]
        if callable(made) and not isinstance(made, ComputeDriver):
            made = self._drivers[name] = made()
        return made

    def _up(self):
        return [name for name in self.hosts if name not in self.down]

    def _each(self, fn, names=None):
        """{host: result} of fn(driver) on every available host, side by side; a host that fails is marked down."""
        names = self._up() if names is None else names

        def one(name):
            try:
                return name, fn(self.driver(name)), None
            except SkynetError as e:
                return name, None, e

        results = {}
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            for name, value, error in pool.map(one, names):
                if error is None:
                    results[name] = value
                else:
                    self.down.setdefault(name, str(error))
        return results

    def _no_host(self):
        why = "; ".join(f"{n or h.url}: {self.down.get(n, 'unavailable')}" for n, h in self.hosts.items())
        return SkynetError(f"compute {self.compute.name}: no Docker host answers ({why})")

    def check(self, spec=None):
        def missing(driver):
            # A missing image is the user's to fix, on every host: it is an error, not a host failure.
            try:
                driver.check(spec)
            except ImageMissing:
                return True
            return False

        found = self._each(missing)
        lacking = [name for name in self.hosts if found.get(name)]
        if lacking:
            raise SkynetError(
                f"image {spec.image!r} is not on the Docker API engine of host(s) {', '.join(lacking)} of compute "
                f"{self.compute.name} ({', '.join(self.hosts[n].url for n in lacking)}): pull, load or "
                "build it on every host of the pool first"
            )
        if not self._up():
            raise self._no_host()

    def list(self, service, color=None):
        if service is None:
            self._fresh.clear()
        listed = self._list(service, color)
        if service is not None and color is None:
            self._fresh.add(service)
        return listed

    def _list(self, service, color=None, names=None):
        found = self._each(lambda d: d.list(service, color), names)
        with self._view_lock:
            for host, instances in found.items():
                self._seen(host, instances, service, color)
        return sorted((i for instances in found.values() for i in instances), key=lambda i: (i.created, i.id))

    def _seen(self, host, instances, service, color):
        """The view of host after a listing of service (every service: None) and color (every color: None)."""
        if service is None:
            view = self._view[host] = {}
        elif host in self._view:
            view = self._view[host]
            for gone in [k for k, i in view.items() if i.service == service and color in (None, i.color)]:
                del view[gone]
        else:
            return  # a listing of one service says nothing of the others: the host is listed in full when needed
        view.update((i.id, i) for i in instances if i.id not in self._removed)
        # What this pool started while the listing was on its way is not lost with it.
        for i in self._started.get(host, {}).values():
            if i.id not in self._removed and (service is None or (i.service == service and color in (None, i.color))):
                view.setdefault(i.id, i)

    def _made(self, instance):
        with self._view_lock:
            self._started.setdefault(instance.host, {})[instance.id] = instance
            if instance.host in self._view:
                self._view[instance.host][instance.id] = instance
        return instance

    def _placement_hosts(self):
        return [
            _placement.Host(h.name, h.zone, h.capacity, available=h.name not in self.down) for h in self.hosts.values()
        ]

    def _placed(self, placing=None):
        """Every running instance on the available hosts, as placement counts them: the run's view, with the hosts
        never listed in full listed now; to place an instance of service placing, its own instances and every
        instance on a host with a capacity as they are now."""
        up = self._up()
        full = [n for n in up if n not in self._view or (placing and self.hosts[n].capacity is not None)]
        if full:
            self._list(None, names=full)
        if placing is not None and placing not in self._fresh:
            self._list(placing, names=[n for n in up if n not in full])
            self._fresh.add(placing)
        with self._view_lock:
            return [
                _placement.Placed(i.host, i.id, i.service, i.created)
                for n in self._up()
                for i in self._view.get(n, {}).values()
                if i.state == "running"
            ]

    def create(self, spec):
        tried = []
        while True:
            chosen = _placement.place(
                self._placement_hosts(), self._placed(spec.service), spec.service, 1, self.zones_of(spec.service)
            )
            if not chosen.hosts:
                raise SkynetError(
                    f"compute {self.compute.name}: {chosen.reason}" + (f" (tried {', '.join(tried)})" if tried else "")
                )
            host = chosen.hosts[0]
            try:
                return self._made(self.driver(host).create(spec))
            except HostUnavailable as e:
                # The host stopped answering between the listing and the start: the next one gets it.
                self.down.setdefault(host, str(e))
                tried.append(host)

    def create_many(self, spec, n, before=None):
        """Places the n at once, then starts each host's share on it, the hosts side by side. A host that stops
        answering meanwhile has its share started on the others, one by one, as create() does."""
        if n <= 1:
            return super().create_many(spec, n, before)
        chosen = _placement.place(
            self._placement_hosts(), self._placed(spec.service), spec.service, n, self.zones_of(spec.service)
        )
        if chosen.unplaced:
            return [], SkynetError(f"compute {self.compute.name}: {chosen.reason}")
        shares = {}
        for host in chosen.hosts:
            shares[host] = shares.get(host, 0) + 1

        def on(host):
            made = []
            try:
                for _new in range(shares[host]):
                    if before:
                        before()
                    made.append(self._made(self.driver(host).create(spec)))
            except HostUnavailable as e:
                self.down.setdefault(host, str(e))
                return made, None, shares[host] - len(made)
            except SkynetError as e:
                return made, e, 0
            return made, None, 0

        started, error, left = [], None, 0
        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            for made, failed, missing in pool.map(on, shares):
                started.extend(made)
                error, left = error or failed, left + missing
        if error is None and left:
            more, error = super().create_many(spec, left, before)
            started.extend(more)
        return started, error

    def create_replacing(self, spec, old, before=None):
        placed = _placement.Placed(old.host, old.id, old.service, old.created)
        others = [p for p in self._placed(spec.service) if p.id != old.id]
        chosen = _placement.place_replacement(
            self._placement_hosts(), [*others, placed], placed, self.zones_of(spec.service)
        )
        if not chosen.hosts:
            return [], SkynetError(f"compute {self.compute.name}: {chosen.reason}")
        try:
            if before:
                before()
            return [self._made(self.driver(chosen.hosts[0]).create(spec))], None
        except HostUnavailable as e:
            self.down.setdefault(chosen.hosts[0], str(e))
            return super().create_many(spec, 1, before)
        except SkynetError as e:
            return [], e

    def remove(self, instance, stop_timeout=10):
        if instance.host not in self._drivers:
            raise SkynetError(
                f"compute {self.compute.name}: instance {instance.id} runs on unknown host {instance.host!r}"
            )
        self.driver(instance.host).remove(instance, stop_timeout)
        with self._view_lock:
            self._removed.add(instance.id)
            self._view.get(instance.host, {}).pop(instance.id, None)

    def choose_removals(self, candidates, n, scale_in="newest_first"):
        if n <= 0 or not candidates:
            return []
        by_id = {i.id: i for i in candidates}
        service = candidates[0].service
        others = [p for p in self._placed() if p.service != service]
        mine = [_placement.Placed(i.host, i.id, i.service, i.created) for i in candidates]
        chosen = _placement.choose_removals(self._placement_hosts(), others + mine, service, n, scale_in)
        return [by_id[p.id] for p in chosen if p.id in by_id]
