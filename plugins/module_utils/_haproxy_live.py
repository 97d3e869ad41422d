# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which color each HAProxy node's map files send a service to: pure logic, no Ansible and no I/O.

skynet_bluegreen records the live color of a service at Consul KV PREFIX/<service>/live and
switches the running HAProxy nodes; a node whose map files it does not write (persist: false)
learns the color from that record when the haproxy role renders its maps. The order, per service:

1. a release of the service has not ended and the node's live.map has a line for it: that line
   (the release is moving the nodes and writes the record when they have moved);
2. the color recorded in Consul KV: it is the one the fleet and skynet_bluegreen agree on, so a
   role variable never overrides it (a stale haproxy_live in an inventory would undo every release);
3. no record (no release ever ran): haproxy_live, then the node's live.map, then the definition's color;
4. Consul could not be read, or its record is not a color: the node's live.map (what it serves
   now), then haproxy_live, then the definition's color, with a warning naming each service whose
   color is therefore a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import COLORS
from ansible_collections.cyberdyne.skynet.plugins.module_utils._release import in_progress

PREFIX = "skynet/bluegreen"


def _http_problem(result, what):
    status = result.get("status")
    # ansible.builtin.uri's message starts with the status codes it was told to accept: not news here.
    msg = re.sub(r"^Status code was -?[0-9]+ and not \[[^]]*\]: ", "", str(result.get("msg") or "").strip())
    if status in (None, -1):
        return f"{what} is unreachable: {msg or 'no answer'}"
    if status in (401, 403):
        return f"{what} denied the token read access to the keys under {PREFIX}/ (HTTP {status})"
    return f"{what} answered HTTP {status}: {msg}"


def _decoded(entry):
    raw = entry.get("Value")
    if raw is None:
        return None, "an empty value"
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
        return json.loads(text), None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None, "a value that is not JSON"


def consul_live(listing, probe=None, where="Consul"):
    """What Consul KV says about the live colors, from two HTTP results ({status, json, msg}, as
    ansible.builtin.uri returns them): GET /v1/kv/PREFIX/?recurse, and GET of one live key that the
    listing lacks (Consul filters a listing by ACL without an error, so only a direct read tells a
    token that may not read from a missing key; None or a skipped result when not needed).

    {"error": sentence} when Consul could not be read, else {"live": {service: color},
    "invalid": {service: what the record holds}, "releasing": [services whose release has not ended]}.
    """
    listing = listing or {}
    if listing.get("status") == 404:
        entries = []
    elif listing.get("status") == 200 and isinstance(listing.get("json"), list):
        entries = listing["json"]
    else:
        return {"error": _http_problem(listing, where)}
    if probe and not probe.get("skipped") and probe.get("status") not in (200, 404):
        return {"error": _http_problem(probe, where)}
    live, invalid, releasing = {}, {}, []
    for entry in entries:
        parts = str((entry or {}).get("Key", "")).split("/")
        if len(parts) != len(PREFIX.split("/")) + 2 or "/".join(parts[:-2]) != PREFIX:
            continue
        service, leaf = parts[-2:]
        if leaf == "live":
            value, problem = _decoded(entry)
            if value in COLORS:
                live[service] = value
            else:
                invalid[service] = problem or f"{json.dumps(value)}, not blue or green"
        elif leaf == "release":
            value, _problem = _decoded(entry)
            if isinstance(value, dict) and in_progress(value):
                releasing.append(service)
    return {"live": live, "invalid": invalid, "releasing": sorted(releasing)}


def live_plan(services, current=None, consul=None, override=None):
    """{"colors": {service: color}, "sources": {service: where its color comes from}, "unknown": [services
    whose recorded color could not be read], "warnings": [sentences]} for the map files of one node.

    current is what the node's live.map says ({service: color}); consul is consul_live's answer, or None
    when the node does not read Consul; override is haproxy_live. See the module docstring for the order.
    """
    current, override = current or {}, override or {}
    colors, sources, unknown, overruled, releasing = {}, {}, [], [], []
    error = (consul or {}).get("error")
    for s in services:
        name = s["name"]
        default = ("definition", s.get("color") or "blue")
        in_file = ("live.map", current[name]) if name in current else None
        forced = ("haproxy_live", override[name]) if name in override else None
        if consul is None:
            order = [forced, in_file]
        elif error or name in consul["invalid"]:
            unknown.append(name)
            order = [in_file, forced]
        elif name in consul["releasing"] and in_file:
            releasing.append(name)
            order = [("live.map, release in progress", in_file[1])]
        elif name in consul["live"]:
            recorded = consul["live"][name]
            if forced and forced[1] != recorded:
                overruled.append(f"{name} ({forced[1]} asked, {recorded} recorded)")
            order = [("consul", recorded)]
        else:
            order = [forced, in_file]
        sources[name], colors[name] = next(choice for choice in [*order, default] if choice)
    warnings = []
    if unknown:
        why = error or "; ".join(f"{n} has {consul['invalid'][n]}" for n in unknown)
        guessed = [f"{n} {colors[n]} (from {sources[n]})" for n in unknown if sources[n] != "live.map"]
        warnings.append(
            f"the live colors recorded in Consul KV ({PREFIX}/NAME/live) could not be read: {why}. "
            f"Kept from this node's live.map: {', '.join(n for n in unknown if sources[n] == 'live.map') or 'none'}"
            + (f"; not in live.map, so maybe not the recorded color: {', '.join(guessed)}" if guessed else "")
        )
    if overruled:
        warnings.append(
            "haproxy_live is not applied where Consul KV records a live color (the last release's): "
            f"{', '.join(overruled)}. Switch a live color with skynet_bluegreen (a release, or state=rolled_back)"
        )
    if releasing:
        warnings.append(f"a release of {', '.join(releasing)} has not ended: this node's map keeps its color for now")
    return {"colors": colors, "sources": sources, "unknown": unknown, "warnings": warnings}
