# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The activator's pure parts: its configuration, the sockets HAProxy reaches it on, its answers and metrics.

HAProxy hands a service's requests (HTTP) or connections (TCP) to the activator only while no instance
of the service's live color is usable: the activator is the one `backup` server of each color's backend,
on the socket socket_path(directory, service, color). _activator_server holds them, records a wake and
forwards them to the first instance that passes.
"""

from __future__ import annotations

import math

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import COLORS, problem, service_name

DEFAULT_HOLD = 30
# HAProxy waits for the activator's answer: its backend's server timeout must outlast the hold.
SERVER_TIMEOUT_MARGIN = 10
# A unix socket's path is at most 107 bytes (sun_path).
SOCKET_PATH_MAX = 107
HOLD_BUCKETS = (0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60)
REASON_HEADER = "X-Skynet-Activator"


def scales_from_zero(definition):
    """Whether a service definition may go to zero instances (scaling.min 0): the activator then holds its
    requests while it has none."""
    scaling = definition.get("scaling") if isinstance(definition, dict) else None
    return isinstance(scaling, dict) and scaling.get("min", 1) == 0


def config_for(services, **settings):
    """The activator's configuration for the service definitions (those that scale from zero), checked."""
    held = {s["name"]: {"mode": s.get("mode") or "http"} for s in services or () if scales_from_zero(s)}
    return parse_config({**settings, "services": held})


def socket_path(directory, service, color):
    return f"{str(directory).rstrip('/')}/{service}_{color}.sock"


def parse_config(raw):
    """The activator's configuration from its JSON file, checked: SkynetError naming every problem."""
    if not isinstance(raw, dict):
        raise SkynetError("the activator's configuration must be a JSON object")
    errors = []
    hold = raw.get("hold", DEFAULT_HOLD)
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not math.isfinite(hold) or hold <= 0:
        errors.append(f"hold {hold!r} is not a number of seconds above 0")
    for key in ("consul_url", "socket_dir", "node"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            errors.append(f"{key} is missing")
    services = raw.get("services")
    if not isinstance(services, dict):
        errors.append("services must map service names to {mode: http|tcp}")
        services = {}
    for name, s in services.items():
        why = problem(service_name, name, "service name")
        if why:
            errors.append(why)
        elif not isinstance(s, dict) or (s.get("mode") or "http") not in ("http", "tcp"):
            errors.append(f"{name}: mode must be http or tcp")
        elif isinstance(raw.get("socket_dir"), str):
            longest = socket_path(raw["socket_dir"], name, "green")
            if len(longest.encode()) > SOCKET_PATH_MAX:
                errors.append(f"{name}: the socket {longest} is longer than {SOCKET_PATH_MAX} bytes")
    if errors:
        raise SkynetError("invalid activator configuration: " + "; ".join(errors))
    return {
        "consul_url": raw["consul_url"],
        "ca_cert": raw.get("ca_cert") or None,
        "token_file": raw.get("token_file") or None,
        "node": raw["node"],
        "hold": float(hold),
        "socket_dir": raw["socket_dir"],
        "metrics_address": raw.get("metrics_address") or "",
        "services": {name: {"mode": s.get("mode") or "http"} for name, s in services.items()},
    }


def listeners(config):
    """[(service, color, mode, socket path)] of every socket the activator listens on."""
    out = []
    for name, s in sorted(config["services"].items()):
        out += [(name, color, s["mode"], socket_path(config["socket_dir"], name, color)) for color in COLORS]
    return out


def timed_out_reply(service, hold):
    """The HTTP answer to a request no instance came for in time (a TCP connection is closed instead)."""
    reason = f"no instance of {service} passed its health check within {hold:g}s; the wake is recorded"
    body = f"503 Service Unavailable: {reason}\n".encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"{REASON_HEADER}: {reason}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Metrics:
    """Counters of the activator by service, in Prometheus' text format."""

    COUNTERS = {
        "held_total": "Requests or connections held because the service had no usable instance.",
        "forwarded_total": "Held requests or connections forwarded to an instance.",
        "timed_out_total": "Held requests or connections no instance came for within the hold.",
        "failed_total": "Held requests or connections lost (client gone, no instance accepted the connection).",
        "wakes_total": "Wake records written to Consul.",
        "wake_errors_total": "Wake records that could not be written to Consul.",
    }

    def __init__(self):
        self.counts = {name: {} for name in self.COUNTERS}
        self.holding = {}
        self.buckets = {}  # service -> [count per bucket, +Inf count, sum]

    def add(self, counter, service, n=1):
        self.counts[counter][service] = self.counts[counter].get(service, 0) + n

    def hold(self, service, delta):
        self.holding[service] = self.holding.get(service, 0) + delta

    def observe(self, service, seconds):
        counts = self.buckets.setdefault(service, [0] * len(HOLD_BUCKETS) + [0, 0.0])
        for i, bound in enumerate(HOLD_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-2] += 1
        counts[-1] += seconds

    def text(self, services):
        lines = []
        for name, what in self.COUNTERS.items():
            lines += [f"# HELP skynet_activator_{name} {what}", f"# TYPE skynet_activator_{name} counter"]
            lines += [f'skynet_activator_{name}{{service="{s}"}} {self.counts[name].get(s, 0)}' for s in services]
        lines += [
            "# HELP skynet_activator_holding Requests or connections held now.",
            "# TYPE skynet_activator_holding gauge",
            *(f'skynet_activator_holding{{service="{s}"}} {self.holding.get(s, 0)}' for s in services),
            "# HELP skynet_activator_hold_seconds Time a forwarded request or connection was held: the cold start.",
            "# TYPE skynet_activator_hold_seconds histogram",
        ]
        for s in services:
            counts = self.buckets.get(s, [0] * len(HOLD_BUCKETS) + [0, 0.0])
            for bound, n in zip(HOLD_BUCKETS, counts, strict=False):
                lines.append(f'skynet_activator_hold_seconds_bucket{{service="{s}",le="{bound:g}"}} {n}')
            lines.append(f'skynet_activator_hold_seconds_bucket{{service="{s}",le="+Inf"}} {counts[-2]}')
            lines.append(f'skynet_activator_hold_seconds_count{{service="{s}"}} {counts[-2]}')
            lines.append(f'skynet_activator_hold_seconds_sum{{service="{s}"}} {counts[-1]!r}')
        return "\n".join(lines) + "\n"
