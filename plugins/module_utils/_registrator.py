# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registrator: keeps Consul in step with the containers of one Docker API engine.

Every running container that names a service (Skynet's ``io.skynet.service`` label, or
gliderlabs/registrator's ``SERVICE_NAME`` / ``SERVICE_<port>_NAME`` in its env or labels) gets
one Consul registration per published port, in the shape skynet_compute registers
(``registration()`` of _registry.py), marked with Meta ``skynet_registrator=<host id>``.

The first half of this file is pure (inspect data in, registrations and changes out); the
second half is the daemon around it: Docker events, periodic resyncs, backoff, metrics.
``skynet-registrator`` (_daemon.py, from the runtime role's copy of the collection) runs ``main()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import signal
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _daemon, _docker_api, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import (
    COLOR_LABEL,
    HOST_LABEL,
    SERVICE_LABEL,
    Instance,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import register_call, registration

try:
    import docker
    import docker.errors

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - main() reports it
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = e

MARK = "skynet_registrator"
IMAGE_LABEL = "io.skynet.image"
# Podman 4.3's compat API reports "die" but filters on "died", and says "remove" for "destroy".
EVENTS = ("start", "die", "died", "stop", "kill", "destroy", "remove")
TERMINATING_SIGNALS = frozenset(("2", "3", "9", "15", "INT", "QUIT", "KILL", "TERM"))
FALSE_WORDS = frozenset(("", "0", "false", "no", "off"))
TRUE_WORDS = frozenset(("1", "true", "yes", "on"))
CONTAINER_ID = re.compile(r"[0-9a-f]{12}")
CHECK_OPTIONS = (
    ("check_interval", "interval"),
    ("check_timeout", "timeout"),
    ("check_deregister_after", "deregister_after"),
)


# -- pure: containers -> registrations -> changes -------------------------------------------


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str
    host_port: int


@dataclass
class Container:
    id: str
    name: str = ""
    image: str = ""
    running: bool = True
    env: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    ports: tuple = ()

    @property
    def short_id(self):
        return self.id[:12]


def container_from_inspect(attrs):
    """A Container from the JSON of GET /containers/{id}/json (Docker Engine and Podman alike)."""
    config = attrs.get("Config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    ports = []
    for key, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        host_ports = [int(b["HostPort"]) for b in bindings or [] if b.get("HostPort")]
        number, sep, protocol = key.partition("/")
        if host_ports and number.isdigit():
            ports.append(Port(int(number), protocol if sep else "tcp", host_ports[0]))
    return Container(
        id=attrs["Id"],
        name=(attrs.get("Name") or "").lstrip("/"),
        image=config.get("Image") or attrs.get("Image") or "",
        running=bool((attrs.get("State") or {}).get("Running")),
        env=env,
        labels=dict(config.get("Labels") or {}),
        ports=tuple(sorted(ports, key=lambda p: (p.port, p.protocol))),
    )


def service_metadata(env, labels, port):
    """gliderlabs' SERVICE_* settings for one container port: (settings, keys set for that port).

    Keys are lower case without the prefix (``check_http``); labels win over env, and
    ``SERVICE_<port>_<KEY>`` wins over ``SERVICE_<KEY>``.
    """
    generic, specific = {}, {}
    for source in (env, labels):
        for key, value in source.items():
            if not key.startswith("SERVICE_"):
                continue
            rest = key[len("SERVICE_") :].lower()
            head, sep, tail = rest.partition("_")
            if head.isdigit() and sep:
                if int(head) == port:
                    specific[tail] = value
            else:
                generic[rest] = value
    merged = dict(generic)
    merged.update(specific)
    return merged, set(specific)


def split_tags(value):
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def health_of(settings):
    """The health dict of registration() from SERVICE_CHECK_*, or None when no check is asked for."""
    if settings.get("check_http"):
        health = {"type": "http", "path": settings["check_http"]}
    elif (settings.get("check_tcp") or "").strip().lower() in TRUE_WORDS:
        health = {"type": "tcp"}
    else:
        return None
    for key, name in CHECK_OPTIONS:
        if settings.get(key):
            health[name] = settings[key]
    return health


def container_labels(health, tags=()):
    """SERVICE_* labels that make the registrator register a container exactly as skynet_compute
    does with this health dict and these extra tags (for Spec.labels)."""
    labels = {}
    if (health.get("type") or "http") == "tcp":
        labels["SERVICE_CHECK_TCP"] = "true"
    else:
        labels["SERVICE_CHECK_HTTP"] = health.get("path") or "/"
    for key, name in CHECK_OPTIONS:
        if health.get(name):
            labels[f"SERVICE_{key.upper()}"] = str(health[name])
    if tags:
        labels["SERVICE_TAGS"] = ",".join(tags)
    return labels


def refusal(container, port, name, tags, color):
    """Why a port of a container is not registered (a name, tag or color breaking the rules), None when valid."""
    where = f"container {container.name or container.short_id} ({container.short_id}) port {port.port}"
    problems = [
        _names.problem(_names.service_name, name, f"{where}: service name"),
        _names.problem(_names.tags, tags, f"{where}: SERVICE_TAGS"),
        _names.problem(_names.color, color, f"{where}: label {COLOR_LABEL}") if color else None,
    ]
    return "; ".join(p for p in problems if p) or None


def registrations(container, address, host_id, rejected=None):
    """The registrations a container should have: one per published port that names a service.

    One published port: ID ``skynet-<service>-<id12>``, exactly skynet_compute's. Several: the
    container port is appended to the ID and, unless that port has a name of its own
    (``SERVICE_<port>_NAME``), to the service name (gliderlabs' rule).
    """
    if not container.running:
        return []
    group = len(container.ports) > 1
    skynet = bool(container.labels.get(SERVICE_LABEL))
    result = []
    for port in container.ports:
        settings, from_port = service_metadata(container.env, container.labels, port.port)
        if (settings.get("ignore") or "").strip().lower() not in FALSE_WORDS:
            continue
        if "name" in from_port:
            base = settings["name"]
        else:
            base = container.labels.get(SERVICE_LABEL) or settings.get("name") or ""
        if not base:
            continue
        name = f"{base}-{port.port}" if group and "name" not in from_port else base
        tags = split_tags(settings.get("tags"))
        if port.protocol != "tcp":
            tags.append(port.protocol)
        color = container.labels.get(COLOR_LABEL, "")
        problem = refusal(container, port, name, tags, color)
        if problem:
            if rejected is not None:
                rejected.append((container.short_id, problem))
            continue
        instance = Instance(
            id=container.short_id,
            service=name,
            color=color,
            image=container.labels.get(IMAGE_LABEL) or container.image,
            address=address,
            port=port.host_port,
            created=0.0,
            host=container.labels.get(HOST_LABEL, ""),
        )
        health = health_of(settings)
        body = registration(instance, health or {}, tags)
        if health is None and not skynet:
            del body["Check"]
        if group:
            body["ID"] = f"skynet-{base}-{container.short_id}-{port.port}"
        if port.protocol != "tcp":
            body["ID"] += f"-{port.protocol}"
        body["Meta"][MARK] = host_id
        result.append(body)
    return result


def desired_registrations(containers, address, host_id, exclude=(), rejected=None):
    """{service ID: registration} of every container, except those whose short id is in exclude."""
    desired = {}
    for container in containers:
        if container.short_id not in exclude:
            for body in registrations(container, address, host_id, rejected):
                desired[body["ID"]] = body
    return desired


def instance_of(entry):
    return (entry.get("Meta") or {}).get("skynet_instance", "")


def owned(entry, host_id, address):
    """Whether this registrator looks after a registration of the agent (GET /v1/agent/services).

    Its own carry its mark. skynet_compute's registrations of containers on this host (a
    container id, this host's address) are adopted too, so they go when their container goes.
    """
    mark = (entry.get("Meta") or {}).get(MARK)
    if mark:
        return mark == host_id
    return (
        entry.get("ID", "").startswith("skynet-")
        and bool(CONTAINER_ID.fullmatch(instance_of(entry)))
        and entry.get("Address") == address
    )


def _core(entry):
    return (entry.get("Service"), entry.get("Address"), entry.get("Port"))


def _shape(entry):
    return (*_core(entry), sorted(entry.get("Tags") or []), entry.get("Meta") or {})


def _body_shape(body):
    return (body["Name"], body["Address"], body["Port"], sorted(body["Tags"]), body["Meta"])


@dataclass
class Changes:
    register: list = field(default_factory=list)
    deregister: list = field(default_factory=list)

    def __bool__(self):
        return bool(self.register or self.deregister)


def diff(desired, current, host_id, address, only=None):
    """What turns current (the agent's services) into desired.

    Missing registrations are registered; owned ones that differ are registered again (a
    skynet_compute registration only when its name, address or port is stale: its check and
    extra tags are its own). Owned registrations nothing desires are deregistered; ``only``
    (short container ids) limits that to the containers an event was about.
    """
    changes = Changes()
    for sid in sorted(desired):
        body = desired[sid]
        have = current.get(sid)
        if have is None:
            changes.register.append(body)
        elif (have.get("Meta") or {}).get(MARK) == host_id:
            if _shape(have) != _body_shape(body):
                changes.register.append(body)
        elif owned(have, host_id, address) and _core(have) != _body_shape(body)[:3]:
            changes.register.append(body)
    for sid in sorted(current):
        entry = current[sid]
        if sid in desired or not owned(entry, host_id, address):
            continue
        if only is None or instance_of(entry) in only:
            changes.deregister.append(sid)
    return changes


def event_action(event):
    """(action, container id) of a Docker API event; action is "sync", "remove" or None (ignore)."""
    status = event.get("status") or event.get("Action") or ""
    actor = event.get("Actor") or {}
    cid = event.get("id") or actor.get("ID") or ""
    if not cid or (event.get("Type") or "container") != "container":
        return None, cid
    if status == "start":
        return "sync", cid
    if status == "kill":
        # Docker says which signal; a reload signal (HUP, USR1) does not end the container.
        sig = str((actor.get("Attributes") or {}).get("signal") or "").upper()
        sig = sig[3:] if sig.startswith("SIG") else sig
        return ("sync" if sig and sig not in TERMINATING_SIGNALS else "remove"), cid
    if status in EVENTS:
        return "remove", cid
    return None, cid


class Backoff:
    """Delays between reconnection attempts: initial, doubled after each failure, capped."""

    def __init__(self, initial=0.5, maximum=10.0):
        self.initial, self.maximum = initial, maximum
        self.failures = 0

    def next(self):
        delay = min(self.initial * (2 ** min(self.failures, 32)), self.maximum)
        self.failures += 1
        return delay

    def reset(self):
        self.failures = 0


class Metrics:
    """The registrator's own metrics, in the Prometheus text format."""

    HELP = {
        "skynet_registrator_registrations": ("gauge", "Registrations this registrator keeps in Consul."),
        "skynet_registrator_events_total": ("counter", "Docker API container events handled, by action."),
        "skynet_registrator_changes_total": ("counter", "Consul registrations and deregistrations made."),
        "skynet_registrator_resyncs_total": ("counter", "Full resyncs of Consul with Docker that succeeded."),
        "skynet_registrator_errors_total": ("counter", "Failed calls to Docker or Consul, by component."),
        "skynet_registrator_last_resync_timestamp_seconds": ("gauge", "Unix time of the last successful resync."),
        "skynet_registrator_docker_connected": ("gauge", "1 while the Docker API event stream is connected."),
        "skynet_registrator_rejected_total": (
            "counter",
            "Container ports not registered because their service name, tags or color break the naming rules.",
        ),
        "skynet_registrator_rejected": ("gauge", "Container ports not registered now for the same reason."),
        "skynet_registrator_stats_poll_seconds": ("gauge", "Duration of the last poll of the containers' stats."),
        "skynet_registrator_stats_errors_total": ("counter", "Polls of the containers' stats that failed."),
        "skynet_container_cpu_seconds_total": ("counter", "CPU time used by the container (Docker API stats)."),
        "skynet_container_memory_bytes": ("gauge", "Memory used by the container, inactive page cache excluded."),
        "skynet_container_network_receive_bytes_total": ("counter", "Bytes received by the container."),
        "skynet_container_network_transmit_bytes_total": ("counter", "Bytes sent by the container."),
    }

    def __init__(self):
        self._lock = threading.Lock()
        self._values = {}
        for action in EVENTS:
            self.set("skynet_registrator_events_total", 0, event=action)
        for action in ("register", "deregister"):
            self.set("skynet_registrator_changes_total", 0, action=action)
        for component in ("docker", "consul"):
            self.set("skynet_registrator_errors_total", 0, component=component)
        for name in (
            "skynet_registrator_registrations",
            "skynet_registrator_resyncs_total",
            "skynet_registrator_rejected_total",
            "skynet_registrator_rejected",
            "skynet_registrator_stats_errors_total",
        ):
            self.set(name, 0)
        self.set("skynet_registrator_last_resync_timestamp_seconds", 0)
        self.set("skynet_registrator_docker_connected", 0)

    def set(self, name, value, **labels):
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def inc(self, name, amount=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def get(self, name, **labels):
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0)

    def replace(self, name, series):
        """Sets every series of name at once ({sorted label items: value}): the others go."""
        with self._lock:
            for key in [k for k in self._values if k[0] == name]:
                del self._values[key]
            for labels, value in series.items():
                self._values[(name, tuple(labels))] = value

    def render(self):
        with self._lock:
            values = dict(self._values)
        lines = []
        for name in sorted({n for n, _labels in values}):
            kind, text = self.HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (metric, labels), value in sorted(values.items(), key=lambda kv: kv[0]):
                if metric == name:
                    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    number = repr(float(value)) if isinstance(value, float) else str(value)
                    lines.append(f"{name}{{{inner}}} {number}" if inner else f"{name} {number}")
        return "\n".join(lines) + "\n"


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


CPU_SECONDS = "skynet_container_cpu_seconds_total"
MEMORY_BYTES = "skynet_container_memory_bytes"
RECEIVE_BYTES = "skynet_container_network_receive_bytes_total"
TRANSMIT_BYTES = "skynet_container_network_transmit_bytes_total"
STATS_FAMILIES = (CPU_SECONDS, MEMORY_BYTES, RECEIVE_BYTES, TRANSMIT_BYTES)


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def stats_values(stats):
    """{family: value} from GET /containers/{id}/stats (Docker Engine and Podman, cgroup v1 and v2).

    Memory is counted as `docker stats` does: usage less the inactive page cache. A family the
    engine does not report is left out rather than given as 0.
    """
    values = {}
    cpu = _number(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage"))
    if cpu is not None:
        values[CPU_SECONDS] = cpu / 1e9
    memory = stats.get("memory_stats") or {}
    usage = _number(memory.get("usage"))
    if usage is not None:
        detail = memory.get("stats") or {}
        inactive = _number(detail.get("total_inactive_file", detail.get("inactive_file"))) or 0
        values[MEMORY_BYTES] = usage - inactive if inactive < usage else usage
    networks = [n for n in (stats.get("networks") or {}).values() if isinstance(n, dict)]
    for family, key in ((RECEIVE_BYTES, "rx_bytes"), (TRANSMIT_BYTES, "tx_bytes")):
        counts = [_number(n.get(key)) for n in networks]
        if counts and None not in counts:
            values[family] = sum(counts)
    return values


def container_service(container):
    """The service a container's own metrics are labelled with: Skynet's label, else SERVICE_NAME; "" for none."""
    settings, _port_keys = service_metadata(container.env, container.labels, 0)
    if (settings.get("ignore") or "").strip().lower() not in FALSE_WORDS:
        return ""
    return container.labels.get(SERVICE_LABEL) or settings.get("name") or ""


def stats_series(samples):
    """{family: {label items: value}} of (Container, stats_values()) pairs, labelled with the
    container's service, color and short id; containers without a service are left out."""
    series = {family: {} for family in STATS_FAMILIES}
    for container, values in samples:
        service = container_service(container)
        if not service:
            continue
        labels = (
            ("color", container.labels.get(COLOR_LABEL, "")),
            ("container", container.short_id),
            ("service", service),
        )
        for family, value in values.items():
            series[family][labels] = value
    return series


def parse_address(value):
    """(host, port) of HOST:PORT or [IPv6]:PORT; ValueError when it is not one."""
    parts = _names.split_host_port(value)
    if parts is None:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return parts[0] or "0.0.0.0", parts[1]  # noqa: S104 - ":PORT" asks for every address


# -- the daemon -------------------------------------------------------------------------------


class RegistratorError(SkynetError):
    def __init__(self, component, message):
        super().__init__(message)
        self.component = component


RESYNC = object()


class Registrator:
    """Applies Docker's state to the local Consul agent: full resyncs and per-container events."""

    def __init__(
        self,
        docker_host,
        consul_client,
        advertise_address="127.0.0.1",
        host_id=None,
        resync_interval=30.0,
        metrics=None,
        log=None,
        docker_timeout=30,
        clock=time.monotonic,
    ):
        self.docker_host = docker_host
        self.consul = consul_client
        self.address = advertise_address
        self.host_id = host_id or socket.gethostname()
        self.resync_interval = resync_interval
        self.metrics = metrics or Metrics()
        self.log = log or logging.getLogger("skynet-registrator")
        self.docker_timeout = docker_timeout
        self.clock = clock
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self._client = None
        self._dying = {}
        self._rejected = set()  # (short id, message) already logged and counted

    # Docker and Consul, each failure turned into one RegistratorError naming the component.

    def _docker(self, what, fn, *args, **kwargs):
        try:
            if self._client is None:
                self._client = _docker_api.client(self.docker_host, timeout=self.docker_timeout)
            return fn(self._client.api, *args, **kwargs)
        except docker.errors.NotFound:
            raise
        except Exception as e:
            if self._client is not None:
                self._client.close()
                self._client = None
            explanation = getattr(e, "explanation", None) or str(e)
            raise RegistratorError("docker", f"Docker API at {self.docker_host} failed to {what}: {explanation}") from e

    def _consul(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise RegistratorError(
                "consul", f"{_consul.describe_failure(self.consul, e)} (while trying to {what})"
            ) from e

    def running_containers(self):
        found = []
        listed = self._docker("list the running containers", lambda api: api.containers(filters={"status": "running"}))
        for summary in listed:
            container = self.inspect(summary["Id"])
            if container is not None and container.running:
                found.append(container)
        return found

    def inspect(self, cid):
        try:
            return container_from_inspect(
                self._docker(f"inspect container {cid[:12]}", lambda api: api.inspect_container(cid))
            )
        except docker.errors.NotFound:
            return None

    def current(self):
        return self._consul("list the agent's services", self.consul.agent.services) or {}

    def apply(self, changes, current, why):
        for sid in changes.deregister:
            entry = current[sid]
            self._consul(f"deregister {sid}", self.consul.agent.service.deregister, sid)
            self.metrics.inc("skynet_registrator_changes_total", action="deregister")
            self.log.info(
                "deregistered %s (%s at %s:%s): %s",
                sid,
                entry.get("Service"),
                entry.get("Address"),
                entry.get("Port"),
                why.get(instance_of(entry), "gone"),
            )
        for body in changes.register:
            self._consul(f"register {body['ID']}", register_call(self.consul, body))
            self.metrics.inc("skynet_registrator_changes_total", action="register")
            self.log.info(
                "registered %s (%s at %s:%s, tags %s): container %s",
                body["ID"],
                body["Name"],
                body["Address"],
                body["Port"],
                ",".join(body["Tags"]) or "-",
                body["Meta"]["skynet_instance"],
            )

    def _refused(self, rejected, running=None):
        """Logs and counts each refused port once, not at every resync; running (short ids) forgets the gone."""
        if running is not None:
            self._rejected = {r for r in self._rejected if r[0] in running}
        for item in rejected:
            if item not in self._rejected:
                self._rejected.add(item)
                self.metrics.inc("skynet_registrator_rejected_total")
                self.log.warning("not registering %s", item[1])
        self.metrics.set("skynet_registrator_rejected", len(self._rejected))

    def _count(self, current, changes):
        after = {sid for sid, entry in current.items() if (entry.get("Meta") or {}).get(MARK) == self.host_id}
        after -= set(changes.deregister)
        after |= {b["ID"] for b in changes.register}
        self.metrics.set("skynet_registrator_registrations", len(after))

    def _excluded(self):
        now = self.clock()
        self._dying = {cid: until for cid, until in self._dying.items() if until > now}
        return set(self._dying)

    def resync(self):
        """Makes the agent's registrations match every running container."""
        containers = self.running_containers()
        current = self.current()
        rejected = []
        desired = desired_registrations(containers, self.address, self.host_id, self._excluded(), rejected)
        self._refused(rejected, running={c.short_id for c in containers})
        changes = diff(desired, current, self.host_id, self.address)
        self.apply(changes, current, {})
        self._count(current, changes)
        self.metrics.inc("skynet_registrator_resyncs_total")
        self.metrics.set("skynet_registrator_last_resync_timestamp_seconds", round(time.time(), 3))
        self.log.debug("resync: %d containers, %d registrations wanted, %s", len(containers), len(desired), changes)
        return changes

    def handle(self, event):
        """Brings the registrations of the container an event is about in step with it."""
        action, cid = event_action(event)
        if action is None:
            return None
        status = event.get("status") or event.get("Action")
        self.metrics.inc("skynet_registrator_events_total", event=status)
        short = cid[:12]
        desired = {}
        if action == "sync":
            self._dying.pop(short, None)
            container = self.inspect(cid)
            if container is not None:
                rejected = []
                desired = desired_registrations([container], self.address, self.host_id, rejected=rejected)
                self._refused(rejected)
        else:
            # A container that was sent a stop signal leaves at once and stays out of resyncs
            # while it shuts down.
            self._dying[short] = self.clock() + 120
        current = self.current()
        changes = diff(desired, current, self.host_id, self.address, only={short})
        self.apply(changes, current, {short: f"container {short} {status}"})
        self._count(current, changes)
        return changes

    def watch_events(self):
        """Feeds Docker API events into the queue; reconnects with backoff, asks for a resync each time."""
        backoff = Backoff()
        filters = {"type": "container", "event": list(EVENTS)}
        while not self.stopping.is_set():
            client = None
            try:
                client = _docker_api.client(self.docker_host, timeout=self.docker_timeout)
                stream = client.api.events(decode=True, filters=filters)
                self.metrics.set("skynet_registrator_docker_connected", 1)
                if backoff.failures:
                    self.log.info("Docker API at %s is back: resyncing", self.docker_host)
                backoff.reset()
                self.events.put(RESYNC)
                for event in stream:
                    self.events.put(event)
                    if self.stopping.is_set():
                        return
                raise RegistratorError("docker", f"Docker API at {self.docker_host} closed the event stream")
            except Exception as e:  # noqa: BLE001 - whatever breaks the stream, the thread reconnects
                self.metrics.set("skynet_registrator_docker_connected", 0)
                self.metrics.inc("skynet_registrator_errors_total", component="docker")
                delay = backoff.next()
                message = e if isinstance(e, RegistratorError) else f"Docker API at {self.docker_host}: {e}"
                self.log.warning("%s; reconnecting in %.1fs", message, delay)
                self.stopping.wait(delay)
            finally:
                if client is not None:
                    client.close()

    def run(self):
        """The main loop: events as they come, a resync every resync_interval, backoff on failure."""
        threading.Thread(target=self.watch_events, name="docker-events", daemon=True).start()
        backoff = Backoff()
        next_resync = self.clock()
        while not self.stopping.is_set():
            try:
                item = self.events.get(timeout=min(max(next_resync - self.clock(), 0), 0.5))
            except queue.Empty:
                item = None
            try:
                if item is RESYNC:
                    next_resync = self.clock()
                elif item is not None:
                    self.handle(item)
                if self.clock() >= next_resync:
                    self.resync()
                    if backoff.failures:
                        self.log.info("in step again after %d failed attempt(s)", backoff.failures)
                    backoff.reset()
                    next_resync = self.clock() + self.resync_interval
            except RegistratorError as e:
                self.metrics.inc("skynet_registrator_errors_total", component=e.component)
                delay = backoff.next()
                self.log.warning("%s; resyncing in %.1fs", e, delay)
                next_resync = self.clock() + delay


class StatsPoller:
    """Exports the Docker API's stats of every running container that names a service.

    It runs in a thread of its own with a Docker client of its own, so a slow engine never
    delays registrations. Each call to the engine is bounded by `timeout` seconds, and no call
    starts after a round has taken that long: containers not reached keep their last values.
    """

    def __init__(self, docker_host, metrics, interval=10.0, timeout=5.0, log=None, clock=time.monotonic):
        self.docker_host, self.metrics = docker_host, metrics
        self.interval, self.timeout, self.clock = interval, timeout, clock
        self.log = log or logging.getLogger("skynet-registrator")
        self._client = None
        self._containers = {}  # id -> Container, inspected once
        self._values = {}  # id -> stats_values() of its last round

    def _api(self):
        if self._client is None:
            self._client = _docker_api.client(self.docker_host, timeout=self.timeout)
        return self._client.api

    def _stats(self, api, cid):
        try:
            return api.stats(cid, stream=False, one_shot=True)
        except docker.errors.InvalidVersion:
            return api.stats(cid, stream=False)  # API < 1.41 (Docker 20.10 and older)

    def poll(self):
        """One round; the number of containers whose stats were read."""
        started = self.clock()
        deadline = started + self.timeout
        api = self._api()
        running = [c["Id"] for c in api.containers(filters={"status": "running"})]
        read = 0
        for cid in running:
            if self.clock() >= deadline:
                self.log.warning("stats of %d container(s) not read within %gs", len(running) - read, self.timeout)
                break
            try:
                if cid not in self._containers:
                    self._containers[cid] = container_from_inspect(api.inspect_container(cid))
                if container_service(self._containers[cid]):
                    self._values[cid] = stats_values(self._stats(api, cid))
                read += 1
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as e:
                # One container the engine cannot report on (it is stopping, say) spoils no round.
                self.metrics.inc("skynet_registrator_stats_errors_total")
                self.log.debug("stats of container %s: %s", cid[:12], e)
        for gone in set(self._containers) - set(running):
            self._containers.pop(gone, None)
            self._values.pop(gone, None)
        samples = [(self._containers[cid], values) for cid, values in self._values.items()]
        for family, series in stats_series(samples).items():
            self.metrics.replace(family, series)
        self.metrics.set("skynet_registrator_stats_poll_seconds", round(self.clock() - started, 3))
        return read

    def run(self, stopping):
        while not stopping.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the next round tries again with a new client
                self.metrics.inc("skynet_registrator_stats_errors_total")
                self.log.warning("Docker API at %s: cannot read container stats: %s", self.docker_host, e)
                if self._client is not None:
                    self._client.close()
                    self._client = None
            stopping.wait(self.interval)

    def start(self, stopping):
        threading.Thread(target=self.run, args=(stopping,), name="container-stats", daemon=True).start()


class _MetricsHandler(BaseHTTPRequestHandler):
    metrics = None

    def do_GET(self):
        if self.path.split("?")[0] == "/metrics":
            body, status, kind = self.metrics.render().encode(), 200, "text/plain; version=0.0.4; charset=utf-8"
        elif self.path == "/":
            body, status, kind = b'skynet-registrator: <a href="/metrics">/metrics</a>\n', 200, "text/html"
        else:
            body, status, kind = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        return


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer looks its own address up in DNS (getfqdn): seconds lost where no resolver answers.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def serve_metrics(metrics, address):
    """Serves /metrics on HOST:PORT in a daemon thread; returns the server."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"metrics": metrics})
    server = _MetricsServer(parse_address(address), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="skynet-registrator",
        description="Keeps Consul in step with the containers of a Docker API engine.",
    )
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    parser.add_argument("--consul-url", default=os.environ.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500")
    parser.add_argument(
        "--consul-token",
        default=os.environ.get("CONSUL_HTTP_TOKEN"),
        help="ACL token; prefer the CONSUL_HTTP_TOKEN environment variable (command lines are visible to all)",
    )
    parser.add_argument(
        "--consul-ca-cert", default=os.environ.get("CONSUL_CACERT"), help="CA certificates for an https Consul URL"
    )
    parser.add_argument("--advertise-address", default="127.0.0.1", help="address registered with published host ports")
    parser.add_argument("--host-id", default=socket.gethostname(), help="marks this registrator's registrations")
    parser.add_argument("--resync-interval", type=float, default=30.0, help="seconds between full resyncs")
    parser.add_argument("--metrics-address", default="127.0.0.1:9797", help="HOST:PORT of /metrics; empty: off")
    parser.add_argument(
        "--stats-interval", type=float, default=10.0, help="seconds between polls of container stats; 0: off"
    )
    parser.add_argument("--stats-timeout", type=float, default=5.0, help="seconds one poll of container stats may take")
    _daemon.add_log_level(parser)
    args = parser.parse_args(argv)
    if args.resync_interval <= 0:
        parser.error("--resync-interval must be more than 0")
    if not args.advertise_address:
        parser.error("--advertise-address must not be empty")
    if args.stats_interval < 0 or args.stats_timeout <= 0:
        parser.error("--stats-interval must be 0 (off) or more, --stats-timeout more than 0")
    if args.metrics_address:
        try:
            parse_address(args.metrics_address)
        except ValueError as e:
            parser.error(f"--metrics-address: {e}")
    return args


def connect_consul(args):
    """The Consul client of the parsed arguments (SkynetError when the URL is unusable)."""
    return _consul.connect(
        {"consul_url": args.consul_url, "consul_token": args.consul_token, "consul_ca_cert": args.consul_ca_cert}
    )


def main(argv=None):
    args = parse_args(argv)
    _daemon.setup_logging(args.log_level)
    log = logging.getLogger("skynet-registrator")
    for ok, lib, error in (
        (HAS_DOCKER, "docker", DOCKER_IMPORT_ERROR),
        (_consul.HAS_CONSUL, "py-consul", _consul.CONSUL_IMPORT_ERROR),
    ):
        if not ok:
            log.error("the Python package %s is missing: %s", lib, error)
            return 2
    try:
        client = connect_consul(args)
    except SkynetError as e:
        log.error("%s", e)
        return 2
    metrics = Metrics()
    server = None
    if args.metrics_address:
        try:
            server = serve_metrics(metrics, args.metrics_address)
        except OSError as e:
            log.error("cannot serve metrics on %s: %s", args.metrics_address, e)
            return 1
    registrator = Registrator(
        args.docker_host,
        client,
        advertise_address=args.advertise_address,
        host_id=args.host_id,
        resync_interval=args.resync_interval,
        metrics=metrics,
        log=log,
    )

    def stop(signum, frame):
        registrator.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "watching Docker API at %s for Consul at %s: host id %s, address %s, resync every %gs, metrics on %s",
        args.docker_host,
        client.skynet_url,
        registrator.host_id,
        args.advertise_address,
        args.resync_interval,
        args.metrics_address or "(off)",
    )
    if args.stats_interval and args.metrics_address:
        StatsPoller(args.docker_host, metrics, args.stats_interval, args.stats_timeout, log).start(registrator.stopping)
    try:
        registrator.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    log.info("stopped")
    return 0
