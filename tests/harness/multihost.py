"""Several hosts inside this machine: network namespaces on a private bridge with a /24 of their own.

A MultiHost holds three Consul servers, N Docker hosts (a Consul client agent, a Podman Docker API
engine publishing on the host's address, the registrator on its local agent) and a load balancer
(a Consul client agent; HAProxy on the collection's rendered config, resolving through that agent).
Every namespace, veth and bridge is named skyb-<tag>-..., deleted by name at the end, also after
a failure or an interrupt; the processes run in a Stack, so its work dir and logs are the usual.

Processes enter a namespace with `nsenter --net` (not `ip netns exec`, which remounts /sys and so
breaks runc's cgroup lookup). Each engine has its own CNI config and lease dir: the default ones
under /var/lib/cni are shared by every rootful Podman on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .proc import HarnessError, Process, wait_for
from .stack import CONTAINERS_CONF, DAEMON_ENV, TOOLS, HAProxy, Stack, _which, admin_command, daemon

PREFIX = "skyb"
LOCK = Path("/run/lock/skynet-multihost.lock")
# What each live stack made, so that the next one removes what a SIGKILLed run left behind.
RECORDS = Path("/run/skynet-multihost")
CONSUL_PORTS = {"http": 8500, "dns": 8600, "serf_lan": 8301, "serf_wan": 8302, "server": 8300, "grpc": -1, "https": -1}
REGISTRATOR_METRICS_PORT = 9797
STATS_PORT = 8404
COMMAND_TIMEOUT = 20


def run(argv: list, timeout: float = COMMAND_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """One bounded command; HarnessError with its output when it fails (and check is set)."""
    argv = [str(a) for a in argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{' '.join(argv)} took more than {timeout}s") from e
    if check and out.returncode:
        raise HarnessError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out


def _in_use_networks() -> list:
    """Every IPv4 network the root namespace has an address or a route in."""
    nets = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for line in run(argv).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "." in word and word[:1].isdigit():
                        nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def free_subnet(rng: random.SystemRandom) -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.249.255.0 that overlaps nothing the machine uses (podman's 10.88/16 included)."""
    used = [n for n in _in_use_networks() if n.prefixlen > 0]
    for _attempt in range(200):
        candidate = ipaddress.ip_network(f"10.{rng.randint(200, 249)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise HarnessError("no free /24 in 10.200.0.0/16-10.249.0.0/16 for the multi-host bridge")


def _metrics(url: str) -> dict:
    values = {}
    for line in requests.get(url, timeout=2).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split(" ", 1) if " " in line else (line, "")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


@dataclass
class Agent:
    """A Consul agent (server or client) in a node's namespace; HTTP and DNS on the node's address."""

    node: Node
    server: bool
    config: Path
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.node.address}:{CONSUL_PORTS['http']}"

    @property
    def dns(self) -> str:
        return f"{self.node.address}:{CONSUL_PORTS['dns']}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def api(self, method: str, path: str, **kw):
        r = requests.request(method, f"{self.url}/v1/{path}", timeout=kw.pop("timeout", 5), **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def leader(self) -> str:
        """The leader's ADDRESS:PORT as this agent knows it ("" when none)."""
        return requests.get(f"{self.url}/v1/status/leader", timeout=2).json()

    def dig(self, name: str, rtype: str = "SRV") -> list[str]:
        """dig from the root namespace at this agent's DNS."""
        host, port = self.dns.split(":")
        out = run(["dig", f"@{host}", "-p", port, "+short", "+time=1", "+tries=1", name, rtype], check=False)
        return [line for line in out.stdout.splitlines() if line and not line.startswith(";")]

    def kill(self):
        """SIGKILL: a crash (SIGTERM would make a client leave the cluster gracefully)."""
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
            self.process.stop()


@dataclass
class Node:
    multihost: MultiHost
    name: str  # docker-1, server-1, lb
    netns: str
    veth: str  # the root namespace's end, on the bridge
    address: str
    agent: Agent | None = None

    def start(self, name: str, argv: list, env: dict | None = None, etc: bool = True) -> Process:
        """A process of this node: in its network namespace, logged and stopped by the Stack.

        With etc, it sees the stack's /etc/hosts (every node by name) and a resolv.conf that fails at
        once: the machine's resolver is out of reach here, and a reverse lookup (Python's HTTP
        servers make one of their bind address) would wait 10 s for it. Engines go without: their
        container mounts must stay in the machine's mount namespace.
        """
        prefix = ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        if etc:
            hosts, resolv = self.multihost.etc_files()
            script = f'mount --bind {hosts} /etc/hosts && mount --bind {resolv} /etc/resolv.conf && exec "$@"'
            prefix += ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
        return self.multihost.stack.start(f"{self.name}-{name}", [*prefix, *argv], env=env)

    @property
    def consul_url(self) -> str:
        return self.agent.url


@dataclass
class Host(Node):
    """A Docker host: docker_host is a unix socket in the work dir, reachable from the root namespace."""

    cli: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    socket: Path | None = None
    engine: Process | None = None
    registrator: Process | None = None
    zone: str | None = None
    cut_off: bool = False

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{REGISTRATOR_METRICS_PORT}/metrics"

    def client(self, timeout: float = 60):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """The podman CLI on this engine's storage, inside the host's namespace."""
        argv = [*self.cli, *args]
        try:
            out = subprocess.run(
                argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"podman {' '.join(args)} on {self.name} took more than {timeout}s") from e
        if check and out.returncode:
            raise HarnessError(f"podman {' '.join(args)} on {self.name} failed: {out.stderr.strip()}")
        return out

    def compute_host(self) -> dict:
        """This host as an entry of a skynet_computes docker pool."""
        entry = {"name": self.name, "url": self.docker_host, "address": self.address, "consul_url": self.consul_url}
        return {**entry, "zone": self.zone} if self.zone else entry


@dataclass
class LoadBalancer(Node):
    haproxy: HAProxy | None = None

    def url(self, port: int, path: str = "/") -> str:
        return f"http://{self.address}:{port}{path}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.address}:{STATS_PORT}"

    def command(self, cmd: str) -> str:
        return admin_command(self.haproxy.socket, cmd)

    def start_haproxy(self, services: list, **render_options) -> HAProxy:
        """HAProxy on the config the collection renders for `services`, resolving through this node's
        agent; frontends bind this node's address (a service's lb_address is set to it unless given)."""
        from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render, render_map

        if self.haproxy is not None:
            raise HarnessError("the load balancer runs HAProxy already")
        services = [{"lb_address": self.address, **s} for s in services]
        stack = self.multihost.stack
        h = HAProxy(stack, "haproxy", stack.path("lb", "haproxy.cfg"), stack.path("lb", "admin.sock"), STATS_PORT)
        h.map_dir = stack.path("lb", "maps", "live.map").parent
        (h.map_dir / "live.map").write_text(render_map(services))
        (h.map_dir / "preview.map").write_text(render_map(services, preview=True))
        h.cfg.write_text(
            render(
                services,
                consul_dns=self.agent.dns,
                map_dir=str(h.map_dir),
                stats_socket=str(h.socket),
                stats_bind=f"{self.address}:{STATS_PORT}",
                **render_options,
            )
        )
        h.check()
        h.process = self.start("haproxy", [_which("haproxy"), "-W", "-db", "-f", h.cfg])
        h.process.wait_ready(lambda: requests.get(f"{self.stats_url}/metrics", timeout=2).ok, timeout=30)
        self.haproxy = h
        return h

    def server_states(self, backend: str) -> dict:
        """{server name: (address, operational state)} of a backend's servers that have an address."""
        out = self.command(f"show servers state {backend}").splitlines()
        states = {}
        for line in out[2:]:
            f = line.split()
            if len(f) > 5 and f[4] != "0.0.0.0":
                states[f[3]] = (f[4], int(f[5]))
        return states


class MultiHost:
    """The multi-host stack: `with MultiHost(hosts=3) as mh:` or the `multihost` fixture.

    host(i), server(i) count from 1; host(i).docker_host, .address, .consul_url, .client(); lb.url(port),
    lb.start_haproxy(services), lb.command(cmd); computes(); cut(i), restore(i); kill_leader(),
    start_server(node), settle(). Ports inside each namespace are Consul's defaults (8500, 8600, ...).
    """

    def __init__(self, hosts: int = 3, servers: int = 3, zones: tuple = (), stats_interval: float = 1.0):
        """zones: host i is in zones[(i - 1) % len(zones)] (none by default)."""
        if not 1 <= hosts <= 100 or servers not in (1, 3, 5):
            raise HarnessError(f"a MultiHost has 1-100 hosts and 1, 3 or 5 servers, not {hosts} and {servers}")
        self.n_hosts, self.n_servers, self.stats_interval = hosts, servers, stats_interval
        self.zones = tuple(zones)
        self.stack = Stack()
        self.rng = random.SystemRandom()
        self.tag = f"{self.rng.getrandbits(16):04x}"
        self.bridge = f"{PREFIX}-{self.tag}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.servers: list[Node] = []
        self.hosts: list[Host] = []
        self.lb: LoadBalancer | None = None
        self.timings: dict[str, float] = {}
        self._netns: list[str] = []
        self._links: list[str] = []
        self._runroots: list[Path] = []

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> MultiHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        self._preflight()
        sweep()
        self._network()
        self._record()
        started = time.monotonic()
        # Each group is started at once and then waited for: nothing in a group needs another.
        _together(self._start_agent(node, server=True) for node in self.servers)
        self.wait_leader(60)
        self.timings["leader"] = time.monotonic() - started
        _together(self._start_agent(node, server=False) for node in [*self.hosts, self.lb])
        self.wait_members(60)
        self.timings["members"] = time.monotonic() - started
        _together(self._start_engine(host) for host in self.hosts)
        self._record()
        self.timings["engines"] = time.monotonic() - started
        _together(self._start_registrator(host) for host in self.hosts)
        self.timings["ready"] = time.monotonic() - started

    def close(self):
        """Stops every process and removes every container, namespace, veth and bridge; a second
        interrupt during this waits until it is done."""
        deferred = []
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, frame: deferred.append(signum))
        errors = []
        try:
            # Everything goes at once: a client agent's graceful leave alone takes 4 s.
            for node in [*self.servers, *self.hosts, *([self.lb] if self.lb else [])]:
                if node.agent is not None and node.agent.alive():
                    node.agent.process.signal(signal.SIGKILL)
                registrator = getattr(node, "registrator", None)
                if registrator is not None:
                    registrator.signal(signal.SIGTERM)
            try:
                self.stack.close()  # it also waits for (and then kills) what still runs from its work dir
            except HarnessError as e:
                errors.append(str(e))
            for ns in reversed(self._netns):
                if run(["ip", "netns", "delete", ns], check=False).returncode and self._exists_netns(ns):
                    errors.append(f"network namespace {ns} not deleted")
            for link in reversed(self._links):
                if self._exists_link(link):
                    out = run(["ip", "link", "delete", link], check=False)
                    if out.returncode and self._exists_link(link):
                        errors.append(f"link {link} not deleted: {out.stderr.strip()}")
            for d in self._runroots:
                run(["rm", "-rf", "--one-file-system", d], check=False)
            if not errors:
                with _locked():
                    self._record_path().unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        RECORDS.rmdir()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if deferred:
            raise KeyboardInterrupt(f"signal {deferred[0]} during cleanup")
        if errors:
            raise HarnessError("multi-host cleanup failed: " + "; ".join(errors))

    def _record_path(self) -> Path:
        return RECORDS / f"{self.tag}.json"

    def _record(self):
        record = {
            "owner": [os.getpid(), _started(os.getpid())],
            "workdir": str(self.stack.workdir),
            "runroots": [str(d) for d in self._runroots],
            "netns": self._netns,
            "links": self._links,
            "engines": [{"cli": h.cli, "env": h.env} for h in self.hosts if h.cli],
        }
        with _locked():
            RECORDS.mkdir(parents=True, exist_ok=True)
            self._record_path().write_text(json.dumps(record))

    def logs(self, lines: int = 40) -> str:
        return self.stack.logs(lines)

    # -- network -----------------------------------------------------------------------------

    def _preflight(self):
        for tool in ("nsenter", "ip", "podman", "haproxy", "dig"):
            _which(tool)
        policy = run(["iptables", "-S", "FORWARD"], check=False).stdout.splitlines()
        if policy and policy[0].strip() != "-P FORWARD ACCEPT":
            raise HarnessError(f"the root namespace's FORWARD policy must be ACCEPT for the bridge: {policy[0]}")
        if self._exists_link(self.bridge):
            raise HarnessError(f"a link named {self.bridge} exists already")

    @staticmethod
    def _exists_link(name: str) -> bool:
        return run(["ip", "link", "show", "dev", name], check=False).returncode == 0

    @staticmethod
    def _exists_netns(name: str) -> bool:
        return Path("/run/netns", name).exists()

    def _network(self):
        # Two stacks starting at once must not pick the same /24: the choice and the bridge's
        # address are made under one machine-wide lock.
        with _locked():
            self.subnet = free_subnet(self.rng)
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._links.append(self.bridge)
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        self.servers = [self._node(Node, f"server-{i}", f"s{i}", 10 + i) for i in range(1, self.n_servers + 1)]
        self.hosts = [self._node(Host, f"docker-{i}", f"h{i}", 100 + i) for i in range(1, self.n_hosts + 1)]
        for i, host in enumerate(self.hosts):
            host.zone = self.zones[i % len(self.zones)] if self.zones else None
        self.lb = self._node(LoadBalancer, "lb", "lb", 5)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def _node(self, cls, name: str, short: str, index: int):
        netns, veth = f"{PREFIX}-{self.tag}-{short}", f"{PREFIX}-{self.tag}-{short}"
        address = str(self.subnet.network_address + index)
        # Recorded only once made: a name that exists already belongs to someone else.
        run(["ip", "netns", "add", netns])
        self._netns.append(netns)
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        self._links.append(veth)
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        for argv in (
            ["addr", "add", f"{address}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "lo", "up"],
            ["route", "add", "default", "via", self.gateway],
        ):
            run(["ip", "-n", netns, *argv])
        return cls(self, name, netns, veth, address)

    def etc_files(self) -> tuple[Path, Path]:
        hosts, resolv = self.stack.path("etc", "hosts"), self.stack.path("etc", "resolv.conf")
        if not hosts.exists():
            nodes = [*self.servers, *self.hosts, self.lb]
            hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{n.address} {n.name}\n" for n in nodes))
            resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return hosts, resolv

    def unplug(self, node: Node):
        run(["ip", "link", "set", node.veth, "down"])

    def plug(self, node: Node):
        run(["ip", "link", "set", node.veth, "up"])

    # -- Consul ------------------------------------------------------------------------------

    def _start_agent(self, node: Node, server: bool):
        if node.agent is None:
            config = {
                "node_name": node.name,
                "datacenter": "dc1",
                "data_dir": str(self.stack.path(node.name, "consul", "data", ".keep").parent),
                "bind_addr": node.address,
                "advertise_addr": node.address,
                "client_addr": node.address,
                "ports": CONSUL_PORTS,
                "server": server,
                "retry_join": [s.address for s in self.servers],
                "retry_interval": "1s",
                "performance": {"raft_multiplier": 1},
                "disable_update_check": True,
                "log_level": "INFO",
                "enable_local_script_checks": False,
                "telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True},
            }
            if server:
                config["bootstrap_expect"] = self.n_servers
            path = self.stack.path(node.name, "consul", "consul.json")
            path.write_text(json.dumps(config))
            node.agent = Agent(node, server, path)
        binary = _which("consul", TOOLS / "consul")
        agent = node.agent
        agent.process = node.start("consul", [binary, "agent", f"-config-file={agent.config}"])
        return lambda: agent.process.wait_ready(lambda: agent.api("GET", "agent/self"), timeout=30)

    def server(self, i: int) -> Node:
        return self.servers[i - 1]

    def leader(self) -> Node | None:
        """The server that leads, as the first live server answering says; None when none does."""
        for s in self.servers:
            if s.agent.alive():
                with contextlib.suppress(requests.RequestException, ValueError):
                    addr = s.agent.leader().rpartition(":")[0]
                    return next((n for n in self.servers if n.address == addr), None)
        return None

    def wait_leader(self, timeout: float = 60) -> Node:
        def elected():
            node = self.leader()
            return node if node is not None and node.agent.alive() else None

        return wait_for(elected, timeout, "a Consul leader", interval=0.1)

    def kill_leader(self) -> Node:
        """SIGKILLs the leading server (a crash); start_server(node) brings it back."""
        node = self.wait_leader(30)
        node.agent.kill()
        return node

    def start_server(self, node: Node):
        """Starts a server that was killed, on its own data: it rejoins the cluster."""
        self._start_agent(node, server=True)()
        self.wait_members(60, [node.name])
        wait_for(node.agent.leader, 30, f"{node.name} to follow the leader")

    def settle(self, timeout: float = 30):
        """Until every live agent has made 3 consistent reads in a row: each failed one drops a
        connection that a killed server left in its pools, so registrations that follow do not
        fail on it (a failed catalog sync is retried only 15 s later)."""
        for node in [*self.servers, *self.hosts, self.lb]:
            if node.agent is not None and node.agent.alive():
                wait_for(_Streak(node.agent), timeout, f"{node.name} to read the catalog", interval=0.05)

    def members(self) -> dict:
        """{node name: serf status (1 alive, 3 left, 4 failed)} as a live server sees them."""
        live = next(s for s in self.servers if s.agent.alive())
        return {m["Name"]: m["Status"] for m in live.agent.api("GET", "agent/members")}

    def wait_members(self, timeout: float = 60, names=None):
        names = set(names or (n.name for n in [*self.servers, *self.hosts, self.lb]))
        return wait_for(
            lambda: all(self.members().get(n) == 1 for n in names), timeout, f"{sorted(names)} alive in the cluster"
        )

    # -- Docker hosts ------------------------------------------------------------------------

    def host(self, i: int) -> Host:
        return self.hosts[i - 1]

    def computes(self) -> dict:
        """skynet_computes with the hosts as the `default` docker pool."""
        return {"default": {"type": "docker", "hosts": [h.compute_host() for h in self.hosts]}}

    def _start_engine(self, host: Host):
        if not host.cli:
            base = self.stack.path(host.name, "podman", ".keep").parent
            # Podman refuses a runroot longer than 50 characters: it gets a short dir of its own.
            runroot = Path(run(["mktemp", "-d", "/tmp/skynet-stack-XXXXXX"]).stdout.strip())
            self._runroots.append(runroot)
            networks = base / "networks"
            networks.mkdir()
            (networks / "87-podman-bridge.conflist").write_text(json.dumps(cni_config(base / "cni")))
            host.cli = [
                "nsenter",
                f"--net=/run/netns/{host.netns}",
                "--",
                _which("podman"),
                *("--root", base / "root", "--runroot", runroot, "--tmpdir", f"{runroot}/libpod"),
                *("--network-config-dir", networks, "--storage-driver", "vfs"),
            ]
            host.cli = [str(a) for a in host.cli]
            tmp = base / "tmp"
            tmp.mkdir()
            host.env = {"CONTAINERS_CONF": str(CONTAINERS_CONF), "TMPDIR": str(tmp)}
            host.socket = base / "docker.sock"
            # Registered before the engine so that its containers go (their CNI teardown inside
            # the namespace) after the engine stops and before the namespace does. No
            # `system reset`: it would not tear networks down, and the lock memory is shared.
            self.stack.on_close(lambda: host.podman("rm", "--all", "--force", "--time", "0", timeout=300))
        argv = [*host.cli[3:], "system", "service", "--time=0", host.docker_host]
        host.engine = host.start("engine", argv, env=host.env, etc=False)
        return lambda: host.engine.wait_ready(lambda: host.client(timeout=5).ping(), timeout=60)

    def _start_registrator(self, host: Host):
        argv = [
            *daemon("skynet-registrator"),
            f"--docker-host={host.docker_host}",
            f"--consul-url={host.consul_url}",
            f"--advertise-address={host.address}",
            f"--host-id={host.name}",
            f"--metrics-address={host.address}:{REGISTRATOR_METRICS_PORT}",
            f"--stats-interval={self.stats_interval}",
            "--resync-interval=5",
        ]
        host.registrator = host.start("registrator", argv, env=DAEMON_ENV)

        def in_step():
            m = _metrics(host.metrics_url)
            return m.get("skynet_registrator_resyncs_total", 0) >= 1 and m.get("skynet_registrator_docker_connected")

        return lambda: host.registrator.wait_ready(in_step, timeout=30)

    def cut(self, i: int):
        """Host i is lost: its link unplugged, then its agent, engine and registrator killed (a crash).
        Its containers keep running (conmon outlives the engine) but nothing reaches them."""
        host = self.host(i)
        if host.cut_off:
            raise HarnessError(f"{host.name} is cut off already")
        self.unplug(host)
        host.cut_off = True
        for proc in (host.registrator, host.engine):
            if proc is not None:
                proc.signal(signal.SIGKILL)
                proc.stop()
        host.agent.kill()

    def restore(self, i: int):
        """Host i is back: plugged in, its agent (same node, same data) alive in the cluster, its engine
        answering and its registrator in step with it."""
        host = self.host(i)
        if not host.cut_off:
            raise HarnessError(f"{host.name} is not cut off")
        self.plug(host)
        engine = self._start_engine(host)
        self._start_agent(host, server=False)()
        self.wait_members(60, [host.name])
        engine()
        self._start_registrator(host)()
        host.cut_off = False


class _Streak:
    """Called until true: whether the agent's last 3 consistent catalog reads all succeeded."""

    def __init__(self, agent: Agent):
        self.agent, self.count = agent, 0

    def __call__(self) -> bool:
        try:
            self.agent.api("GET", "catalog/services", params={"consistent": ""})
            self.count += 1
        except requests.RequestException:
            self.count = 0
        return self.count >= 3


@contextlib.contextmanager
def _locked():
    """The machine-wide lock of every MultiHost (subnet choice, records, sweeps)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _started(pid: int) -> str:
    """The start time of a process (to tell it from a later one with the same pid), "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def sweep() -> list[str]:
    """Removes what stacks whose process died without closing them (SIGKILL) left behind: their
    containers, the processes in their namespaces, the namespaces, veths, bridge and dirs.
    Returns the work dirs it cleaned."""
    if not RECORDS.is_dir():
        return []
    cleaned = []
    with _locked():
        for path in sorted(RECORDS.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                pid, started = record["owner"]
            except (OSError, ValueError, KeyError):
                continue
            if _started(pid) == started:
                continue
            for engine in record.get("engines", []):
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        [*engine["cli"], "rm", "--all", "--force", "--time", "0"],
                        env={**os.environ, **engine["env"]},
                        capture_output=True,
                        timeout=300,
                        check=False,
                    )
            inodes = set()
            for ns in record.get("netns", []):
                with contextlib.suppress(OSError):
                    inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
            mark = record["workdir"].encode()
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        if os.stat(proc / "ns" / "net").st_ino in inodes or mark in (proc / "cmdline").read_bytes():
                            os.kill(int(proc.name), signal.SIGKILL)
            for ns in record.get("netns", []):
                run(["ip", "netns", "delete", ns], check=False)
            for link in reversed(record.get("links", [])):
                run(["ip", "link", "delete", link], check=False)
            for d in [record["workdir"], *record.get("runroots", [])]:
                run(["rm", "-rf", "--one-file-system", d], check=False)
            path.unlink(missing_ok=True)
            cleaned.append(record["workdir"])
        with contextlib.suppress(OSError):
            RECORDS.rmdir()
    return cleaned


def _together(waits):
    """Calls each wait (all started already) in turn."""
    for wait in list(waits):
        wait()


def cni_config(lease_dir: Path) -> dict:
    """Podman's default network, with the host-local leases in a dir of this engine's own."""
    return {
        "cniVersion": "0.4.0",
        "name": "podman",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni-podman0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]],
                    "dataDir": str(lease_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
            {"type": "tuning"},
        ],
    }
