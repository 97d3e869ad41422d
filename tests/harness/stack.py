"""The real stack on loopback: Consul, HAProxy, Prometheus, Alertmanager, a Docker API engine, moto.

A Stack owns a work directory, every process it starts and every cleanup it registers;
close() undoes all of it in reverse order, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .proc import HarnessError, Process, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
COLLECTIONS = ROOT / ".build" / "collections"
# The environment the daemons run in: the collection link of `make collection-link` on the path.
DAEMON_ENV = {"PYTHONPATH": str(COLLECTIONS)}


def daemon(name: str) -> list:
    """The argv of a Skynet daemon as the runtime role's bin/NAME runs it (plugins/module_utils/_daemon.py)."""
    return [sys.executable, "-m", "ansible_collections.cyberdyne.skynet.plugins.module_utils._daemon", name]


def _get_ok(url: str, **kw) -> bool:
    return requests.get(url, timeout=2, **kw).ok


def _which(name: str, *candidates: Path) -> str:
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} is not installed: run `make deps`")
    return found


@dataclass
class Stack:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="skynet-stack-")))
    processes: list[Process] = field(default_factory=list)
    _cleanups: list = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        p = self.workdir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def start(self, name: str, argv: list, env: dict | None = None) -> Process:
        proc = Process(name, argv, self.path("logs", f"{name}.log"), env=env, cwd=self.workdir)
        self.processes.append(proc)
        self.on_close(proc.stop)
        return proc

    def on_close(self, fn):
        self._cleanups.append(fn)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(p.tail(lines) for p in self.processes)

    def close(self):
        errors = []
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning, report at the end
                errors.append(f"{getattr(fn, '__qualname__', fn)}: {e}")
        # conmon runs `podman ... container cleanup` after a container exits, which writes into the
        # engine's storage again: the work dir goes once nothing naming it runs any more. What is
        # still there after the wait is killed and named; the leftovers step of make test is the gate.
        left = self._wait_processes_gone(30)
        if left:
            warnings.warn(f"processes of {self.workdir} still running after 30 s were killed: {left}", stacklevel=2)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise HarnessError("cleanup failed: " + "; ".join(errors))

    def _processes(self) -> list[int]:
        """Pids of the processes whose command line names the work dir."""
        mark, pids = str(self.workdir).encode(), []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (proc / "cmdline").read_bytes():
                        pids.append(int(proc.name))
        return pids

    def _wait_processes_gone(self, timeout: float) -> list[str]:
        """Waits for them to exit; SIGKILLs those left after timeout and returns their command lines."""
        deadline = time.monotonic() + timeout
        while (left := self._processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = []
        for pid in left:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                killed.append(f"{pid} {cmdline[:200]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    # -- components -------------------------------------------------------------------------

    def consul(self, name: str = "consul", acl: bool = False, tls: bool = False, join: Consul | None = None) -> Consul:
        """A dev agent; with acl, ACLs enabled with default deny and a management token (Consul.token); with
        tls, HTTPS on Consul.https_url with a certificate of a CA made by `consul tls` (Consul.ca_file); with
        join, a client agent (not -dev) in the cluster of that agent, as a host's agent is."""
        ports = {k: free_port() for k in ("http", "dns", "serf_lan", "serf_wan", "server")}
        https = free_port() if tls else -1
        config = {
            "node_name": name,
            "datacenter": "dc1",
            "data_dir": str(self.path(name, "data")),
            "bind_addr": "127.0.0.1",
            "advertise_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": {**ports, "grpc": -1, "https": https},
            "ui": True,
            "disable_update_check": True,
            "log_level": "INFO",
            "enable_local_script_checks": False,
            "telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True},
        }
        if join is not None:
            config.update(server=False, retry_join=[f"127.0.0.1:{join.serf_lan_port}"])
        token = str(uuid.uuid4()) if acl else None
        if acl:
            config["acl"] = {"enabled": True, "default_policy": "deny", "tokens": {"master": token, "agent": token}}
        binary = _which("consul", TOOLS / "consul")
        ca_file = None
        if tls:
            certs = self.path(name, "tls", "x").parent
            for argv in (["ca", "create"], ["cert", "create", "-server", "-dc=dc1", "-additional-ipaddress=127.0.0.1"]):
                subprocess.run([binary, "tls", *argv], cwd=certs, check=True, capture_output=True, timeout=30)
            ca_file = str(certs / "consul-agent-ca.pem")
            config.update(
                ca_file=ca_file,
                cert_file=str(certs / "dc1-server-consul-0.pem"),
                key_file=str(certs / "dc1-server-consul-0-key.pem"),
            )
        cfg = self.path(name, "consul.json")
        cfg.write_text(json.dumps(config))
        proc = self.start(name, [binary, "agent", *(() if join else ("-dev",)), f"-config-file={cfg}"])
        c = Consul(proc, ports["http"], ports["dns"], token, https_port=https if tls else None, ca_file=ca_file)
        c.serf_lan_port = ports["serf_lan"]
        proc.wait_ready(lambda: requests.get(f"{c.url}/v1/status/leader", timeout=2).json())
        if acl:
            # The dev server elects itself before its ACL system answers.
            wait_for(lambda: _get_ok(f"{c.url}/v1/acl/token/self", headers=c.headers), 30, "Consul's ACLs")
        return c

    def haproxy(self, body: str, name: str = "haproxy") -> HAProxy:
        h = HAProxy(self, name, self.path(name, "haproxy.cfg"), self.path(name, "admin.sock"), free_port())
        h.write(body)
        binary = _which("haproxy")
        proc = self.start(name, [binary, "-W", "-db", "-f", h.cfg])
        h.process = proc
        proc.wait_ready(lambda: _get_ok(f"{h.stats_url}/metrics"))
        return h

    def rendered_haproxy(self, services: list, consul: Consul, name: str = "haproxy", **render_options) -> HAProxy:
        """HAProxy on the whole config the collection renders for `services` (as roles/haproxy does),
        its map files (every service on its default color) and admin socket in the work dir."""
        from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render, render_map

        h = HAProxy(self, name, self.path(name, "haproxy.cfg"), self.path(name, "admin.sock"), free_port())
        h.map_dir = self.path(name, "maps", "live.map").parent
        (h.map_dir / "live.map").write_text(render_map(services))
        (h.map_dir / "preview.map").write_text(render_map(services, preview=True))
        h.cfg.write_text(
            render(
                services,
                consul_dns=f"127.0.0.1:{consul.dns_port}",
                map_dir=str(h.map_dir),
                stats_socket=str(h.socket),
                stats_bind=f"127.0.0.1:{h.stats_port}",
                **render_options,
            )
        )
        h.check()
        h.process = self.start(name, [_which("haproxy"), "-W", "-db", "-f", h.cfg])
        h.process.wait_ready(lambda: _get_ok(f"{h.stats_url}/metrics"))
        return h

    def prometheus(
        self, config: dict, rules: dict | None = None, consul_sd: bool = False, name: str = "prometheus"
    ) -> Prometheus:
        binary = _which("prometheus-consul-sd", TOOLS / "prometheus-consul-sd") if consul_sd else _which("prometheus")
        port = free_port()
        cfg = self.path(name, "prometheus.yml")
        if rules:
            rules_file = self.path(name, "rules.yml")
            rules_file.write_text(json.dumps(rules))
            config = {**config, "rule_files": [str(rules_file)]}
        cfg.write_text(json.dumps(config))
        proc = self.start(
            name,
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.path(name, 'data')}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
        )
        p = Prometheus(proc, f"http://127.0.0.1:{port}", cfg)
        proc.wait_ready(lambda: _get_ok(f"{p.url}/-/ready"))
        return p

    def alertmanager(self, config: dict | None = None, name: str = "alertmanager") -> Alertmanager:
        port = free_port()
        config = config or {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}
        cfg = self.path(name, "alertmanager.yml")
        cfg.write_text(json.dumps(config))
        binary = _which("prometheus-alertmanager")
        proc = self.start(
            name,
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.path={self.path(name, 'data')}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
        )
        a = Alertmanager(proc, f"http://127.0.0.1:{port}")
        proc.wait_ready(lambda: _get_ok(f"{a.url}/-/ready"))
        return a

    def podman(self, name: str = "podman") -> Engine:
        """A Docker API engine served by Podman, with storage of its own inside the work dir."""
        podman = _which("podman")
        # Podman refuses a runroot longer than 50 characters: it gets a short dir of its own.
        runroot = tempfile.mkdtemp(prefix="skynet-stack-", dir="/tmp")
        self.on_close(lambda: shutil.rmtree(runroot, ignore_errors=True))
        # Its own tmpdir too: engines sharing /run/libpod share events, exit files and locks.
        storage = [
            *("--root", str(self.path(name, "root")), "--runroot", runroot, "--tmpdir", f"{runroot}/libpod"),
            *("--network-config-dir", str(self.path(name, "networks")), "--storage-driver", "vfs"),
        ]
        # Podman leaves the tarballs of API image imports (api_load.tar*) in its TMPDIR: the work dir's.
        env = {"CONTAINERS_CONF": str(CONTAINERS_CONF), "TMPDIR": str(self.path(name, "tmp", ".keep").parent)}
        sock = self.path(name, "docker.sock")
        cli = [podman, *storage]

        def remove_everything():
            # `rm` tears each container's network down (netns, port-forwarding rules); `system reset`
            # would not, and a leaked forwarding rule captures a loopback port that the harness may
            # later give to another component. So rm gets all the time it needs (vfs removals of
            # hundreds of containers are slow) before the reset.
            run_env = {**os.environ, **env}
            steps = ((["rm", "--all", "--force", "--time", "0"], 900), (["system", "reset", "--force"], 120))
            for args, limit in steps:
                subprocess.run([*cli, *args], env=run_env, capture_output=True, timeout=limit, check=False)

        # Registered before the service so containers go even if the service dies first.
        self.on_close(remove_everything)
        proc = self.start(name, [*cli, "system", "service", "--time=0", f"unix://{sock}"], env=env)
        e = Engine(proc, f"unix://{sock}", cli, env)
        proc.wait_ready(lambda: e.client().ping())
        return e

    def moto(self, name: str = "moto") -> Moto:
        port = free_port()
        binary = _which("moto_server", ROOT / ".venv" / "bin" / "moto_server")
        proc = self.start(name, [binary, "-H", "127.0.0.1", "-p", str(port)])
        m = Moto(proc, f"http://127.0.0.1:{port}")
        proc.wait_ready(lambda: _get_ok(f"{m.url}/moto-api/"))
        return m


@dataclass
class Consul:
    process: Process
    http_port: int
    dns_port: int
    token: str | None = None  # the management token when ACLs are on
    https_port: int | None = None  # with TLS: HTTPS there, with a certificate of the CA in ca_file
    ca_file: str | None = None
    serf_lan_port: int = 0  # what another agent joins

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def headers(self) -> dict:
        return {"X-Consul-Token": self.token} if self.token else {}

    def api(self, method: str, path: str, **kw):
        kw["headers"] = {**self.headers, **kw.get("headers", {})}
        r = requests.request(method, f"{self.url}/v1/{path}", timeout=10, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def acl_token(self, rules: str) -> str:
        """The secret of a new token whose one policy holds these ACL rules (HCL)."""
        policy = self.api("PUT", "acl/policy", json={"Name": f"policy-{uuid.uuid4().hex[:8]}", "Rules": rules})
        return self.api("PUT", "acl/token", json={"Policies": [{"ID": policy["ID"]}]})["SecretID"]

    def dig(self, name: str, rtype: str = "SRV") -> list[str]:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.dns_port), "+short", "+time=1", "+tries=1", name, rtype],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return [line for line in out.stdout.splitlines() if line and not line.startswith(";")]


@dataclass
class HAProxy:
    stack: Stack
    name: str
    cfg: Path
    socket: Path
    stats_port: int
    process: Process | None = None
    map_dir: Path | None = None  # rendered_haproxy's
    checked: str = ""  # what the last `haproxy -c` said

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}"

    def render(self, body: str) -> str:
        return f"""global
    stats socket {self.socket} mode 600 level admin expose-fd listeners
    log stderr format raw local0 notice

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend stats
    bind 127.0.0.1:{self.stats_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats

{body}
"""

    def write(self, body: str):
        self.cfg.write_text(self.render(body))
        self.check()

    def check(self) -> str:
        """haproxy -c on the config: its output (kept in `checked`), or HarnessError with it."""
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True, check=False)
        if check.returncode:
            raise HarnessError(f"haproxy rejects the config:\n{check.stdout}{check.stderr}")
        self.checked = check.stdout + check.stderr
        return self.checked

    def command(self, cmd: str) -> str:
        return admin_command(self.socket, cmd)


@dataclass
class Prometheus:
    process: Process
    url: str
    config: Path

    def query(self, promql: str):
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def wait_query(self, promql: str, timeout: float = 30):
        return wait_for(lambda: self.query(promql), timeout, f"Prometheus to answer {promql!r}", interval=0.5)


@dataclass
class Alertmanager:
    process: Process
    url: str


@dataclass
class Engine:
    process: Process
    docker_host: str
    cli: list
    env: dict

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=60)

    def podman(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.cli, *args], env={**os.environ, **self.env}, capture_output=True, text=True, check=True, **kw
        )


@dataclass
class Moto:
    process: Process
    url: str

    def boto3(self, service: str = "ec2"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def consul_backend(name: str, frontend_port: int, consul_dns_port: int, color: str = "blue", slots: int = 8) -> str:
    """HAProxy config of one HTTP service whose servers come from Consul DNS SRV records of one color."""
    template = f"server-template {name} {slots} _{name}._{color}.service.consul resolvers consul"
    return f"""
resolvers consul
    nameserver consul 127.0.0.1:{consul_dns_port}
    accepted_payload_size 8192
    hold valid 1s
    hold obsolete 0s
    timeout resolve 1s
    timeout retry 1s

frontend {name}
    bind 127.0.0.1:{frontend_port}
    default_backend {name}

backend {name}
    balance roundrobin
    option redispatch
    retries 3
    retry-on all-retryable-errors
    {template} resolve-opts allow-dup-ip init-addr none check inter 1s
"""


def admin_command(socket_path, cmd: str) -> str:
    """HAProxy's answer to one command on its admin socket, through socat (not the code under test)."""
    out = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{socket_path}"],
        input=cmd + "\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return out.stdout


def remove_containers(containers, timeout: float = 15):
    """Removes each container; Podman on vfs may hold a stopped container's shm for a moment ("busy")."""
    import docker.errors

    def remove(container):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            if "resource busy" in str(e):
                return False
            raise
        return True

    for c in containers:
        wait_for(lambda c=c: remove(c), timeout, f"container {c.short_id} removed", interval=0.5)
