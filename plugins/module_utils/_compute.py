# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compute driver interface and the pure plan that turns current instances into a desired state.

Nothing here talks to a provider: drivers (Docker API, EC2) implement ComputeDriver, and
plan() decides what to create, replace and remove from plain data.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field

MARKER_LABEL = "io.skynet.managed"
SERVICE_LABEL = "io.skynet.service"
COLOR_LABEL = "io.skynet.color"
HOST_LABEL = "io.skynet.host"  # the pool host a container was placed on
SCALE_IN_POLICIES = ("newest_first", "oldest_first")


@dataclass(frozen=True)
class Instance:
    """One running copy of a service, whatever the provider."""

    id: str
    service: str
    color: str
    image: str
    address: str
    port: int
    created: float
    state: str = "running"
    host: str = ""  # the pool host (or EC2 subnet) it runs on
    zone: str = ""
    # Who runs its Consul check: "agent" (it is registered on a Consul agent, which runs it), or, for an
    # instance with no agent of ours (EC2: a node of its own in the catalog), "skynet" or "esm" (consul-esm).
    checked_by: str = "agent"

    def as_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Spec:
    """What a service's instances run: the same for every instance of one color."""

    service: str
    color: str
    image: str
    port: int
    env: dict = field(default_factory=dict)
    command: tuple = ()
    host_port: int = 0
    memory: str = ""
    cpus: float = 0.0
    labels: dict = field(default_factory=dict)


def make_spec(service, color, image="", port=8080, env=None, command=None, memory=None, cpus=None, host_port=0):
    """The Spec of one color of a service from module options or a service definition (the one place one is built).

    Environment values become strings, absent values their defaults, so equal inputs give equal specs.
    """
    return Spec(
        service=service,
        color=color,
        image=image or "",
        port=int(8080 if port is None else port),
        env={str(k): str(v) for k, v in (env or {}).items()},
        command=tuple(command or ()),
        host_port=int(host_port or 0),
        memory=memory or "",
        cpus=float(cpus or 0),
    )


class ComputeDriver(abc.ABC):
    """A provider of instances. Drivers raise SkynetError with a message naming the provider."""

    name = "abstract"

    @abc.abstractmethod
    def check(self, spec: Spec | None = None) -> None:
        """Fails before anything changes when the provider, or what spec needs (its image), is missing."""

    @abc.abstractmethod
    def list(self, service: str, color: str | None = None) -> list[Instance]:
        """Running instances of service (one color, or all), oldest first."""

    @abc.abstractmethod
    def create(self, spec: Spec) -> Instance:
        """Starts one instance; on failure, nothing of it is left behind."""

    @abc.abstractmethod
    def remove(self, instance: Instance, stop_timeout: int = 10) -> None:
        """Stops and deletes one instance; removing one already gone is not an error."""

    def create_many(self, spec: Spec, n: int, before=None) -> tuple[list[Instance], Exception | None]:
        """Starts n instances (before() ahead of each); (those started, the error that stopped it or None).

        One after the other here; a pool starts them on their hosts side by side."""
        started = []
        try:
            for _new in range(n):
                if before:
                    before()
                started.append(self.create(spec))
        except Exception as e:  # noqa: BLE001 - the caller undoes what was started and raises it
            return started, e
        return started, None

    def create_replacing(self, spec: Spec, old: Instance, before=None) -> tuple[list[Instance], Exception | None]:
        """Starts the replacement of old (a rolling image change); a pool keeps it on old's host when that keeps
        the spread."""
        return self.create_many(spec, 1, before)

    def choose_removals(self, candidates: list[Instance], n: int, scale_in: str = "newest_first") -> list[Instance]:
        """The n of candidates a scale-in removes, in order; a pool takes them where the service has most."""
        by_age = sorted(candidates, key=lambda i: (i.created, i.id))
        return (list(reversed(by_age)) if scale_in == "newest_first" else by_age)[:n]

    def unavailable(self) -> dict:
        """{host: why} of the parts of the compute that did not answer in this run (a pool skips them)."""
        return {}


@dataclass
class Plan:
    create: int = 0
    replace: list = field(default_factory=list)
    remove: list = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.create or self.replace or self.remove)


def plan(current: list[Instance], count: int, image: str | None, scale_in: str = "newest_first", choose=None) -> Plan:
    """What turns current (one service, one color) into count instances running image.

    Instances with another image are replaced one at a time; surplus instances are removed,
    those with a stale image first, then by the scale-in policy, or by choose(candidates, n, scale_in)
    when given (a pool's placement).
    """
    if count < 0:
        raise ValueError("count must be 0 or more")
    if scale_in not in SCALE_IN_POLICIES:
        raise ValueError(f"scale_in_policy must be one of {', '.join(SCALE_IN_POLICIES)}")
    by_age = sorted(current, key=lambda i: (i.created, i.id))
    ordered = list(reversed(by_age)) if scale_in == "newest_first" else by_age
    stale = [i for i in ordered if image and i.image != image]
    fresh = [i for i in ordered if i not in stale]
    surplus = max(len(current) - count, 0)
    # Stale instances leave first; they are cheaper to drop than to replace.
    if choose is None:
        remove = (stale + fresh)[:surplus]
    else:
        gone = choose(stale, min(surplus, len(stale)), scale_in)
        remove = gone + choose(fresh, surplus - len(gone), scale_in)
    keep_stale = [i for i in stale if i not in remove]
    return Plan(create=max(count - len(current), 0), replace=keep_stale, remove=remove)
