# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus HTTP API client shared by the prometheus lookup and modules, and the pure
functions that turn its answers into plain Python values."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit, urlunsplit

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _durations
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

try:
    import requests

    HAS_REQUESTS = True
    REQUESTS_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - reported by the caller
    HAS_REQUESTS = False
    REQUESTS_IMPORT_ERROR = e

DEFAULT_URL = "http://127.0.0.1:9090"
RESULT_TYPES = ("auto", "scalar", "vector")

_NOW_MINUS = re.compile(r"now(?:\s*-\s*(.+))?")


class QueryRejected(SkynetError):
    """Prometheus rejected the query itself (bad_data, such as a syntax error): it fails every time."""


class Unreachable(SkynetError):
    """No answer from Prometheus (refused, TLS, timed out): the next queries would most likely wait as long."""


def prometheus_argument_spec():
    """The argument spec paired with the cyberdyne.skynet.prometheus doc fragment."""
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import env_fallback

    return dict(
        prometheus_url=dict(type="str", default=DEFAULT_URL, fallback=(env_fallback, ["PROMETHEUS_URL"])),
        prometheus_timeout=dict(type="float", default=10),
        prometheus_username=dict(type="str"),
        prometheus_password=dict(type="str", no_log=True),
        prometheus_bearer_token=dict(type="str", no_log=True),
    )


def client_from_params(params):
    """A PrometheusClient from a module's prometheus_* options."""
    return PrometheusClient(
        params["prometheus_url"],
        timeout=params["prometheus_timeout"],
        username=params["prometheus_username"],
        password=params["prometheus_password"],
        bearer_token=params["prometheus_bearer_token"],
    )


def normalize_url(url):
    """The base URL of the API (scheme added, trailing slash removed); SkynetError when unusable."""
    url = (url or DEFAULT_URL).strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SkynetError(f"Prometheus url {redact_url(url)!r} is not an http(s) URL")
    return url.rstrip("/")


def redact_url(url):
    """The URL without the password it may carry, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def parse_duration(text):
    """Seconds in a Prometheus duration such as 1h30m, 5m or 500ms; a bare number is seconds."""
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    found = _durations.seconds(text, _durations.PROMETHEUS)
    if found is None:
        raise SkynetError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return found


def resolve_time(value, now, name="time"):
    """The API form of the time option `name`: a number, an RFC 3339 string (passed on), 'now' or 'now-5m'."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise SkynetError(f"{name} {value!r} is not a time")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if text.startswith("now"):
        relative = _NOW_MINUS.fullmatch(text)
        try:
            if not relative:
                raise SkynetError("use now, or now- and a duration such as now-5m")
            return now - parse_duration(relative.group(1)) if relative.group(1) else now
        except SkynetError as e:
            raise SkynetError(f"{name} {text!r} is not a time: {e}") from e
    try:
        return float(text)
    except ValueError:
        return text


def sample_value(text):
    """The float of a sample value; Prometheus sends them as strings, including NaN, +Inf and -Inf."""
    try:
        return float(text)
    except (TypeError, ValueError) as e:
        raise SkynetError(f"Prometheus sent a sample value that is not a number: {text!r}") from e


def _sample(series, key):
    if key not in series:
        raise SkynetError(f"Prometheus sent a series without {key!r} (native histograms are not supported)")
    return series[key]


def is_empty(data):
    """Whether a query answer holds no series at all (a scalar or string result never is empty)."""
    return data.get("resultType") in ("vector", "matrix") and not data.get("result")


def convert_result(data, want="auto"):
    """The value of a query answer's `data`: a float, a string, or a list of series.

    Series are {labels, value} for instant vectors and {labels, values: [[ts, value], ...]} for
    range results. want='scalar' asks for a float and needs a scalar or a single-series vector;
    want='vector' asks for a list of series even from a scalar.
    """
    if want not in RESULT_TYPES:
        raise SkynetError(f"type must be one of {', '.join(RESULT_TYPES)}, not {want!r}")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = sample_value(result[1])
        return [{"labels": {}, "value": value}] if want == "vector" else value
    if kind == "string":
        if want != "auto":
            raise SkynetError(f"the query returned a string, not a {want}")
        return result[1]
    if kind == "vector":
        series = [
            {"labels": dict(s.get("metric") or {}), "value": sample_value(_sample(s, "value")[1])} for s in result
        ]
        if want != "scalar":
            return series
        if len(series) != 1:
            raise SkynetError(
                f"the query returned {len(series)} series where type=scalar needs exactly one: "
                "aggregate them (sum, max...) or select one with labels"
            )
        return series[0]["value"]
    if kind == "matrix":
        if want == "scalar":
            raise SkynetError("the query returned a range of samples, which cannot be a scalar")
        return [
            {
                "labels": dict(s.get("metric") or {}),
                "values": [[ts, sample_value(v)] for ts, v in _sample(s, "values")],
            }
            for s in result
        ]
    raise SkynetError(f"Prometheus returned a result of unknown type {kind!r}")


def read_answer(status, text, where, promql):
    """The `data` of an HTTP answer from the query API, or SkynetError saying why there is none."""
    if status in (401, 403):
        verb = "refused the credentials" if status == 401 else "denied access"
        raise SkynetError(f"{where} {verb} (HTTP {status}): check username and password, or bearer_token")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        snippet = " ".join((text or "").split())[:200]
        raise SkynetError(
            f"{where} answered HTTP {status} with something other than a Prometheus API answer "
            f"(is the url that of Prometheus?): {snippet!r}"
        )
    if body["status"] == "success" and status < 300:
        return body.get("data") or {}
    kind, error = body.get("errorType"), body.get("error")
    if kind == "bad_data":
        raise QueryRejected(f"{where} rejected the query {promql!r}: {error}")
    if kind == "timeout":
        raise SkynetError(f"{where} gave up evaluating the query {promql!r}: {error}")
    if kind == "execution":
        raise SkynetError(f"{where} failed to evaluate the query {promql!r}: {error}")
    raise SkynetError(f"{where} answered HTTP {status} to the query {promql!r}: {kind}: {error}")


def root_cause(error):
    """The innermost reason of a requests error, e.g. 'Connection refused' out of urllib3's wrappers."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        reason = getattr(error, "reason", None)
        if not isinstance(reason, BaseException):
            reason = next((a for a in getattr(error, "args", ()) if isinstance(a, BaseException)), None)
        nxt = reason or error.__cause__ or error.__context__
        if nxt is None:
            break
        error = nxt
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def tls_hint(reason):
    """What to set after a TLS handshake failure, from OpenSSL's reason."""
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return "; set ca_cert to the CA that signed its certificate, or validate_certs=false"
    if any(alert in reason for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")):
        return "; it wants a client certificate it trusts: set client_cert and client_key"
    if "WRONG_VERSION_NUMBER" in reason:
        return "; if it serves plain HTTP, use an http:// url"
    return ""


class PrometheusClient:
    """Instant and range queries against the HTTP API; every failure is a SkynetError naming the URL."""

    def __init__(
        self, url=DEFAULT_URL, timeout=10, username=None, password=None, bearer_token=None, verify=True, cert=None
    ):
        if not HAS_REQUESTS:
            raise SkynetError(f"the Python library requests is needed to talk to Prometheus: {REQUESTS_IMPORT_ERROR}")
        if bearer_token and username:
            raise SkynetError("set username and password, or bearer_token, not both")
        self.url = normalize_url(url)
        self.where = f"Prometheus at {redact_url(self.url)}"
        self.timeout = timeout
        # Given with each request: REQUESTS_CA_BUNDLE would override a session's verify.
        self.verify, self.cert = verify, cert
        self.session = requests.Session()
        if username:
            self.session.auth = (username, password or "")
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.session.close()

    def query(self, promql, time=None):
        """The `data` of an instant query at `time` (the server's now when None)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = time
        return self._get("query", params, promql)

    def query_range(self, promql, start, end, step):
        """The `data` of a range query; step is seconds or a duration such as 15s."""
        return self._get("query_range", {"query": promql, "start": start, "end": end, "step": step}, promql)

    def _get(self, endpoint, params, promql):
        try:
            r = self.session.get(
                f"{self.url}/api/v1/{endpoint}", params=params, timeout=self.timeout, verify=self.verify, cert=self.cert
            )
        except requests.exceptions.Timeout as e:
            raise Unreachable(f"{self.where} did not answer within {self.timeout:g} s (option timeout)") from e
        except requests.exceptions.SSLError as e:
            reason = root_cause(e)
            raise Unreachable(f"{self.where} failed the TLS handshake: {reason}{tls_hint(reason)}") from e
        except requests.exceptions.ConnectionError as e:
            raise Unreachable(f"{self.where} is unreachable: {root_cause(e)}") from e
        except requests.exceptions.RequestException as e:
            raise SkynetError(f"the request to {self.where} failed: {e}") from e
        except OSError as e:  # requests checks the TLS files only when it sends
            raise SkynetError(f"the TLS files for {self.where} are unusable: {e}") from e
        return read_answer(r.status_code, r.text, self.where, promql)
