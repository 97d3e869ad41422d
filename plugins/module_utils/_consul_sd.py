# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consul discovery for Prometheus builds without consul_sd_configs (Debian's own package).

Writes one file_sd JSON file per Consul service from ``/v1/catalog/services`` and
``/v1/health/service/<name>``, with the very ``__meta_consul_*`` labels consul_sd_configs
gives, so one set of relabel_configs serves both. Prometheus reads the files as they change.
Standard library only. ``skynet-consul-sd`` (_daemon.py, from the runtime role's copy of the collection)
runs ``main()``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
import urllib.parse

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _daemon
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_http import ConsulHTTP, ConsulHTTPError

# Consul's own order of precedence (api.HealthChecks.AggregatedStatus).
HEALTH_ORDER = ("maintenance", "critical", "warning", "passing")
MAINTENANCE_CHECKS = ("_node_maintenance", "_service_maintenance:")
LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")
FILE_INVALID = re.compile(r"[^A-Za-z0-9_.-]")
TAG_SEPARATOR = ","


class ConsulSdError(Exception):
    pass


# -- pure: Consul entries -> file_sd target groups ----------------------------------------------


def label_name(key):
    """A Prometheus label name part, as consul_sd sanitizes meta keys."""
    return LABEL_INVALID.sub("_", str(key))


def aggregated_health(checks):
    """passing, warning, critical or maintenance: the worst of a node's and a service's checks."""
    seen = set()
    for check in checks or ():
        status = check.get("Status", "")
        check_id = check.get("CheckID", "")
        if check_id == MAINTENANCE_CHECKS[0] or check_id.startswith(MAINTENANCE_CHECKS[1]):
            status = "maintenance"
        if status not in HEALTH_ORDER:
            return ""
        seen.add(status)
    for status in HEALTH_ORDER:
        if status in seen:
            return status
    return "passing"


def join_host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def target_group(service, entry):
    """One target group of /v1/health/service/<service> entry, labelled as consul_sd does."""
    node = entry.get("Node") or {}
    svc = entry.get("Service") or {}
    address = svc.get("Address") or node.get("Address") or ""
    port = svc.get("Port") or 0
    tags = svc.get("Tags") or []
    labels = {
        "__meta_consul_service": service,
        "__meta_consul_service_id": svc.get("ID", ""),
        "__meta_consul_service_address": svc.get("Address", ""),
        "__meta_consul_service_port": str(port),
        "__meta_consul_address": node.get("Address", ""),
        "__meta_consul_node": node.get("Node", ""),
        "__meta_consul_dc": node.get("Datacenter", ""),
        "__meta_consul_health": aggregated_health(entry.get("Checks")),
        "__meta_consul_tags": TAG_SEPARATOR + TAG_SEPARATOR.join(tags) + TAG_SEPARATOR,
    }
    for prefix, values in (
        ("__meta_consul_service_metadata_", svc.get("Meta")),
        ("__meta_consul_metadata_", node.get("Meta")),
        ("__meta_consul_tagged_address_", node.get("TaggedAddresses")),
    ):
        for key, value in sorted((values or {}).items()):
            labels[prefix + label_name(key)] = str(value)
    return {"targets": [join_host_port(address, port)], "labels": labels}


def target_groups(service, entries):
    groups = [target_group(service, e) for e in entries or ()]
    return sorted(groups, key=lambda g: (g["targets"][0], g["labels"]["__meta_consul_service_id"]))


def file_name(service):
    """A file name of its own for each service name, also for names with unusual characters."""
    safe = FILE_INVALID.sub("_", service)
    if safe != service or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(service.encode()).hexdigest()[:8]}"
    return f"{safe}.json"


def render(groups):
    return json.dumps(groups, indent=1, sort_keys=True) + "\n"


def write_atomic(path, text, mode=0o644):
    """Replaces path with text in one rename, so readers never see half a file."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_files(directory, wanted):
    """Makes directory hold exactly the *.json files of wanted ({name: text}); (written, removed)."""
    written, removed = [], []
    for name, text in sorted(wanted.items()):
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        write_atomic(path, text)
        written.append(name)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and name not in wanted:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return written, removed


# -- Consul's HTTP API ------------------------------------------------------------------------------


class Catalog:
    """The two read-only calls the discovery needs; every failure is one ConsulSdError."""

    def __init__(self, url, token=None, datacenter=None, ca_file=None, timeout=10.0, stale=True):
        try:
            self.http = ConsulHTTP(url, token=token, ca_file=ca_file, timeout=timeout)
        except ConsulHTTPError as e:
            raise ConsulSdError(str(e)) from e
        self.url, self.datacenter, self.stale = self.http.url, datacenter, stale

    def _get(self, path):
        params = {}
        if self.stale:
            params["stale"] = ""
        if self.datacenter:
            params["dc"] = self.datacenter
        try:
            return self.http.get(path, params)
        except ConsulHTTPError as e:
            raise ConsulSdError(str(e)) from e

    def services(self):
        return sorted(self._get("catalog/services") or {})

    def health(self, service):
        return self._get(f"health/service/{urllib.parse.quote(service, safe='')}") or []


def sync(catalog, directory):
    """One pass: every service's targets into its file. Nothing is written when Consul fails."""
    wanted, targets = {}, 0
    for service in catalog.services():
        groups = target_groups(service, catalog.health(service))
        targets += len(groups)
        wanted[file_name(service)] = render(groups)
    written, removed = write_files(directory, wanted)
    return {"services": len(wanted), "targets": targets, "written": written, "removed": removed}


def metrics_text(last_success, services, targets, errors):
    lines = []
    for name, kind, text, value in (
        ("last_success_timestamp_seconds", "gauge", "Unix time of the last pass that read Consul.", last_success),
        ("services", "gauge", "Consul services written as file_sd files.", services),
        ("targets", "gauge", "Targets written as file_sd files.", targets),
        ("errors_total", "counter", "Passes that failed to read Consul since the daemon started.", errors),
    ):
        metric = f"skynet_consul_sd_{name}"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    def __init__(self, catalog, directory, interval=5.0, metrics_file=None, log=None, once=False):
        self.catalog, self.directory, self.interval = catalog, directory, interval
        self.metrics_file, self.once = metrics_file, once
        self.log = log or logging.getLogger("skynet-consul-sd")
        self.stopping = threading.Event()
        self.last_success, self.services, self.targets, self.errors = 0.0, 0, 0, 0
        self._failing = False

    def step(self):
        try:
            result = sync(self.catalog, self.directory)
        except ConsulSdError as e:
            self.errors += 1
            if not self._failing:
                self.log.warning("%s; keeping the last targets, retrying every %gs", e, self.interval)
            self._failing = True
            return False
        if self._failing:
            self.log.info("Consul answers again")
        self._failing = False
        self.last_success = round(time.time(), 3)
        self.services, self.targets = result["services"], result["targets"]
        if result["written"] or result["removed"]:
            self.log.info(
                "%d services, %d targets: wrote %s, removed %s",
                self.services,
                self.targets,
                ", ".join(result["written"]) or "-",
                ", ".join(result["removed"]) or "-",
            )
        return True

    def write_metrics(self):
        if self.metrics_file:
            try:
                write_atomic(
                    self.metrics_file, metrics_text(self.last_success, self.services, self.targets, self.errors)
                )
            except OSError as e:
                self.log.warning("cannot write %s: %s", self.metrics_file, e)

    def run(self):
        while not self.stopping.is_set():
            ok = self.step()
            self.write_metrics()
            if self.once:
                return 0 if ok else 1
            self.stopping.wait(self.interval)
        return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="skynet-consul-sd",
        description="Writes Prometheus file_sd files of every Consul service, labelled as consul_sd_configs does.",
    )
    parser.add_argument("--consul-url", default=os.environ.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500")
    parser.add_argument(
        "--consul-token",
        default=os.environ.get("CONSUL_HTTP_TOKEN"),
        help="ACL token; prefer the CONSUL_HTTP_TOKEN environment variable (command lines are visible to all)",
    )
    parser.add_argument("--datacenter", default="", help="the datacenter to read; the agent's by default")
    parser.add_argument("--ca-file", default=None, help="CA certificates for an https Consul URL")
    parser.add_argument("--output-dir", required=True, help="where the <service>.json files go")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between two passes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a call to Consul may take")
    parser.add_argument("--metrics-file", default="", help="node_exporter textfile (.prom) for the daemon's metrics")
    parser.add_argument("--once", action="store_true", help="one pass, then exit (non-zero when it failed)")
    _daemon.add_log_level(parser)
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be more than 0")
    if not re.match(r"^https?://[^/]+", args.consul_url):
        parser.error("--consul-url must be an http(s) URL")
    if args.metrics_file and not args.metrics_file.endswith(".prom"):
        parser.error("--metrics-file must end in .prom (node_exporter's textfile collector reads only those)")
    return args


def main(argv=None):
    args = parse_args(argv)
    _daemon.setup_logging(args.log_level)
    log = logging.getLogger("skynet-consul-sd")
    if not os.path.isdir(args.output_dir):
        log.error("the output directory %s does not exist", args.output_dir)
        return 2
    try:
        catalog = Catalog(args.consul_url, args.consul_token, args.datacenter, args.ca_file, args.timeout)
    except (ConsulSdError, OSError) as e:
        log.error("%s", e)
        return 2
    daemon = Daemon(catalog, args.output_dir, args.interval, args.metrics_file or None, log, args.once)

    def stop(signum, frame):
        daemon.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "writing file_sd files of Consul at %s%s to %s every %gs",
        catalog.url,
        f" (datacenter {args.datacenter})" if args.datacenter else "",
        args.output_dir,
        args.interval,
    )
    return daemon.run()
