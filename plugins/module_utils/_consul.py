# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection to Consul shared by every module and plugin (see the consul doc fragment)."""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

try:
    import consul
    import requests
    from consul.callback import CB

    HAS_CONSUL = True
    CONSUL_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_CONSUL = False
    CONSUL_IMPORT_ERROR = e

DEFAULT_URL = "http://127.0.0.1:8500"


def consul_argument_spec():
    """The argument spec paired with the cyberdyne.skynet.consul doc fragment."""
    return dict(
        consul_url=dict(type="str", fallback=(env_fallback, ["CONSUL_HTTP_ADDR"])),
        consul_token=dict(type="str", no_log=True, fallback=(env_fallback, ["CONSUL_HTTP_TOKEN"])),
        consul_datacenter=dict(type="str"),
        consul_ca_cert=dict(type="path", fallback=(env_fallback, ["CONSUL_CACERT"])),
        consul_client_cert=dict(type="path", fallback=(env_fallback, ["CONSUL_CLIENT_CERT"])),
        consul_client_key=dict(type="path", no_log=False, fallback=(env_fallback, ["CONSUL_CLIENT_KEY"])),
        consul_validate_certs=dict(type="bool", default=True),
        consul_timeout=dict(type="float", default=10),
    )


def env_fallback(*names):
    from ansible.module_utils.basic import env_fallback as fallback

    return fallback(*names)


def connect(params):
    """A py-consul client from the consul_* options; SkynetError when the URL is unusable."""
    url = params.get("consul_url") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_URL
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SkynetError(f"consul_url {url!r} is not an http(s) URL")
    verify = params.get("consul_validate_certs", True)
    if verify and params.get("consul_ca_cert"):
        verify = params["consul_ca_cert"]
    cert = None
    if params.get("consul_client_cert"):
        cert = (params["consul_client_cert"], params.get("consul_client_key"))
    client = consul.Consul(
        host=parts.hostname,
        port=parts.port or (443 if parts.scheme == "https" else 80),
        scheme=parts.scheme,
        token=params.get("consul_token"),
        dc=params.get("consul_datacenter"),
        verify=verify,
        cert=cert,
        connections_timeout=params.get("consul_timeout", 10),
    )
    client.skynet_url = url
    return client


def put_json(client, path, body):
    """PUT of a JSON body to /v1/<path> as it is (in the client's datacenter); True on success."""
    if client.dc:
        body = {**body, "Datacenter": client.dc}
    return client.http.put(CB.boolean(), f"/v1/{path}", data=json.dumps(body), headers=client.prepare_headers())


def describe_failure(client, error):
    """A sentence naming Consul and what went wrong, for any py-consul or requests error."""
    where = getattr(client, "skynet_url", "Consul")
    if isinstance(error, requests.exceptions.ConnectionError):
        return f"Consul at {where} is unreachable: {error}"
    if isinstance(error, requests.exceptions.Timeout):
        return f"Consul at {where} did not answer in time: {error}"
    if isinstance(error, consul.ACLPermissionDenied):
        return f"Consul at {where} refused the request: the token lacks permission ({error})"
    return f"Consul at {where} failed: {error}"
