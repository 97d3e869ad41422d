"""A run killed with SIGKILL closes nothing: the next MultiHost removes what it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import multihost
from harness.proc import HarnessError, wait_for

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import sys, time
from harness.images import build_sample_image
from harness.multihost import MultiHost
mh = MultiHost(hosts=1).__enter__()
host = mh.host(1)
client = host.client()
client.containers.run(build_sample_image(client, "1"), detach=True, ports={"8080/tcp": (host.address, None)})
print("STACK", mh.tag, mh.stack.workdir, flush=True)
time.sleep(300)
"""


def _leftovers(tag: str, workdir: str) -> dict:
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"{multihost.PREFIX}-{tag}")]
    links = [
        line.split(": ")[1].split("@")[0]
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
        if f"{multihost.PREFIX}-{tag}" in line
    ]
    procs = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if workdir.encode() in (proc / "cmdline").read_bytes():
                    procs.append(int(proc.name))
            except OSError:
                pass
    return {"netns": netns, "links": links, "processes": procs, "workdir": Path(workdir).exists()}


def test_sweep_removes_what_a_killed_run_left(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT / '.build' / 'collections'}"}
    out = tmp_path / "child.out"
    with open(out, "w") as f:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:

        def started():
            if child.poll() is not None:
                raise HarnessError(f"the child's stack failed:\n{out.read_text()}")
            return next((line.split()[1:] for line in out.read_text().splitlines() if line.startswith("STACK ")), None)

        tag, workdir = wait_for(started, 90, "the child's stack")
        record = json.loads((multihost.RECORDS / f"{tag}.json").read_text())
        assert record["owner"][0] == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        left = _leftovers(tag, workdir)
        assert left["netns"] and left["links"] and left["processes"] and left["workdir"], left
        # Another stack starting now (xdist) may sweep it first: either way it is gone.
        cleaned = multihost.sweep()
        assert workdir in cleaned or not (multihost.RECORDS / f"{tag}.json").exists()
        wait_for(lambda: _leftovers(tag, workdir)["processes"] == [], 10, "the killed run's processes gone")
        assert _leftovers(tag, workdir) == {"netns": [], "links": [], "processes": [], "workdir": False}
        assert not (multihost.RECORDS / f"{tag}.json").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        multihost.sweep()
