# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compute driver for any Docker API endpoint (Docker Engine, Podman)."""

from __future__ import annotations

import contextlib
import time
import uuid

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _docker_api
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import (
    COLOR_LABEL,
    HOST_LABEL,
    MARKER_LABEL,
    SERVICE_LABEL,
    ComputeDriver,
    Instance,
    Spec,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import HostUnavailable, ImageMissing, SkynetError

try:
    import docker
    import docker.errors
    import docker.tls
    import requests

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = e

CREATED_LABEL = "io.skynet.created"


def docker_argument_spec():
    """Options of the docker compute, paired with the cyberdyne.skynet.docker doc fragment."""
    return dict(
        docker_host=dict(type="str", default="unix:///var/run/docker.sock", fallback=(_env, ["DOCKER_HOST"])),
        tls_ca_cert=dict(type="path"),
        tls_client_cert=dict(type="path"),
        tls_client_key=dict(type="path", no_log=False),
        validate_certs=dict(type="bool", default=True),
        advertise_address=dict(type="str", default="127.0.0.1"),
        bind_address=dict(type="str"),
    )


def _env(*names):
    from ansible.module_utils.basic import env_fallback

    return env_fallback(*names)


def labels_of(attrs):
    """A container's labels, from its inspect data (Config.Labels) or from a listing of it (Labels)."""
    return (attrs.get("Config") or {}).get("Labels") or attrs.get("Labels") or {}


def published_port(attrs):
    """The host port a container's first published port is reached at (0: none), from its inspect data
    (NetworkSettings.Ports) or from a listing of it (Ports)."""
    for bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
        if bindings:
            return int(bindings[0]["HostPort"])
    for port in attrs.get("Ports") or ():
        if isinstance(port, dict) and port.get("PublicPort"):
            return int(port["PublicPort"])
    return 0


class DockerDriver(ComputeDriver):
    name = "docker"

    def __init__(
        self,
        docker_host,
        advertise_address="127.0.0.1",
        bind_address=None,
        tls_ca_cert=None,
        tls_client_cert=None,
        tls_client_key=None,
        validate_certs=True,
        timeout=60,
        host_name="",
        zone="",
    ):
        self.docker_host, self.host_name, self.zone = docker_host, host_name, zone
        self.advertise_address = advertise_address
        self.bind_address = bind_address or advertise_address
        tls = None
        if tls_ca_cert or tls_client_cert:
            tls = docker.tls.TLSConfig(
                client_cert=(tls_client_cert, tls_client_key) if tls_client_cert else None,
                ca_cert=tls_ca_cert,
                verify=validate_certs,
            )
        try:
            self.client = _docker_api.client(docker_host, tls=tls, timeout=timeout)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise HostUnavailable(f"Docker API at {docker_host} is unreachable: {e}") from e

    def _fail(self, what, error):
        if isinstance(error, requests.exceptions.ConnectionError):
            return HostUnavailable(f"Docker API at {self.docker_host} is unreachable while trying to {what}: {error}")
        explanation = getattr(error, "explanation", None) or str(error)
        return SkynetError(f"Docker API at {self.docker_host} failed to {what}: {explanation}")

    def check(self, spec=None):
        if spec is None:
            try:
                self.client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                raise self._fail("answer a ping", e) from e
        else:  # an engine that shows the image answers: no ping first
            try:
                self.client.images.get(spec.image)
            except docker.errors.ImageNotFound as e:
                raise ImageMissing(
                    f"image {spec.image!r} is not on the Docker API engine at {self.docker_host}: "
                    "pull, load or build it there first"
                ) from e
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                raise self._fail(f"inspect image {spec.image}", e) from e

    def list(self, service, color=None):
        """Instances of service (of every service when service is None), oldest first."""
        labels = [f"{MARKER_LABEL}=true"] + ([f"{SERVICE_LABEL}={service}"] if service else [])
        if color:
            labels.append(f"{COLOR_LABEL}={color}")
        try:
            # Sparse: the listing says all an Instance needs; the SDK would otherwise inspect every container,
            # one request each (and fail on one removed meanwhile).
            containers = self.client.containers.list(all=True, sparse=True, filters={"label": labels})
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail(f"list the containers of {service or 'every service'}", e) from e
        instances = [self._instance(c) for c in containers]
        return sorted(instances, key=lambda i: (i.created, i.id))

    def _instance(self, container):
        attrs = container.attrs
        labels = labels_of(attrs)
        state = attrs.get("State")
        return Instance(
            id=container.id[:12],
            service=labels.get(SERVICE_LABEL, ""),
            color=labels.get(COLOR_LABEL, ""),
            image=labels.get("io.skynet.image") or (container.image.tags or [container.image.id])[0],
            address=self.advertise_address,
            port=published_port(attrs),
            created=float(labels.get(CREATED_LABEL, 0)),
            state=(state.get("Status") if isinstance(state, dict) else state) or "",
            host=self.host_name,
            zone=self.zone,
        )

    def create(self, spec: Spec) -> Instance:
        name = f"skynet-{spec.service}-{spec.color}-{uuid.uuid4().hex[:8]}"
        labels = {
            **spec.labels,
            MARKER_LABEL: "true",
            SERVICE_LABEL: spec.service,
            COLOR_LABEL: spec.color,
            CREATED_LABEL: f"{time.time():.6f}",
            "io.skynet.image": spec.image,
        }
        if self.host_name:
            labels[HOST_LABEL] = self.host_name
        kwargs = dict(
            image=spec.image,
            name=name,
            detach=True,
            labels=labels,
            environment={"SERVICE_NAME": spec.service, **spec.env},
            ports={f"{spec.port}/tcp": (self.bind_address, spec.host_port or None)},
            restart_policy={"Name": "unless-stopped"},
        )
        if spec.command:
            kwargs["command"] = list(spec.command)
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        try:
            container = self.client.containers.run(**kwargs)
            container.reload()
            instance = self._instance(container)
            if not instance.port:
                raise SkynetError(f"container {name} published no port for {spec.port}/tcp")
            return instance
        except (docker.errors.DockerException, requests.exceptions.RequestException, SkynetError) as e:
            self._remove_by_name(name)
            if "address already in use" in str(e):
                raise SkynetError(
                    f"port clash: host port {spec.host_port} on {self.bind_address} is already in use "
                    f"(Docker API at {self.docker_host}); choose another host_port or leave it 0 for a random one"
                ) from e
            if isinstance(e, SkynetError):
                raise
            raise self._fail(f"start a container of {spec.service} from {spec.image}", e) from e

    def _remove_by_name(self, name):
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            self.client.containers.get(name).remove(force=True)

    def _gone(self, container_id):
        """Whether the engine no longer has the container (a removal can fail after it took effect)."""
        try:
            self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return True
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False
        return False

    def remove(self, instance, stop_timeout=10):
        try:
            container = self.client.containers.get(instance.id)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise self._fail(f"find container {instance.id}", e) from e
        for attempt in range(3):
            try:
                if container.status == "running" and attempt == 0:
                    container.stop(timeout=stop_timeout)
                container.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                # Podman on vfs sometimes reports a busy shm mount for a moment after the stop.
                if attempt == 2 or "busy" not in str(e):
                    if self._gone(instance.id):
                        return
                    raise self._fail(f"remove container {instance.id}", e) from e
                time.sleep(0.5)
