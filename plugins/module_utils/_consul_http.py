# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consul's HTTP API with the standard library only, for the daemons that need no package beyond it
(skynet-consul-sd, skynet-activator, skynet-watcher): one call, its failures as one ConsulHTTPError
naming the agent, the path and what went wrong. Blocking queries return the X-Consul-Index to wait on."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.parse


class ConsulHTTPError(Exception):
    pass


class ConsulHTTP:
    def __init__(self, url, token=None, ca_file=None, timeout=10.0):
        parts = urllib.parse.urlsplit(url or "")
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ConsulHTTPError(f"the Consul URL must be http(s)://HOST[:PORT], got {url!r}")
        self.url = url.rstrip("/")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, port
        self.token, self.timeout = token, timeout
        self.context = ssl.create_default_context(cafile=ca_file) if self.scheme == "https" else None

    def _connection(self, timeout):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, method, path, params=None, body=None, timeout=None, missing_ok=False):
        """(JSON answer or None, X-Consul-Index as an int or 0) of /v1/<path>; a status other than 200 raises,
        but for 404 with missing_ok (a KV key or prefix that is not there: None and the index to wait on)."""
        target = f"/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = {"X-Consul-Token": self.token} if self.token else {}
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        connection = self._connection(self.timeout if timeout is None else timeout)
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise ConsulHTTPError(f"Consul at {self.url} failed on /v1/{path}: {e}") from e
        finally:
            connection.close()
        try:
            index = int(response.getheader("X-Consul-Index") or 0)
        except ValueError:
            index = 0
        if response.status == 404 and missing_ok:
            return None, index
        if response.status != 200:
            detail = answer.decode(errors="replace").strip()
            raise ConsulHTTPError(f"Consul at {self.url} answered {response.status} to /v1/{path}: {detail}")
        try:
            value = json.loads(answer) if answer.strip() else None
        except ValueError as e:
            raise ConsulHTTPError(f"Consul at {self.url} answered /v1/{path} with no JSON: {e}") from e
        return value, index

    def get(self, path, params=None):
        return self.call("GET", path, params)[0]

    def watch(self, path, index, wait, params=None, missing_ok=False):
        """A blocking query: (answer, index) once /v1/<path> changes after index, or after wait seconds."""
        query = {**(params or {}), "index": str(index), "wait": f"{int(wait)}s"}
        return self.call("GET", path, query, timeout=wait + self.timeout, missing_ok=missing_ok)

    def put_kv(self, key, value):
        """Writes value (JSON) at key; True when Consul took it."""
        quoted = urllib.parse.quote(key, safe="/")
        return bool(self.call("PUT", f"kv/{quoted}", body=json.dumps(value).encode())[0])

    def kv_tree(self, prefix, index=0, wait=None):
        """({key: (JSON value or None, ModifyIndex)} under prefix, index); with wait a blocking query."""
        path = f"kv/{urllib.parse.quote(prefix.rstrip('/'), safe='/')}/"
        if wait is None:
            entries, index = self.call("GET", path, {"recurse": ""}, missing_ok=True)
        else:
            entries, index = self.watch(path, index, wait, {"recurse": ""}, missing_ok=True)
        out = {}
        for e in entries or ():
            try:
                value = json.loads(base64.b64decode(e["Value"])) if e.get("Value") else None
            except ValueError:
                value = None
            out[e["Key"]] = (value, e.get("ModifyIndex", 0))
        return out, index


def read_token(path):
    """The Consul token in the file at path (None for no path or an empty file); ConsulHTTPError naming the file."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as e:
        raise ConsulHTTPError(f"cannot read the Consul token file {path}: {e}") from e
