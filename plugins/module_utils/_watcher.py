# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""skynet-watcher: runs the autoscale cycle for one service as soon as something asks for it.

Three sources, each naming a service: a wake record (skynet/wake/<service>, written by an activator,
seen through a blocking query), an Alertmanager notification (POST /alertmanager: every firing alert
with a `service` label) and an operator's request (POST /run/<service>). Each triggers the cycle the
timer runs, limited to that service, so the Consul lock of the service keeps the watcher, the timer and
AWX from acting twice. The cycle is either resident (`cycle`: skynet_scale's arguments, run by the
module's own code in a child forked from a warm server, no ansible-playbook start-up per event) or a
command (`command`: the autoscale playbook with skynet_autoscale_limit, as AWX runs it). One run per
service at a time; triggers that arrive during a run make one more run after it. The timer stays the
safety net: killing the watcher only slows reactions down to its period. Standard library only (the
resident cycle's children import the module's libraries).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _daemon, _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_http import (
    ConsulHTTP,
    ConsulHTTPError,
    read_token,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._forked import Forked, ForkedError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import problem, service_name

SOURCES = ("wake", "alert", "operator")
WAIT = 30  # seconds of one blocking query
RECENT = 60  # a wake record older than this when the watcher starts is the timer's to answer
SERVICE = "{service}"
TIMEOUT = 600  # seconds a cycle may take before it is killed (a hung run must not hold its service for good)
# What the resident cycle's server imports once, so that each cycle starts at once.
PRELOAD = (f"{_daemon.PACKAGE}._watcher", f"{_daemon.PACKAGE}._scale_cycle")

log = logging.getLogger("skynet-watcher")


# -- pure: what a source says ------------------------------------------------------------------


def new_wakes(entries, seen):
    """(services whose wake record is newer than seen, the indexes now) from {key: (value, ModifyIndex)}."""
    services, now_seen = [], dict(seen)
    for key, (_value, index) in sorted(entries.items()):
        name = _wake.service_of(key)
        if name and index > seen.get(key, 0):
            services.append(name)
        now_seen[key] = index
    return services, now_seen


def recent_wakes(entries, now, recent=RECENT):
    """Services with a wake record written in the last `recent` seconds (those left when the watcher starts)."""
    out = []
    for key, (value, _index) in sorted(entries.items()):
        name = _wake.service_of(key)
        at = value.get("at") if isinstance(value, dict) else None
        if name and isinstance(at, (int, float)) and now - at < recent:
            out.append(name)
    return out


def alerted_services(payload):
    """Services of the firing alerts of an Alertmanager webhook payload (its `service` label)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise SkynetError("an Alertmanager notification is a JSON object with a list of alerts")
    found = []
    for alert in payload["alerts"]:
        if not isinstance(alert, dict):
            continue
        labels = alert.get("labels")
        name = labels.get("service") if isinstance(labels, dict) else None
        if alert.get("status", "firing") == "firing" and isinstance(name, str) and name not in found:
            found.append(name)
    return found


def command_for(template, service):
    """The argv of the cycle for service: every {service} in the template's words replaced."""
    return [word.replace(SERVICE, service) for word in template]


# -- runs ---------------------------------------------------------------------------------------


class CommandCycle:
    """The cycle as a command ({service} in its words), e.g. ansible-playbook; killed with its children
    past the timeout."""

    def __init__(self, template, timeout=TIMEOUT):
        self.template, self.timeout = list(template), timeout

    def __call__(self, service):
        argv = command_for(self.template, service)
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        ) as proc:
            try:
                out, _err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                log.warning("%s: %s did not end within %gs: killed", service, argv[0], self.timeout)
                return False
        if proc.returncode != 0:
            log.warning("%s: %s failed (rc %d): %s", service, argv[0], proc.returncode, out[-2000:])
        return proc.returncode == 0


def _resident_cycle(arguments):
    """In a forked child: one skynet_scale cycle, its result without the no_log values."""
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale_cycle import run_arguments

    return run_arguments(arguments)


def _check_arguments(arguments):
    """In a forked child: the problems of skynet_scale arguments, None when there are none."""
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale_cycle import validate

    try:
        validate(arguments)
    except SkynetError as e:
        return str(e)
    return None


class ResidentCycle:
    """The cycle of skynet_scale run by the module's own code (its argument spec and defaults, the Consul lock,
    the records in KV), each run in a child forked from a warm server that preloaded the module's libraries;
    the Consul token is given to the child, never in an argv or a log."""

    def __init__(self, arguments, token=None, timeout=TIMEOUT):
        self.arguments = dict(arguments)
        if token:
            self.arguments["consul_token"] = token
        self.forked = Forked(PRELOAD, timeout)

    def check(self):
        """Starts the server and checks the arguments in it (SkynetError naming the problems): the watcher's
        first cycle then starts at once."""
        missing = self.forked.start()
        if missing:
            log.warning("the cycles' server could not preload %s: each cycle imports them", ", ".join(missing))
        problems = self.forked.call(_check_arguments, {**self.arguments, "limit": []})
        if problems:
            raise SkynetError(problems)

    def __call__(self, service):
        try:
            result = self.forked.call(_resident_cycle, {**self.arguments, "limit": [service]})
        except ForkedError as e:
            log.warning("%s: %s", service, e)
            return False
        for d in result.get("decisions") or ():
            log.info(
                "%s: %s %s -> %s (%s)",
                d["service"],
                d["action"],
                d.get("current", "?"),
                d.get("desired", "?"),
                d.get("reason", ""),
            )
        if result.get("msg"):
            log.warning("%s: the cycle failed: %s", service, result["msg"])
            return False
        return True


class Runner:
    """One run per service at a time, at most `parallel` at once; triggers during a run coalesce into one more.
    cycle(service) runs one cycle of service and says whether it went well."""

    def __init__(self, cycle, services=None, parallel=4, clock=time.monotonic):
        self.cycle, self.services = cycle, set(services or ())
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="cycle")
        self.lock = threading.Lock()
        self.running, self.again = set(), set()
        self.counts = {"triggers": {}, "runs": {"ok": 0, "failed": 0}, "ignored": 0}
        self.last_seconds = {}

    def trigger(self, service, source):
        """Asks for a cycle of service; False (and nothing run) for a name that is not a service watched."""
        if problem(service_name, service, "service") or (self.services and service not in self.services):
            with self.lock:
                self.counts["ignored"] += 1
            log.warning("%s asked for %r, which is not a service this watcher runs", source, service)
            return False
        with self.lock:
            self.counts["triggers"][source] = self.counts["triggers"].get(source, 0) + 1
            if service in self.running:
                self.again.add(service)
                return True
            self.running.add(service)
        log.info("%s: cycle asked for by %s", service, source)
        self.pool.submit(self._cycle, service)
        return True

    def _cycle(self, service):
        while True:
            start = self.clock()
            try:
                ok = self.cycle(service)
            except Exception:  # a runner that fails must not stop the service's future runs
                log.exception("%s: the cycle could not be run", service)
                ok = False
            took = self.clock() - start
            log.info("%s: cycle %s in %.1fs", service, "done" if ok else "failed", took)
            with self.lock:
                self.counts["runs"]["ok" if ok else "failed"] += 1
                self.last_seconds[service] = took
                if service not in self.again:
                    self.running.discard(service)
                    return
                self.again.discard(service)

    def metrics_text(self):
        with self.lock:
            triggers = self.counts["triggers"]
            lines = [
                "# HELP skynet_watcher_triggers_total Cycles asked for, by source.",
                "# TYPE skynet_watcher_triggers_total counter",
                *(f'skynet_watcher_triggers_total{{source="{s}"}} {triggers.get(s, 0)}' for s in SOURCES),
                "# HELP skynet_watcher_runs_total Cycles run, by result.",
                "# TYPE skynet_watcher_runs_total counter",
                *(f'skynet_watcher_runs_total{{result="{r}"}} {n}' for r, n in sorted(self.counts["runs"].items())),
                "# HELP skynet_watcher_ignored_total Requests naming no service this watcher runs.",
                "# TYPE skynet_watcher_ignored_total counter",
                f"skynet_watcher_ignored_total {self.counts['ignored']}",
                "# HELP skynet_watcher_running Cycles running now.",
                "# TYPE skynet_watcher_running gauge",
                f"skynet_watcher_running {len(self.running)}",
            ]
        return "\n".join(lines) + "\n"

    def close(self):
        self.pool.shutdown(wait=True)


# -- sources -------------------------------------------------------------------------------------


def watch_wakes(consul, runner, stop, clock=time.time):
    """Triggers a cycle for every new wake record until stop is set."""
    index, seen, first = 0, {}, True
    while not stop.is_set():
        try:
            entries, new_index = consul.kv_tree(_wake.PREFIX, index, wait=None if first else WAIT)
        except ConsulHTTPError as e:
            log.warning("cannot read the wake records: %s", e)
            stop.wait(1)
            continue
        index = new_index if new_index > index else 0
        if first:
            services, seen = recent_wakes(entries, clock()), {k: i for k, (_v, i) in entries.items()}
            first = False
        else:
            services, seen = new_wakes(entries, seen)
        for service in services:
            runner.trigger(service, "wake")


def _handler(runner):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status, text):
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.split("?")[0] == "/metrics":
                self._answer(200, runner.metrics_text())
            else:
                self._answer(404, "POST /alertmanager or /run/SERVICE; GET /metrics\n")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20))
            if self.path == "/alertmanager":
                try:
                    services = alerted_services(json.loads(body or b"null"))
                except (ValueError, SkynetError) as e:
                    self._answer(400, f"{e}\n")
                    return
                taken = [s for s in services if runner.trigger(s, "alert")]
                self._answer(200, f"cycles asked for: {', '.join(taken) or 'none'}\n")
            elif self.path.startswith("/run/"):
                name = self.path[len("/run/") :]
                if runner.trigger(name, "operator"):
                    self._answer(202, f"a cycle of {name} is asked for\n")
                else:
                    self._answer(404, f"{name!r} is not a service this watcher runs\n")
            else:
                self._answer(404, "POST /alertmanager or /run/SERVICE\n")

        def log_message(self, fmt, *args):
            log.debug("webhook: " + fmt, *args)

    return Handler


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise SkynetError(f"cannot read the watcher's configuration {path}: {e}") from e
    errors = []
    if not isinstance(raw, dict):
        raise SkynetError("the watcher's configuration must be a JSON object")
    command, cycle = raw.get("command"), raw.get("cycle")
    if (command is None) == (cycle is None):
        errors.append("give either cycle (skynet_scale's arguments, run resident) or command (a command per run)")
    elif cycle is not None and not isinstance(cycle, dict):
        errors.append("cycle must be a mapping of skynet_scale's arguments")
    elif cycle is not None and ("limit" in cycle or "consul_token" in cycle):
        errors.append("cycle must not say limit (each run is its service's) or consul_token (see token_file)")
    elif command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(w, str) for w in command)
    ):
        errors.append("command must be a list of words, {service} standing for the service")
    elif command is not None and not any(SERVICE in w for w in command):
        errors.append("command never says {service}: every run would be the whole cycle")
    timeout = raw.get("timeout", TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        errors.append("timeout must be a number of seconds above 0")
    if not isinstance(raw.get("consul_url"), str):
        errors.append("consul_url is missing")
    services = raw.get("services") or []
    if not isinstance(services, list) or any(problem(service_name, s, "services") for s in services):
        errors.append("services must be a list of service names")
    if errors:
        raise SkynetError("invalid watcher configuration: " + "; ".join(errors))
    return raw, read_token(raw.get("token_file"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skynet-watcher", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the JSON configuration (the autoscaler role renders it)")
    parser.add_argument("--check", action="store_true", help="check the configuration and exit")
    _daemon.add_log_level(parser)
    args = parser.parse_args(argv)
    _daemon.setup_logging(args.log_level)
    try:
        config, token = load(args.config)
        consul = ConsulHTTP(config["consul_url"], token=token, ca_file=config.get("ca_cert") or None)
    except (SkynetError, ConsulHTTPError) as e:
        log.error("%s", e)
        return 2
    if config.get("cycle") is not None:
        cycle = ResidentCycle(config["cycle"], token, config.get("timeout", TIMEOUT))
        try:
            cycle.check()
        except SkynetError as e:
            log.error("%s: %s", args.config, e)
            return 2
    else:
        cycle = CommandCycle(config["command"], config.get("timeout", TIMEOUT))
    if args.check:
        mode = "resident cycle" if isinstance(cycle, ResidentCycle) else "command"
        services = ", ".join(config.get("services") or ["every service"])
        sys.stdout.write(f"{args.config}: {mode}, watching {services}\n")
        return 0
    runner = Runner(cycle, config.get("services"), int(config.get("parallel") or 4))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    if config.get("listen"):
        host, _colon, port = config["listen"].rpartition(":")
        server = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(runner))
        threading.Thread(target=server.serve_forever, daemon=True, name="webhook").start()
    wakes = threading.Thread(target=watch_wakes, args=(consul, runner, stop), daemon=True, name="wakes")
    wakes.start()
    log.info("watching wake records%s", f", webhook on {config['listen']}" if server else "")
    while not stop.wait(1):
        pass
    if server:
        with contextlib.suppress(OSError):
            server.shutdown()
    runner.close()
    return 0
