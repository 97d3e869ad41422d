"""Processes started by the harness: each in its own process group, logged to a file, stopped by id."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


class HarnessError(RuntimeError):
    pass


# Ports handed out come from a range of their own per pytest-xdist worker, below Linux's ephemeral
# range (32768-60999): the kernel's port-0 choice may give one port twice in a row (a Consul agent once
# got the same port for HTTP and DNS), another worker may be handed it in between, and outgoing
# connections take ephemeral ports too.
PORT_BASE, PORTS_PER_WORKER = 10000, 2500
_handed: set[int] = set()
_ports_lock = threading.Lock()
_rng = random.SystemRandom()


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) % 8 if name[2:].isdigit() else 0


def _bindable(port: int) -> bool:
    """Whether TCP and UDP (Consul's DNS takes both) can bind the port on loopback now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A loopback TCP port nothing listens on, never handed out before in this process."""
    base = PORT_BASE + _worker() * PORTS_PER_WORKER
    with _ports_lock:
        for _attempt in range(PORTS_PER_WORKER * 2):
            port = _rng.randrange(base, base + PORTS_PER_WORKER)
            if port in _handed:
                continue
            if not _bindable(port):
                continue
            _handed.add(port)
            return port
    raise HarnessError(f"no free port left in {base}-{base + PORTS_PER_WORKER - 1}")


def kill_tree(pid: int):
    """SIGKILL to pid and every descendant: Ansible runs the module in a session of its own. A process that
    ended meanwhile is skipped."""
    try:
        os.kill(pid, signal.SIGSTOP)  # no new child while the tree is walked
    except ProcessLookupError:
        return
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    for child in out.split():
        kill_tree(int(child))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def descendant(pid: int, program: str) -> int | None:
    """The first descendant of pid running program (an argument of its command line ends with it), or None."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    for child in map(int, out.split()):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace").endswith(program) for a in argv):
            return child
        found = descendant(child, program)
        if found:
            return found
    return None


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Polls check() until it returns a truthy value; raises HarnessError naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(interval)
    raise HarnessError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


class Process:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name, self.argv, self.log = name, [str(a) for a in argv], log
        self._log_file = open(log, "ab")  # noqa: SIM115 - open for the life of the process
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, check, timeout: float = 120):
        def ready():
            if not self.alive():
                raise HarnessError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            return check()

        try:
            return wait_for(ready, timeout, f"{self.name} to answer")
        except HarnessError as e:
            if self.alive():
                raise HarnessError(f"{e}\n{self.tail()}") from None
            raise

    def signal(self, sig: int):
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10):
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        # Children that left the group's leader behind (daemons) are killed with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log_file.close()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])
