# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options of the docker compute (any Docker API endpoint: Docker Engine or Podman).
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - URL of the Docker API, C(unix:///path.sock) or C(tcp://host:2376).
      - Defaults to the E(DOCKER_HOST) environment variable, then the local Docker socket.
    type: str
    default: unix:///var/run/docker.sock
  tls_ca_cert:
    description: CA that signs the Docker API's certificate (C(tcp://) endpoints with TLS).
    type: path
  tls_client_cert:
    description: Client certificate for the Docker API.
    type: path
  tls_client_key:
    description: Key of O(tls_client_cert).
    type: path
  validate_certs:
    description: Whether to verify the Docker API's TLS certificate.
    type: bool
    default: true
  advertise_address:
    description:
      - Address at which the load balancer and Consul reach the instances' published ports.
      - It is the address registered in Consul.
    type: str
    default: 127.0.0.1
  bind_address:
    description:
      - Host address the service port is published on; O(advertise_address) when omitted.
    type: str
"""
