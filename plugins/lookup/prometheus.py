# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: prometheus
author: Skynet developers (@cyberdyne)
version_added: 0.1.0
short_description: Run PromQL queries against Prometheus
description:
  - Runs each term as a PromQL query against the Prometheus HTTP API and returns one result per term.
  - An instant query (the default, or at O(time)) returns a float for a scalar result and a list of
    series with their labels and value for a vector; O(type=scalar) turns a single-series vector into a float.
  - Setting O(start) makes it a range query, returning a list of series with their labels and values.
  - Every failure (Prometheus unreachable or too slow, query rejected, credentials refused, no data)
    stops the task with a message saying which one; O(default) turns "no data" into a value instead.
requirements:
  - requests
options:
  _terms:
    description:
      - PromQL queries, one result each.
    required: true
    type: list
    elements: str
  url:
    description:
      - Base URL of Prometheus, including any path prefix it is served under.
    type: str
    default: http://127.0.0.1:9090
    env:
      - name: PROMETHEUS_URL
    ini:
      - section: prometheus
        key: url
  timeout:
    description:
      - Seconds to wait for Prometheus to connect and to answer.
    type: float
    default: 10
    env:
      - name: PROMETHEUS_TIMEOUT
    ini:
      - section: prometheus
        key: timeout
  username:
    description:
      - User name for HTTP basic authentication, with O(password).
    type: str
    env:
      - name: PROMETHEUS_USERNAME
    ini:
      - section: prometheus
        key: username
  password:
    description:
      - Password for HTTP basic authentication. It is never shown in messages.
    type: str
    env:
      - name: PROMETHEUS_PASSWORD
    ini:
      - section: prometheus
        key: password
  bearer_token:
    description:
      - Token sent in an C(Authorization) header with every request. It is never shown in messages.
      - Mutually exclusive with O(username).
    type: str
    env:
      - name: PROMETHEUS_BEARER_TOKEN
    ini:
      - section: prometheus
        key: bearer_token
  ca_cert:
    description:
      - CA bundle that signs the TLS certificate of Prometheus; the system's CAs when omitted.
    type: path
    env:
      - name: PROMETHEUS_CA_CERT
    ini:
      - section: prometheus
        key: ca_cert
  client_cert:
    description:
      - Client certificate for a Prometheus that verifies clients (TLS client authentication).
    type: path
    env:
      - name: PROMETHEUS_CLIENT_CERT
    ini:
      - section: prometheus
        key: client_cert
  client_key:
    description:
      - Key of O(client_cert), when it is not in the same file.
    type: path
    env:
      - name: PROMETHEUS_CLIENT_KEY
    ini:
      - section: prometheus
        key: client_key
  validate_certs:
    description:
      - Whether to verify the TLS certificate of Prometheus.
    type: bool
    default: true
    env:
      - name: PROMETHEUS_VALIDATE_CERTS
    ini:
      - section: prometheus
        key: validate_certs
  time:
    description:
      - Evaluation time of an instant query, the time of Prometheus when omitted.
      - A Unix timestamp, an RFC 3339 date, V(now), or V(now-) followed by a duration such as V(now-5m).
    type: raw
  start:
    description:
      - Start of a range query, in the same forms as O(time). Setting it makes the query a range query.
    type: raw
  end:
    description:
      - End of a range query, in the same forms as O(time).
    type: raw
    default: now
  step:
    description:
      - Resolution of a range query, in seconds or as a duration such as V(15s); required with O(start).
    type: raw
  type:
    description:
      - V(auto) returns a float for a scalar result and a list of series for a vector or a range.
      - V(scalar) returns a float; the query must give a scalar or exactly one series, and no range.
      - V(vector) returns a list of series, also for a scalar result (one series without labels).
    type: str
    default: auto
    choices: [auto, scalar, vector]
  default:
    description:
      - Value returned for a query that matches no series.
      - When not set, a query that matches no series is an error.
    type: raw
notes:
  - Options apply to every term; run one lookup per set of options.
  - Like every lookup, it runs on the controller, so the E(PROMETHEUS_*) variables are read from the
    environment of C(ansible-playbook), not from a task's C(environment).
  - Sample values C(NaN), C(+Inf) and C(-Inf) become the floats V(nan), V(inf) and V(-inf).
seealso:
  - name: Prometheus HTTP API
    description: The query and query_range endpoints this lookup calls.
    link: https://prometheus.io/docs/prometheus/latest/querying/api/
"""

EXAMPLES = r"""
- name: Requests per second served by the web frontend, as a float
  ansible.builtin.debug:
    msg: "{{ lookup('cyberdyne.skynet.prometheus', 'sum(rate(haproxy_frontend_http_requests_total{proxy=\"web\"}[1m]))',
             url='http://prometheus.example:9090', type='scalar') }}"

- name: Instances of the targets that are down, an empty list when none is
  ansible.builtin.set_fact:
    down: "{{ lookup('cyberdyne.skynet.prometheus', 'up == 0', default=[]) | map(attribute='labels.instance') }}"

- name: CPU use of the last hour, one point a minute
  ansible.builtin.set_fact:
    cpu: >-
      {{ lookup('cyberdyne.skynet.prometheus', 'avg(rate(node_cpu_seconds_total{mode!="idle"}[5m]))',
                start='now-1h', step='1m') }}

- name: Two queries at once, one result each
  ansible.builtin.set_fact:
    targets: "{{ query('cyberdyne.skynet.prometheus', 'sum(up)', 'count(up)', type='scalar') }}"

- name: Behind a proxy that wants a token, with a private CA
  ansible.builtin.debug:
    msg: "{{ lookup('cyberdyne.skynet.prometheus', 'sum(up)', url=url, bearer_token=vault_token, ca_cert=ca) }}"
  vars:
    url: https://metrics.example/prometheus
    ca: /etc/ssl/certs/metrics-ca.pem
    vault_token: "{{ vault_prometheus_token }}"
"""

RETURN = r"""
_raw:
  description:
    - One result per query.
    - A float for a scalar result, or for a single-series vector with O(type=scalar).
    - For an instant vector, a list of series, each with C(labels) (a dict) and C(value) (a float).
    - For a range query, a list of series, each with C(labels) and C(values), a list of [timestamp, float] pairs.
    - O(default) when the query matches no series.
  type: list
  elements: raw
"""

import time

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    PrometheusClient,
    convert_result,
    is_empty,
    resolve_time,
)


class PrometheusLookupError(AnsibleLookupError):
    # The message already names the cause in operator terms; the chain stays for tracebacks.
    _include_cause_message = False


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        try:
            return self._run(terms, has_default="default" in kwargs)
        except SkynetError as e:
            raise PrometheusLookupError(str(e)) from e

    def _run(self, terms, has_default):
        opt = self.get_option
        now = time.time()
        at, start = resolve_time(opt("time"), now, "time"), resolve_time(opt("start"), now, "start")
        if start is None and opt("step") is not None:
            raise SkynetError("step is for range queries: set start too")
        if start is not None:
            if at is not None:
                raise SkynetError("time is for instant queries and start for range queries: set one of them")
            if opt("step") is None:
                raise SkynetError("a range query (start is set) needs step, e.g. step=15s")
            end = resolve_time(opt("end"), now, "end")
        cert = opt("client_cert")
        if cert and opt("client_key"):
            cert = (cert, opt("client_key"))
        verify = opt("validate_certs") and (opt("ca_cert") or True)
        client = PrometheusClient(
            url=opt("url"),
            timeout=opt("timeout"),
            username=opt("username"),
            password=opt("password"),
            bearer_token=opt("bearer_token"),
            verify=verify,
            cert=cert,
        )
        results = []
        with client:
            for promql in terms:
                if start is None:
                    data = client.query(promql, at)
                else:
                    data = client.query_range(promql, start, end, opt("step"))
                if not is_empty(data):
                    results.append(convert_result(data, opt("type")))
                elif has_default:
                    results.append(opt("default"))
                else:
                    raise SkynetError(
                        f"the query {promql!r} returned no data from {client.where}: no series matched "
                        "(set default to return a value instead)"
                    )
        return results
