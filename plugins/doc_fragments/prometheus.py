# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options of the modules that query Prometheus (skynet_scale's checks, skynet_bluegreen's analysis).
    DOCUMENTATION = r"""
options:
  prometheus_url:
    description: Prometheus's base URL. Defaults to E(PROMETHEUS_URL).
    type: str
    default: http://127.0.0.1:9090
  prometheus_timeout:
    description: Seconds to wait for each query.
    type: float
    default: 10
  prometheus_username:
    description: Basic auth user for Prometheus.
    type: str
  prometheus_password:
    description: Basic auth password for Prometheus.
    type: str
  prometheus_bearer_token:
    description: Bearer token for Prometheus.
    type: str
"""
