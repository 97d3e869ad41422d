# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy runtime API client: one command per connection on the admin socket (`stats socket ... level admin`).

The socket is a unix socket path (`/run/haproxy/admin.sock`, `unix:///run/haproxy/admin.sock`) or a TCP
address (`host:port`, `tcp://host:port`, `ipv4@host:port`, `[::1]:port`). Every failure is a SkynetError
naming the node. Only the standard library is used.
"""

from __future__ import annotations

import os
import socket
import tempfile

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import runtime_word, split_host_port


def parse_address(address):
    """('unix', path) or ('tcp', (host, port)) of an admin socket address; SkynetError when unusable."""
    text = str(address or "").strip()
    if not text:
        raise SkynetError("an HAProxy admin socket address is empty: give a unix socket path or host:port")
    for prefix in ("unix://", "unix:", "unix@"):
        if text.startswith(prefix):
            return "unix", text[len(prefix) :]
    if text.startswith("/") or text.startswith("."):
        return "unix", text
    for prefix in ("tcp://", "ipv4@", "ipv6@", "tcp@"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    parts = split_host_port(text)
    if parts is None or not parts[0]:
        raise SkynetError(
            f"HAProxy admin socket address {address!r} is neither a unix socket path (/path/admin.sock) nor host:port"
        )
    return "tcp", parts


def refusal(reply):
    """The error in the reply of a change command (set/add/del map...), which answers nothing on success."""
    text = " ".join((reply or "").split())
    return text or None


def parse_show_map(text):
    """{key: value} of a `show map <map>` answer (lines `0xADDR key value`)."""
    entries = {}
    for line in (text or "").splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) == 3 and parts[0].startswith("0x"):
            entries[parts[1]] = parts[2]
    return entries


def parse_map_list(text):
    """The file names of the maps in a `show map` answer (lines `ID (FILE) description`)."""
    names = []
    for line in (text or "").splitlines():
        if line.startswith("#") or "(" not in line:
            continue
        names.append(line.split("(", 1)[1].split(")", 1)[0])
    return names


def parse_show_stat(text):
    """One dict per line of `show stat` CSV, keyed by the header's field names."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    fields = lines[0][2:].split(",")
    rows = []
    for line in lines[1:]:
        values = line.split(",")
        rows.append({name: values[n] for n, name in enumerate(fields) if n < len(values)})
    return rows


def backend_servers(rows, backend):
    """[{name, status, address}] of the servers of one backend in parsed `show stat` rows."""
    return [
        {"name": r.get("svname", ""), "status": r.get("status", ""), "address": r.get("addr", "")}
        for r in rows
        if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")
    ]


def is_up(server):
    """Whether a server takes traffic: UP (also while its checks are still rising) or `no check`."""
    status = server.get("status", "")
    return status.startswith("UP") or status == "no check"


def rewrite_map(text, key, value):
    """Map file text with key set to value: the line of key replaced, or appended; other lines kept."""
    lines, found = [], False
    for line in (text or "").splitlines():
        parts = line.split(None, 1)
        if parts and not line.lstrip().startswith("#") and parts[0] == key:
            if not found:
                lines.append(f"{key} {value}")
            found = True
            continue
        lines.append(line)
    if not found:
        lines.append(f"{key} {value}")
    return "\n".join(lines) + "\n"


def _map_words(map_id, key, value=None):
    """Refuses what would split into other words or commands: HAProxy reads `;` and newlines as command ends."""
    runtime_word(str(map_id), "HAProxy map")
    runtime_word(key, f"the key of map {map_id}")
    if value is not None:
        runtime_word(value, f"the value of {key} in map {map_id}")


def write_map_file(path, key, value):
    """Sets key to value in the map file at path, atomically (a renamed temporary file keeps mode and owner)."""
    _map_words(path, key, value)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        st = os.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        text, mode, owner = "", 0o644, None
    except OSError as e:
        raise SkynetError(f"cannot read the HAProxy map file {path}: {e.strerror or e}") from e
    new = rewrite_map(text, key, value)
    if new == text:
        return False
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".skynet-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(new)
            os.chmod(tmp, mode)
            if owner and hasattr(os, "chown") and os.geteuid() == 0:
                os.chown(tmp, *owner)  # the haproxy role gives the map its group
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise SkynetError(f"cannot write the HAProxy map file {path}: {e.strerror or e}") from e
    return True


class NotDelivered(SkynetError):
    """The node could not be reached: the command never got to HAProxy, so it changed nothing."""


class HAProxyRuntime:
    """Commands on one HAProxy node's admin socket; errors are SkynetError naming the node."""

    def __init__(self, address, name=None, timeout=5.0):
        self.address = str(address)
        self.kind, self.target = parse_address(address)
        self.name = name or self.address
        self.timeout = timeout

    @property
    def where(self):
        if self.name == self.address:
            return f"HAProxy node {self.name}"
        return f"HAProxy node {self.name} ({self.address})"

    def command(self, cmd):
        """The raw answer to one command."""
        if any(c in cmd for c in "\r\n;\x00"):
            raise SkynetError(f"refusing to send {cmd!r} to {self.where}: one command, without newlines or semicolons")
        family = socket.AF_UNIX if self.kind == "unix" else socket.AF_INET
        if self.kind == "tcp" and ":" in self.target[0]:
            family = socket.AF_INET6
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.target)
                except OSError as e:
                    raise NotDelivered(
                        f"{self.where} is unreachable on its admin socket {self.address}: {e.strerror or e}"
                    ) from e
                sock.sendall(cmd.encode() + b"\n")
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except socket.timeout as e:
            raise SkynetError(f"{self.where} did not answer `{cmd}` within {self.timeout:g}s") from e
        except OSError as e:
            raise SkynetError(
                f"{self.where} is unreachable on its admin socket {self.address}: {e.strerror or e}"
            ) from e
        return b"".join(chunks).decode(errors="replace")

    def change(self, cmd):
        """Runs a command that answers nothing on success; SkynetError with HAProxy's answer otherwise."""
        reply = self.command(cmd)
        error = refusal(reply)
        if error:
            raise SkynetError(f"{self.where} refused `{cmd}`: {error}")
        return reply

    def show_map(self, map_id):
        runtime_word(str(map_id), "HAProxy map")
        reply = self.command(f"show map {map_id}")
        entries = parse_show_map(reply)
        if not entries and reply.strip():
            raise SkynetError(f"{self.where} cannot show map {map_id}: {refusal(reply)}")
        return entries

    def maps(self):
        """The file names of the maps the node has loaded."""
        return parse_map_list(self.command("show map"))

    def get_map(self, map_id, key):
        """The value of key in the map, None when the map has no such key."""
        return self.show_map(map_id).get(key)

    def set_map(self, map_id, key, value):
        _map_words(map_id, key, value)
        self.change(f"set map {map_id} {key} {value}")

    def add_map(self, map_id, key, value):
        _map_words(map_id, key, value)
        self.change(f"add map {map_id} {key} {value}")

    def del_map(self, map_id, key):
        _map_words(map_id, key)
        self.change(f"del map {map_id} {key}")

    def put_map(self, map_id, key, value):
        """Sets key (adds it when missing); returns the value it had before (None when added)."""
        before = self.get_map(map_id, key)
        if before is None:
            self.add_map(map_id, key, value)
        elif before != value:
            self.set_map(map_id, key, value)
        return before

    def show_stat(self):
        reply = self.command("show stat")
        if not reply.startswith("# "):
            raise SkynetError(f"{self.where} refused `show stat`: {refusal(reply)}")
        return parse_show_stat(reply)

    def servers(self, backend):
        """[{name, status, address}] of one backend's servers, SkynetError when the backend is unknown."""
        runtime_word(backend, "HAProxy backend")
        rows = self.show_stat()
        if not any(r.get("pxname") == backend for r in rows):
            raise SkynetError(f"{self.where} has no backend {backend}")
        return backend_servers(rows, backend)
