# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What skynet_info reports of each service, read from Consul, and the table playbooks/status.yml prints.

Per service: its instances from Consul health (host, zone, address, color, image, health, maintenance),
the last decision of skynet_scale (<key_prefix>/<service>/last), the cooldowns (.../state), the lock
(skynet/lock/<service>, as _lock.ServiceLock writes it), the live color and the release record
(skynet/bluegreen/<service>/live and /release). The parsers and the table are pure (records in, dicts
and lines out); InfoReader does the reading and nothing else: it never writes.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _control, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LOCK_PREFIX
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import parse_policy
from ansible_collections.cyberdyne.skynet.plugins.module_utils._release import TERMINAL

SCALE_PREFIX = "skynet/scale"
BLUEGREEN_PREFIX = "skynet/bluegreen"
STATUSES = ("passing", "warning", "critical")
WORDS = {"passing": "ok", "warning": "warn", "critical": "crit", "maintenance": "maint"}
NOTE_MAX = 200
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


# -- records (pure) ------------------------------------------------------------------------------


def instance_record(entry):
    """One instance from a /health/service entry; None when the registration is not a Skynet instance."""
    service, node = entry.get("Service") or {}, entry.get("Node") or {}
    meta = service.get("Meta") or {}
    if not meta.get("skynet_instance"):
        return None
    checks = entry.get("Checks") or []
    statuses = {c.get("Status") for c in checks}
    status = next((s for s in ("critical", "warning") if s in statuses), "passing")
    maintenance = any(
        c.get("CheckID", "").startswith("_service_maintenance:") or c.get("CheckID") == "_node_maintenance"
        for c in checks
    )
    tags = service.get("Tags") or []
    color = meta.get("skynet_color") or next((t for t in tags if t in _names.COLORS), None)
    return {
        "id": meta["skynet_instance"],
        "service_id": service.get("ID"),
        "node": node.get("Node"),
        "host": meta.get("skynet_host") or node.get("Node"),
        "zone": meta.get("skynet_zone") or None,
        "address": service.get("Address") or node.get("Address"),
        "port": service.get("Port"),
        "color": color,
        "image": meta.get("skynet_image"),
        "status": status,
        "maintenance": maintenance,
        "checks": [
            {"id": c.get("CheckID"), "status": c.get("Status"), "output": (c.get("Output") or "")[:NOTE_MAX]}
            for c in checks
            if c.get("Status") != "passing"
        ],
    }


def counts(instances):
    """{passing, warning, critical, maintenance, total}: an instance in maintenance counts only there."""
    out = dict.fromkeys((*STATUSES, "maintenance"), 0)
    for inst in instances:
        out["maintenance" if inst["maintenance"] else inst["status"]] += 1
    out["total"] = len(instances)
    return out


def by_host(instances):
    hosts = {}
    for inst in instances:
        hosts.setdefault(inst["host"] or "?", []).append(inst)
    return {host: counts(group) for host, group in sorted(hosts.items())}


def _age(now, then):
    return round(max(0.0, now - then), 1) if isinstance(then, (int, float)) and then else None


def decision_record(last, now):
    """The last decision skynet_scale recorded, None when there is none."""
    if not isinstance(last, dict) or not last.get("action"):
        return None
    keys = ("time", "action", "current", "desired", "reason", "applied", "error", "color", "metrics")
    return {**{k: last.get(k) for k in keys}, "age": _age(now, last.get("time"))}


def cooldown_record(state, policy, now):
    """The times of the last scale-out and scale-in and, with the policy, the seconds left of each cooldown.

    As _policy.decide counts them: scale-out after the last scale-out, scale-in after the last change.
    """
    state = state if isinstance(state, dict) else {}
    up, down = (float(state.get(k) or 0) for k in ("last_scale_up", "last_scale_down"))
    record = {"last_scale_up": up or None, "last_scale_down": down or None, "up_left": None, "down_left": None}
    if policy is not None:
        record["up_left"] = round(max(0.0, policy.cooldown_up - (now - up)), 1) if up else 0.0
        last = max(up, down)
        record["down_left"] = round(max(0.0, policy.cooldown_down - (now - last)), 1) if last else 0.0
    return record


def lock_record(entry, now):
    """Who holds the lock from its KV entry (the JSON _lock.ServiceLock writes); held only while a session has it."""
    record = {"held": False, "purpose": None, "host": None, "pid": None, "since": None, "age": None, "session": None}
    if not entry or not entry.get("Session"):
        return record
    try:
        holder = json.loads(entry.get("Value") or "null")
    except (TypeError, ValueError):
        holder = None
    holder = holder if isinstance(holder, dict) else {}
    since = holder.get("since") if isinstance(holder.get("since"), (int, float)) else None
    record.update(
        held=True,
        purpose=holder.get("purpose"),
        host=holder.get("host"),
        pid=holder.get("pid"),
        since=since,
        age=_age(now, since),
        session=entry["Session"],
    )
    return record


def release_record(record):
    """The current or last release of the service, None when it never had one."""
    if not isinstance(record, dict) or not record.get("phase"):
        return None
    keys = ("id", "phase", "image", "version", "from", "to", "started", "updated", "ended", "error")
    phases = [p for p in record.get("phases") or [] if isinstance(p, dict)]
    return {
        **{k: record.get(k) for k in keys},
        "in_progress": record["phase"] not in TERMINAL,
        "phase_since": phases[-1].get("started") if phases else record.get("started"),
    }


def service_record(name, entries, kv, policy, now):
    """Everything reported of one service; kv holds the raw values of last, state, live, release and lock."""
    instances = [i for i in (instance_record(e) for e in entries or ()) if i]
    instances.sort(key=lambda i: (i["host"] or "", i["color"] or "", i["id"]))
    live = kv.get("live")
    return {
        "name": name,
        "instances": instances,
        "counts": counts(instances),
        "hosts": by_host(instances),
        "last_decision": decision_record(kv.get("last"), now),
        "cooldown": cooldown_record(kv.get("state"), policy, now),
        "lock": lock_record(kv.get("lock"), now),
        "live": live if live in _names.COLORS else None,
        "release": release_record(kv.get("release")),
        "control": control_record(kv.get("control"), name, now),
    }


def control_record(raw, name, now):
    """The operator's pause or pin with its age; {"error": ...} for a record skynet_scale would refuse."""
    try:
        control = _control.parse(raw, name)
    except SkynetError as e:
        return {"error": str(e)}
    return {**control.as_dict(), "text": control.describe(), "age": _age(now, control.since)} if control else None


# -- the table (pure) -------------------------------------------------------------------------


def ago(seconds):
    """12s, 5m, 3h, 2d: how long ago, as an operator reads it."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cell(host_counts):
    """'2 ok', '1 ok 1 crit', '1 maint' or '-' for a service's instances on one host."""
    if not host_counts or not host_counts.get("total"):
        return "-"
    return " ".join(f"{host_counts[k]} {WORDS[k]}" for k in (*STATUSES, "maintenance") if host_counts.get(k))


def _text(value):
    return _UNPRINTABLE.sub(" ", str(value)).strip()


def decision_cell(decision):
    if not decision:
        return "-"
    action, current, desired = decision["action"], decision.get("current"), decision.get("desired")
    if action in ("scale_out", "scale_in"):
        what = f"{action} {current}->{desired}"
    else:
        what = action if current is None else f"{action} {current}"
    return f"{what} {ago(decision.get('age'))} ago" + (" FAILED" if decision.get("error") else "")


def lock_cell(lock):
    if not lock or not lock.get("held"):
        return "-"
    return f"{lock.get('purpose') or '?'} on {lock.get('host') or '?'} {ago(lock.get('age'))}"


def release_cell(release):
    if not release:
        return "-"
    if release["in_progress"]:
        return f"{release['phase']} to {release.get('to') or '?'}"
    return release["phase"]


def notes(service):
    """Lines under the table: why the last decision was taken, what failed, cooldowns running."""
    name, out = service["name"], []
    decision = service["last_decision"]
    if decision and decision.get("reason"):
        out.append(f"{name}: {_text(decision['reason'])[:NOTE_MAX]}")
    if decision and decision.get("error"):
        out.append(f"{name}: error: {_text(decision['error'])[:NOTE_MAX]}")
    cooldown = service["cooldown"]
    running = [(k, cooldown.get(f"{k}_left")) for k in ("up", "down")]
    running = [f"scale-{'out' if k == 'up' else 'in'} {ago(left)}" for k, left in running if left]
    if running:
        out.append(f"{name}: cooldown left: {', '.join(running)}")
    control = service.get("control")
    if control:
        text = control.get("error") or f"{control['text']} {ago(control.get('age'))} ago"
        out.append(f"{name}: {_text(text)[:NOTE_MAX]}")
    release = service["release"]
    if release and release.get("error"):
        out.append(f"{name}: release {release.get('version') or ''} error: {_text(release['error'])[:NOTE_MAX]}")
    return out


def render_table(services):
    """The lines of the status table: a row per service, a column per host, then the notes."""
    hosts = sorted({h for s in services for h in s["hosts"]})
    header = ["SERVICE", *hosts, "LIVE", "RELEASE", "LAST DECISION", "LOCK"]
    rows = [
        [
            s["name"],
            *(cell(s["hosts"].get(h)) for h in hosts),
            s["live"] or "-",
            release_cell(s["release"]),
            decision_cell(s["last_decision"]),
            lock_cell(s["lock"]),
        ]
        for s in services
    ]
    rows = [[_text(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[n]) for row in rows) for n in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if not services:
        lines.append("(no Skynet services found)")
    extra = [line for s in services for line in notes(s)]
    return [*lines, "", *extra] if extra else lines


# -- input (pure) -------------------------------------------------------------------------------


def select(definitions=None, names=None):
    """[(name, Policy or None)] to report, in the order given; None to find every service in Consul.

    With both, names picks among the definitions. Every problem is reported at once.
    """
    errors, chosen = [], []
    if definitions is not None:
        errors.extend(_names.definition_errors(definitions))
    for n, name in enumerate(names or ()):
        errors.append(_names.problem(_names.service_name, name, f"names[{n}]"))
    errors = [e for e in errors if e]
    if not errors and definitions is not None:
        known = {d["name"]: d for d in definitions}
        unknown = [n for n in names or () if n not in known]
        if unknown:
            errors.append(
                f"names not in services: {', '.join(unknown)} (defined: {', '.join(sorted(known)) or 'none'})"
            )
        for name in dict.fromkeys(names or known):
            if name in known and "scaling" in known[name]:
                try:
                    chosen.append((name, parse_policy(name, known[name]["scaling"])))
                except SkynetError as e:
                    errors.append(str(e))
            elif name in known:
                chosen.append((name, None))
    if errors:
        raise SkynetError("invalid services or names, nothing was read: " + "; ".join(errors))
    if definitions is None and not names:
        return None
    return chosen if definitions is not None else [(n, None) for n in dict.fromkeys(names)]


# -- reading Consul -----------------------------------------------------------------------------


class InfoReader:
    """Reads; never writes. Services are read `parallel` at a time, each with one health query and five KV reads."""

    def __init__(
        self,
        registry,
        clock,
        key_prefix=SCALE_PREFIX,
        lock_prefix=LOCK_PREFIX,
        bluegreen_prefix=BLUEGREEN_PREFIX,
        parallel=8,
    ):
        self.registry, self.consul, self.clock = registry, registry.client, clock
        self.key_prefix, self.lock_prefix = key_prefix.rstrip("/"), lock_prefix.rstrip("/")
        self.bluegreen_prefix, self.parallel = bluegreen_prefix.rstrip("/"), max(1, parallel)

    def _map(self, fn, items):
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(fn, items))

    def health(self, name):
        return self.registry.call(f"read the health of {name}", self.consul.health.service, name)[1]

    def _entry(self, key):
        return self.registry.call(f"read {key}", self.consul.kv.get, _names.kv_key(key, "Consul KV key"))[1]

    def kv(self, name):
        scale, bluegreen = f"{self.key_prefix}/{name}", f"{self.bluegreen_prefix}/{name}"
        return {
            "last": self.registry.read_json(f"{scale}/last"),
            "state": self.registry.read_json(f"{scale}/state"),
            "control": self.registry.read_json(f"{scale}/{_control.LEAF}"),
            "lock": self._entry(f"{self.lock_prefix}/{name}"),
            "live": self.registry.read_json(f"{bluegreen}/live"),
            "release": self.registry.read_json(f"{bluegreen}/release"),
        }

    def discover(self):
        """{name: health entries} of every service with Skynet instances or a scaling record, by name."""
        catalog = self.registry.call("list the services of the catalog", self.consul.catalog.services)[1]
        names = sorted(n for n in catalog if not _names.problem(_names.service_name, n, "service"))
        entries = dict(zip(names, self._map(self.health, names), strict=True))
        found = {n: e for n, e in entries.items() if any(instance_record(x) for x in e)}
        prefix = f"{self.key_prefix}/"
        keys = self.registry.call(f"list {prefix}", self.consul.kv.get, prefix, keys=True, separator="/")[1] or []
        for key in keys:
            name = key[len(prefix) :].rstrip("/")
            if name not in found and not _names.problem(_names.service_name, name, "service"):
                found[name] = entries.get(name)
        return dict(sorted(found.items()))

    def run(self, definitions=None, names=None):
        chosen = select(definitions, names)
        if chosen is None:
            found = self.discover()
            chosen = [(n, None) for n in found]
        else:
            found = {}

        def one(item):
            name, policy = item
            entries = found.get(name)
            if entries is None:
                entries = self.health(name)
            return service_record(name, entries, self.kv(name), policy, self.clock())

        return self._map(one, chosen)
