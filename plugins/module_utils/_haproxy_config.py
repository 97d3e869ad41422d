# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy configuration and map files from service definitions: pure text, no Ansible and no I/O.

Each service gets a frontend on lb_address:lb_port, an optional preview frontend, and one backend
per color whose servers come from Consul DNS SRV records (_NAME._COLOR.service.consul). The
frontends pick the backend through a map file, so the live color is switched at runtime with
`set map MAP_DIR/live.map NAME NAME_green` on the admin socket, without a reload. A reload reads
the map files from disk again: whoever switches at runtime also writes the files.
"""

from __future__ import annotations

import ipaddress
import math
import re

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _activator
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import (
    COLORS,
    problem,
    service_name,
    split_host_port,
)

MODES = ("http", "tcp")
DEFAULT_SLOTS = 10
LIVE_MAP = "live.map"
PREVIEW_MAP = "preview.map"
STATS_FRONTEND = "stats"
_DURATION = re.compile(r"^[0-9]+(us|ms|s|m|h|d)$")
TIMEOUTS = {
    "http": {"connect": "5s", "client": "30s", "server": "30s"},
    "tcp": {"connect": "5s", "client": "1h", "server": "1h"},
}


def other(color):
    return COLORS[1 - COLORS.index(color)]


def _split_address(text):
    parts = split_host_port(text)
    if parts is None:
        raise SkynetError(f"{text!r} is not an ADDRESS:PORT")
    return parts


def _port(value):
    """The value as a port number, or None when it is not one (booleans are not ports)."""
    if isinstance(value, bool):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 0 < port < 65536 and str(port) == str(value).strip() else None


def _duration(value):
    """An HAProxy duration; a bare number is seconds (HAProxy itself would read milliseconds)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"{value}s"
    if isinstance(value, str) and _DURATION.match(value):
        return value
    return None


def _live_colors(services, live):
    """{name: live color}: live (a {name: color} mapping, or one color for all) over each definition's color."""
    if live is None:
        live = {}
    elif isinstance(live, str):
        live = {s.get("name"): live for s in services if isinstance(s, dict)}
    elif not isinstance(live, dict):
        raise SkynetError(f"live must be a mapping of service name to color, not {type(live).__name__}")
    colors, errors = {}, []
    for s in services:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            continue
        default = s.get("color") or "blue"
        if default not in COLORS:
            errors.append(f"{s['name']}: color {default!r} is not blue or green")
        color = live.get(s["name"], default)
        if color not in COLORS and color != default:
            errors.append(f"{s['name']}: live color {color!r} is not blue or green")
        colors[s["name"]] = color
    return colors, errors


def _check_names(services):
    errors, seen = [], set()
    if not isinstance(services, (list, tuple)):
        raise SkynetError(f"the services must be a list of service definitions, not {type(services).__name__}")
    for n, s in enumerate(services):
        if not isinstance(s, dict):
            errors.append(f"service #{n + 1} is not a mapping")
            continue
        name = s.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"service #{n + 1} has no name")
        elif problem(service_name, name, f"services[{n}].name"):
            errors.append(problem(service_name, name, f"services[{n}].name"))
        elif name == STATS_FRONTEND:
            errors.append(f"{name}: the name is taken by the stats frontend")
        elif name in seen:
            errors.append(f"{name}: two services have this name")
        else:
            seen.add(name)
    return errors


def _check_service(s, errors):
    name = s["name"]
    if s.get("port") is None:
        errors.append(f"{name}: no port (the port the instances listen on)")
    elif _port(s["port"]) is None:
        errors.append(f"{name}: port {s['port']!r} is not a port number")
    if s.get("lb_port") is None:
        errors.append(f"{name}: no lb_port (the port of its frontend on the load balancer)")
    elif _port(s["lb_port"]) is None:
        errors.append(f"{name}: lb_port {s['lb_port']!r} is not a port number")
    if s.get("preview_port") is not None and _port(s["preview_port"]) is None:
        errors.append(f"{name}: preview_port {s['preview_port']!r} is not a port number")
    mode = s.get("mode") or "http"
    if mode not in MODES:
        errors.append(f"{name}: mode {mode!r} is not http or tcp")
    slots = (s.get("scaling") or {}).get("max", DEFAULT_SLOTS)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        errors.append(f"{name}: scaling.max {slots!r} is not a positive number of instances")
    timeouts = s.get("timeouts") or {}
    if not isinstance(timeouts, dict):
        errors.append(f"{name}: timeouts must be a mapping of connect, client and server")
    else:
        for key in sorted(set(timeouts) - {"connect", "client", "server"}):
            errors.append(f"{name}: unknown timeout {key!r} (connect, client or server)")
        for key in ("connect", "client", "server"):
            if key in timeouts and _duration(timeouts[key]) is None:
                errors.append(f"{name}: timeouts.{key} {timeouts[key]!r} is not a duration such as 5s or 500ms")
    health = s.get("health") or {}
    if not isinstance(health, dict):
        errors.append(f"{name}: health must be a mapping")
    elif health.get("path") is not None and not re.match(r"^/\S*$", str(health["path"])):
        errors.append(f"{name}: health.path {health['path']!r} is not a path starting with /")


def _frontends(services, stats_bind, errors):
    """(proxy name, address, port) of every frontend with a valid port, the stats frontend first."""
    found = []
    try:
        found.append((STATS_FRONTEND, *_split_address(stats_bind)))
    except SkynetError as e:
        errors.append(f"stats_bind: {e}")
    for s in services:
        address = s.get("lb_address") or "127.0.0.1"
        for name, key in ((s["name"], "lb_port"), (f"{s['name']}_preview", "preview_port")):
            if _port(s.get(key)) is not None:
                found.append((name, address, _port(s[key])))
    return found


def _any_address(host):
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _check_binds(frontends, errors):
    for i, (name, host, port) in enumerate(frontends):
        for other_name, other_host, other_port in frontends[:i]:
            if port == other_port and (host == other_host or _any_address(host) or _any_address(other_host)):
                errors.append(f"{name} and {other_name} both bind {host or '*'}:{port}")
                break


def preflight(services, stats_bind="127.0.0.1:8404", live=None):
    """Every error of the definitions at once, as one SkynetError; {name: live color} when all is well."""
    errors = _check_names(services)
    if errors:
        raise SkynetError("invalid HAProxy service definitions: " + "; ".join(errors))
    for s in services:
        _check_service(s, errors)
    colors, color_errors = _live_colors(services, live)
    errors.extend(color_errors)
    _check_binds(_frontends(services, stats_bind, errors), errors)
    if errors:
        raise SkynetError("invalid HAProxy service definitions: " + "; ".join(errors))
    return colors


def _lines(head, body):
    return "\n".join([head, *(f"    {line}" for line in body)]) + "\n"


def _frontend(name, bind, s, map_file, fallback, timeout_client, logging):
    mode = s.get("mode") or "http"
    body = [f"bind {bind}", f"mode {mode}"]
    if logging:
        body.append(f"option {mode}log")
    if mode == "http":
        # Idle keep-alive connections stay open through a reload until their next response
        # says "Connection: close", so clients that do not retry see no error.
        body += ["option forwardfor", "option idle-close-on-response"]
    body += [f"timeout client {timeout_client}", f"use_backend %[str({s['name']}),map({map_file},{fallback})]"]
    return _lines(f"frontend {name}", body)


def _backend(s, color, timeouts, init_addr, activator):
    name, mode = s["name"], s.get("mode") or "http"
    health = s.get("health") or {}
    slots = (s.get("scaling") or {}).get("max", DEFAULT_SLOTS)
    body = [f"mode {mode}"]
    if mode == "http":
        body.append("balance roundrobin")
        if health.get("path") and (health.get("type") or "http") == "http":
            body.append(f"option httpchk GET {health['path']}")
    else:
        body.append("balance leastconn")
    body += ["option redispatch", "retries 3"]
    if mode == "http":
        if activator:
            # all-retryable-errors but 503: the activator's 503 (no instance came within the hold) is final.
            body.append("retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 500 502 504")
        else:
            body.append("retry-on all-retryable-errors")
    body += [f"timeout connect {timeouts['connect']}", f"timeout server {timeouts['server']}"]
    body.append(
        f"server-template {name}_{color} {slots} _{name}._{color}.service.consul resolvers consul "
        f"resolve-opts allow-dup-ip init-addr {init_addr} check inter 1s fall 2 rise 1"
    )
    if activator:
        # Used only while no instance of this color is up: the activator holds the request until one is.
        body.append(f"server activator unix@{_activator.socket_path(activator['socket_dir'], name, color)} backup")
    return _lines(f"backend {name}_{color}", body)


def _service(s, color, map_dir, logging, init_addr, activator):
    name, mode = s["name"], s.get("mode") or "http"
    timeouts = {**TIMEOUTS[mode], **{k: _duration(v) for k, v in (s.get("timeouts") or {}).items()}}
    activator = activator if activator and _activator.scales_from_zero(s) else None
    if activator:
        longest = _seconds(activator["hold"] + _activator.SERVER_TIMEOUT_MARGIN)
        if _seconds_of(timeouts["server"]) < _seconds_of(longest):
            timeouts["server"] = longest
    address = s.get("lb_address") or "127.0.0.1"
    client = timeouts["client"]
    parts = [
        f"# {name}: {mode}, instances on port {s['port']}, live color {color} unless {map_dir}/{LIVE_MAP} says",
        _frontend(name, f"{address}:{s['lb_port']}", s, f"{map_dir}/{LIVE_MAP}", f"{name}_{color}", client, logging),
    ]
    if s.get("preview_port") is not None:
        preview = f"{address}:{s['preview_port']}"
        parts.append(
            _frontend(
                f"{name}_preview", preview, s, f"{map_dir}/{PREVIEW_MAP}", f"{name}_{other(color)}", client, logging
            )
        )
    parts += [_backend(s, c, timeouts, init_addr, activator) for c in COLORS]
    return "\n".join(parts)


def render(
    services,
    *,
    consul_dns="127.0.0.1:8600",
    map_dir="/etc/haproxy/maps",
    stats_socket="/run/haproxy/admin.sock",
    stats_bind="127.0.0.1:8404",
    live=None,
    global_extra=(),
    defaults_extra=(),
    server_state_file=None,
    stats_socket_group=None,
    activator=None,
    resolve_interval="1s",
):
    """The whole haproxy.cfg for the service definitions; SkynetError (and nothing rendered) on any error.

    live maps service names to their live color (or is one color for every service); it picks
    the backend a frontend falls back to when the map file has no line for the service.

    server_state_file makes reloads hitless: a new worker starts with the servers (addresses
    from Consul DNS, health) that the old one saved there with `show servers state` just before
    the reload, instead of with none until its first DNS answer (a few 503s under load). The
    file must exist; before the first save it holds the line `1` (the format version).

    activator ({socket_dir, hold}) adds the activator as the backup server of each color backend of every
    service that scales from zero, and makes its server timeout outlast the hold.

    resolve_interval: how often HAProxy asks Consul DNS for each backend's instances (`timeout resolve`):
    the longest an instance that passes waits before HAProxy sends it traffic.
    """
    colors = preflight(services, stats_bind, live)
    try:
        _split_address(consul_dns)
    except SkynetError as e:
        raise SkynetError(f"invalid HAProxy settings: consul_dns: {e}") from e
    map_dir = str(map_dir).rstrip("/") or "/"
    resolve = _duration(resolve_interval)
    if resolve is None or not int(re.match(r"[0-9]+", resolve).group()):
        raise SkynetError(
            f"invalid HAProxy settings: resolve_interval {resolve_interval!r} is not a duration such as 1s or 500ms"
        )
    global_extra = [global_extra] if isinstance(global_extra, str) else list(global_extra or ())
    defaults_extra = [defaults_extra] if isinstance(defaults_extra, str) else list(defaults_extra or ())
    sections = [
        _lines(
            "global",
            [
                "master-worker",
                f"stats socket {stats_socket} mode 660"
                + (f" user root group {stats_socket_group}" if stats_socket_group else "")
                + " level admin expose-fd listeners",
                "stats timeout 30s",
                *([f"server-state-file {server_state_file}"] if server_state_file else []),
                *global_extra,
            ],
        ),
        _lines(
            "defaults",
            [
                "mode http",
                "log global",
                "option dontlognull",
                "timeout connect 5s",
                "timeout client 30s",
                "timeout server 30s",
                "timeout http-request 10s",
                "timeout http-keep-alive 10s",
                "timeout queue 30s",
                *(["load-server-state-from-file global"] if server_state_file else []),
                *defaults_extra,
            ],
        ),
        _lines(
            "resolvers consul",
            [
                f"nameserver consul {consul_dns}",
                "accepted_payload_size 8192",
                "resolve_retries 3",
                f"timeout resolve {resolve}",
                "timeout retry 1s",
                "hold valid 1s",
                "hold obsolete 0s",
                "hold nx 1s",
                "hold other 1s",
                "hold refused 1s",
                "hold timeout 1s",
            ],
        ),
        _lines(
            f"frontend {STATS_FRONTEND}",
            [
                f"bind {stats_bind}",
                "mode http",
                "no log",
                "http-request use-service prometheus-exporter if { path /metrics }",
                "stats enable",
                "stats uri /stats",
                "stats refresh 10s",
            ],
        ),
    ]
    # Log formats only where there is somewhere to log to: HAProxy warns about them otherwise.
    logging = any(str(line).split()[:1] == ["log"] for line in global_extra)
    init_addr = "last,none" if server_state_file else "none"
    activator = _activator_options(activator)
    sections += [_service(s, colors[s["name"]], map_dir, logging, init_addr, activator) for s in services]
    return "\n".join(sections)


def _activator_options(activator):
    if not activator:
        return None
    if not isinstance(activator, dict) or not activator.get("socket_dir"):
        raise SkynetError("invalid HAProxy settings: activator needs a socket_dir")
    hold = activator.get("hold", _activator.DEFAULT_HOLD)
    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not 0 < hold < 86400:
        raise SkynetError(f"invalid HAProxy settings: activator hold {hold!r} is not a number of seconds above 0")
    return {"socket_dir": str(activator["socket_dir"]), "hold": hold}


def _seconds(value):
    return f"{math.ceil(value)}s"


def _seconds_of(duration):
    number, unit = re.match(r"^([0-9]+)(us|ms|s|m|h|d)$", duration).groups()
    return int(number) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def render_map(services, live=None, *, preview=False):
    """The text of live.map (NAME NAME_COLOR per service) or, with preview, of preview.map (the other color).

    Only names and colors are checked: the map needs nothing else. live entries of services that
    are not in services are ignored.
    """
    errors = _check_names(services)
    colors, color_errors = _live_colors(services, live) if not errors else ({}, [])
    errors += color_errors
    if errors:
        raise SkynetError("invalid HAProxy service definitions: " + "; ".join(errors))
    lines = []
    for s in services:
        color = colors[s["name"]]
        lines.append(f"{s['name']} {s['name']}_{other(color) if preview else color}\n")
    return "".join(lines)


def parse_map(text):
    """{service name: color} from the text of a live.map (or preview.map) file; other lines are skipped."""
    colors = {}
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2 and fields[1].startswith(fields[0] + "_"):
            color = fields[1][len(fields[0]) + 1 :]
            if color in COLORS:
                colors[fields[0]] = color
    return colors
