# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options every Skynet module and plugin uses to reach Consul.
    DOCUMENTATION = r"""
options:
  consul_url:
    description:
      - Address of the Consul agent's HTTP API.
      - Defaults to the E(CONSUL_HTTP_ADDR) environment variable, then C(http://127.0.0.1:8500).
    type: str
  consul_token:
    description:
      - ACL token sent with every request to Consul.
      - Defaults to the E(CONSUL_HTTP_TOKEN) environment variable.
    type: str
  consul_datacenter:
    description:
      - Datacenter to act in; the agent's own datacenter when omitted.
    type: str
  consul_ca_cert:
    description:
      - CA bundle that signs the Consul agent's TLS certificate.
      - Defaults to the E(CONSUL_CACERT) environment variable.
    type: path
  consul_client_cert:
    description:
      - Client certificate for Consul agents that verify incoming connections.
      - Defaults to the E(CONSUL_CLIENT_CERT) environment variable.
    type: path
  consul_client_key:
    description:
      - Key of O(consul_client_cert).
      - Defaults to the E(CONSUL_CLIENT_KEY) environment variable.
    type: path
  consul_validate_certs:
    description:
      - Whether to verify the Consul agent's TLS certificate.
    type: bool
    default: true
  consul_timeout:
    description:
      - Seconds to wait for each answer from Consul.
    type: float
    default: 10
"""
