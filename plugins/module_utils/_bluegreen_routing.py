# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which color of a service every HAProxy node serves, and moving it: map entries through the runtime API.

Every change is judged by reading the map back (`show map`), never by the reply to `set map`: a
reply that timed out may hide a change that was made, a node may answer and not change.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_runtime import (
    NotDelivered,
    is_up,
    write_map_file,
)


@dataclass
class HAProxyNode:
    runtime: object  # _haproxy_runtime.HAProxyRuntime
    map_dir: str
    persist: bool = True

    @property
    def name(self):
        return self.runtime.name

    def map_path(self, preview=False):
        return posixpath.join(self.map_dir, "preview.map" if preview else "live.map")

    def route(self, service, preview=False):
        """The backend the node's map sends service to, None when the map has no entry for it."""
        return self.runtime.get_map(self.map_path(preview), service)

    def set_route(self, service, color, preview=False):
        self.runtime.set_map(self.map_path(preview), service, rel.backend(service, color))

    def persist_route(self, service, color, preview=False):
        if self.persist:
            write_map_file(self.map_path(preview), service, rel.backend(service, color))

    def up(self, service, color, addresses):
        """(servers UP at the given host:port addresses, servers of the backend) on this node."""
        servers = self.runtime.servers(rel.backend(service, color))
        return len([s for s in servers if is_up(s) and s["address"] in addresses]), len(servers)


def _entry(node):
    return {"name": node.name, "switched": False, "serves": None, "error": None}


class Router:
    """The HAProxy nodes of one service."""

    def __init__(self, nodes, service, monotonic=time.monotonic):
        self.nodes, self.service, self.monotonic = list(nodes), service, monotonic

    def routes(self, preview=False):
        """{node name: color} of every node; SkynetError when a node is unreachable or lacks the entry."""
        routes, errors = {}, []
        service, which = self.service, "preview map" if preview else "map"
        for node in self.nodes:
            try:
                value = node.route(service, preview)
            except SkynetError as e:
                errors.append(str(e))
                continue
            if value is None:
                errors.append(
                    f"HAProxy node {node.name} has no entry for {service} in its {which} {node.map_path(preview)}: "
                    f"its configuration does not route {service}"
                )
            elif rel.color_of(service, value) is None:
                errors.append(
                    f"HAProxy node {node.name} sends {service} to backend {value!r}, "
                    f"not {rel.backend(service, 'blue')} or {rel.backend(service, 'green')}"
                )
            else:
                routes[node.name] = rel.color_of(service, value)
        if errors:
            raise SkynetError("; ".join(errors) + "; nothing was changed")
        return routes

    def agreed_live(self, recorded, routes):
        """The live color: the one recorded in Consul, else the one every node serves (blue when none route it)."""
        if recorded:
            return recorded
        colors = set(routes.values())
        if len(colors) > 1:
            raise SkynetError(
                f"no live color of {self.service} is recorded in Consul and the HAProxy nodes disagree: "
                + ", ".join(f"{n} sends it to {c}" for n, c in sorted(routes.items()))
            )
        return colors.pop() if colors else "blue"

    def serving(self, node):
        """(color the node serves, None) read back from its map, or (None, why it cannot be told)."""
        try:
            value = node.route(self.service)
        except SkynetError as e:
            return None, f"its map cannot be read back: {e}"
        color = rel.color_of(self.service, value)
        return (color, None) if color else (None, f"its map sends {self.service} to {value!r}")

    def switch(self, old, new, unchanged_is_old=True):
        """Points every node at new, stopping at the first that does not serve new when read back, then reads all back.

        Returns (per-node report, seconds of the map changes, whether every node serves new with its
        map file written). A node the command never reached still serves old when unchanged_is_old.
        """
        report = {node.name: _entry(node) for node in self.nodes}
        sent, started = set(), self.monotonic()
        for node in self.nodes:
            try:
                node.set_route(self.service, new)
            except NotDelivered as e:
                report[node.name]["error"] = str(e)
                break
            except SkynetError as e:  # a timeout or a refusal: the read-back tells what happened
                report[node.name]["error"] = str(e)
                sent.add(node.name)
                if self.serving(node)[0] != new:
                    break
                continue
            sent.add(node.name)
        seconds = round(self.monotonic() - started, 4)
        for node in self.nodes:
            entry = report[node.name]
            color, problem = self.serving(node)
            if color is None and node.name not in sent and unchanged_is_old:
                color = old  # nothing reached it since the plan read old from it
            entry.update(serves=color, switched=color == new)
            if entry["switched"] and entry["error"]:
                entry.update(error=None, note=f"{entry['error']}; read back, it sends {self.service} to {new}")
            elif node.name in sent and not entry["switched"] and not entry["error"]:
                entry["error"] = (
                    f"HAProxy node {node.name} answered `set map` but {problem}"
                    if problem
                    else f"HAProxy node {node.name} answered `set map` but still sends {self.service} to {color}"
                )
        ok = all(e["switched"] for e in report.values())
        if ok:
            for node in self.nodes:
                try:
                    node.persist_route(self.service, new)
                except SkynetError as e:
                    report[node.name]["error"] = str(e)
                    ok = False
                    break
        return list(report.values()), seconds, ok

    def put_back(self, color, report=None):
        """Points every node that does not serve color at it, by read-back; returns (report, failures).

        Nodes a report says serve color already are not sent anything; every node's map file is written.
        """
        entries = {e["name"]: e for e in report or ()}
        stuck = []
        for node in self.nodes:
            entry = entries.setdefault(node.name, _entry(node))
            current = entry["serves"] if report is not None else self.serving(node)[0]
            if current != color:
                error = None
                try:
                    node.set_route(self.service, color)
                except SkynetError as e:
                    error = str(e)
                current, problem = self.serving(node)
                if current != color:
                    why = error or problem or f"it still sends {self.service} to {current}"
                    entry["serves"] = current
                    entry["error"] = entry["error"] or why
                    stuck.append(f"{node.name}: {why}")
                    continue
                entry["put_back"] = True
            entry.update(serves=color, switched=False)
            try:
                node.persist_route(self.service, color)
            except SkynetError as e:
                stuck.append(f"{node.name}: {e}")
        return list(entries.values()), stuck

    def point_preview(self, color):
        """Points every node's preview map at color; returns the failures."""
        stuck = []
        for node in self.nodes:
            try:
                node.set_route(self.service, color, preview=True)
                node.persist_route(self.service, color, preview=True)
            except SkynetError as e:
                stuck.append(f"{node.name}: {e}")
        return stuck

    def sync_preview(self, live):
        """Points the preview maps that route the service at the idle color, as the HAProxy role renders them.

        A failure here leaves the live traffic as it is: it is reported, not raised.
        """
        idle, notes = rel.other(live), []
        for node in self.nodes:
            try:
                if node.map_path(preview=True) not in node.runtime.maps():
                    continue
                if node.route(self.service, preview=True) not in (None, rel.backend(self.service, idle)):
                    node.set_route(self.service, idle, preview=True)
                    node.persist_route(self.service, idle, preview=True)
            except SkynetError as e:
                notes.append(f"preview map of {node.name} not moved to {idle}: {e}")
        return notes
