# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Docker SDK client for a Docker API endpoint, speaking the API version the engine says it serves.

The SDK's version="auto" asks /version, which Podman takes half a second to answer (it gathers its
components' versions): every cycle paid it once per host. /_ping says the same in its Api-Version header
in milliseconds, on Docker Engine and Podman alike.
"""

from __future__ import annotations

try:
    import docker
    import docker.constants
    import requests
except ImportError:  # pragma: no cover - the callers report the missing library
    docker = None


def _version(text):
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        return None


def client(docker_host, tls=None, timeout=60):
    """A docker.DockerClient; docker.errors.DockerException or requests' exceptions when the engine does not answer."""
    known = docker.constants.DEFAULT_DOCKER_API_VERSION
    probe = docker.APIClient(base_url=docker_host, tls=tls, timeout=timeout, version=known)
    try:
        answer = probe.get(f"{probe.base_url}/_ping", timeout=timeout)
    except requests.exceptions.RequestException as e:
        raise docker.errors.DockerException(f"Error while fetching server API version: {e}") from e
    finally:
        probe.close()
    served = _version(answer.headers.get("Api-Version"))
    # An engine that does not say is asked /version.
    version = "auto" if served is None else ".".join(map(str, min(served, _version(known))))
    return docker.DockerClient(base_url=docker_host, tls=tls, timeout=timeout, version=version)
