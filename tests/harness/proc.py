"""Processes started by the harness: each in its own process group, logged to a file, stopped by id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class HarnessError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
