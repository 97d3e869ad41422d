# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Skynet's own run of an external node's check, as a Consul agent or consul-esm runs it: an HTTP GET (2xx
passing, 429 warning, anything else critical) or a TCP connect, bounded by the check's timeout."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.cyberdyne.skynet.plugins.module_utils._external import http_status

# Straight to the instance, as Consul's checks go: a proxy of the environment is not on the way to a private IP.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HEADERS = {"User-Agent": "Skynet health probe", "Accept": "text/plain, text/*, */*"}


def probe(kind, target, timeout):
    """(status, output) of one check: kind "http" (target a URL) or "tcp" (target HOST:PORT)."""
    if kind == "tcp":
        host, _sep, port = target.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError) as e:
            return "critical", f"skynet probe: TCP connect {target}: {e}"
        return "passing", f"skynet probe: TCP connect {target}: Success"
    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        return "critical", f"skynet probe: {target!r} is not an http(s) URL"
    request = urllib.request.Request(target, method="GET", headers=HEADERS)  # noqa: S310 - http(s) only, above
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            code, reason = response.status, response.reason
    except urllib.error.HTTPError as e:
        code, reason = e.code, e.reason
        e.close()
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        return "critical", f"skynet probe: HTTP GET {target}: {getattr(e, 'reason', None) or e}"
    return http_status(code), f"skynet probe: HTTP GET {target}: {code} {reason}"


def probe_all(targets, parallel=16):
    """{key: (status, output)} of targets {key: (kind, target, timeout)}, `parallel` at a time."""
    if not targets:
        return {}
    keys = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(keys)))) as pool:
        results = pool.map(lambda k: probe(*targets[k]), keys)
        return dict(zip(keys, results, strict=True))
