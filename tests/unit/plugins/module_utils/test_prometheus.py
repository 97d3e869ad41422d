from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    PrometheusClient,
    QueryRejected,
    convert_result,
    is_empty,
    normalize_url,
    parse_duration,
    read_answer,
    redact_url,
    resolve_time,
    root_cause,
    sample_value,
    tls_hint,
)

WHERE = "Prometheus at http://p:9090"
SCALAR = {"resultType": "scalar", "result": [1700000000.5, "42"]}
ONE = {"resultType": "vector", "result": [{"metric": {"job": "web"}, "value": [1700000000, "1.5"]}]}
TWO = {
    "resultType": "vector",
    "result": [
        {"metric": {"job": "web", "instance": "a"}, "value": [1700000000, "1"]},
        {"metric": {"job": "web", "instance": "b"}, "value": [1700000000, "2"]},
    ],
}
MATRIX = {
    "resultType": "matrix",
    "result": [{"metric": {"job": "web"}, "values": [[1700000000, "1"], [1700000015.5, "NaN"]]}],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.5", 1.5), ("0", 0.0), ("-3e2", -300.0), ("+Inf", math.inf), ("-Inf", -math.inf), ("1e308", 1e308)],
)
def test_sample_value(text, expected):
    assert sample_value(text) == expected


def test_nan_sample_is_a_float_nan():
    value = sample_value("NaN")
    assert isinstance(value, float)
    assert math.isnan(value)


@pytest.mark.parametrize("text", ["", "abc", None, "1,5"])
def test_sample_value_rejects_what_is_not_a_number(text):
    with pytest.raises(SkynetError, match="not a number"):
        sample_value(text)


@pytest.mark.parametrize(
    ("data", "want", "expected"),
    [
        (SCALAR, "auto", 42.0),
        (SCALAR, "scalar", 42.0),
        (SCALAR, "vector", [{"labels": {}, "value": 42.0}]),
        (ONE, "auto", [{"labels": {"job": "web"}, "value": 1.5}]),
        (ONE, "vector", [{"labels": {"job": "web"}, "value": 1.5}]),
        (ONE, "scalar", 1.5),
        (
            TWO,
            "auto",
            [
                {"labels": {"job": "web", "instance": "a"}, "value": 1.0},
                {"labels": {"job": "web", "instance": "b"}, "value": 2.0},
            ],
        ),
        ({"resultType": "vector", "result": [{"value": [1, "+Inf"]}]}, "scalar", math.inf),
        ({"resultType": "vector", "result": []}, "auto", []),
        ({"resultType": "string", "result": [1700000000, "hello"]}, "auto", "hello"),
        ({"resultType": "matrix", "result": []}, "vector", []),
    ],
)
def test_convert_result(data, want, expected):
    assert convert_result(data, want) == expected


@pytest.mark.parametrize("want", ["auto", "vector"])
def test_convert_result_of_a_range(want):
    (series,) = convert_result(MATRIX, want)
    assert series["labels"] == {"job": "web"}
    assert series["values"][0] == [1700000000, 1.0]
    assert series["values"][1][0] == 1700000015.5
    assert math.isnan(series["values"][1][1])


@pytest.mark.parametrize(
    ("data", "want", "message"),
    [
        (TWO, "scalar", "returned 2 series where type=scalar needs exactly one"),
        ({"resultType": "vector", "result": []}, "scalar", "returned 0 series"),
        (MATRIX, "scalar", "range of samples, which cannot be a scalar"),
        ({"resultType": "string", "result": [1, "x"]}, "scalar", "returned a string, not a scalar"),
        ({"resultType": "vector", "result": [{"metric": {}, "histogram": [1, {}]}]}, "auto", "native histograms"),
        ({"resultType": "streams", "result": []}, "auto", "unknown type 'streams'"),
        (SCALAR, "matrix", "type must be one of auto, scalar, vector"),
    ],
)
def test_convert_result_refuses(data, want, message):
    with pytest.raises(SkynetError, match=message):
        convert_result(data, want)


@pytest.mark.parametrize(
    ("data", "empty"),
    [
        ({"resultType": "vector", "result": []}, True),
        ({"resultType": "matrix", "result": []}, True),
        (ONE, False),
        (MATRIX, False),
        (SCALAR, False),
        ({"resultType": "scalar", "result": [1, "NaN"]}, False),
    ],
)
def test_is_empty(data, empty):
    assert is_empty(data) is empty


def _body(**kw):
    return json.dumps(kw)


@pytest.mark.parametrize(
    ("status", "text", "message"),
    [
        (
            400,
            _body(status="error", errorType="bad_data", error="1:5: parse error: unclosed left parenthesis"),
            "Prometheus at http://p:9090 rejected the query 'sum(up': 1:5: parse error: unclosed left parenthesis",
        ),
        (
            422,
            _body(status="error", errorType="execution", error="many-to-many matching not allowed"),
            "failed to evaluate the query 'sum(up': many-to-many matching not allowed",
        ),
        (
            503,
            _body(status="error", errorType="timeout", error="query timed out in expression evaluation"),
            "gave up evaluating the query 'sum(up': query timed out",
        ),
        (
            503,
            _body(status="error", errorType="unavailable", error="TSDB not ready"),
            "answered HTTP 503 to the query 'sum(up': unavailable: TSDB not ready",
        ),
        (401, "Unauthorized", "refused the credentials (HTTP 401): check username and password, or bearer_token"),
        (403, _body(status="error", errorType="x", error="y"), "denied access (HTTP 403)"),
        (
            404,
            "<html><body>\n  404 page not found</body></html>",
            "answered HTTP 404 with something other than a Prometheus API answer (is the url that of Prometheus?): "
            "'<html><body> 404 page not found</body></html>'",
        ),
        (200, "not json", "answered HTTP 200 with something other than a Prometheus API answer"),
        (200, "[1, 2]", "answered HTTP 200 with something other than a Prometheus API answer"),
        (200, _body(status="weird"), "something other than a Prometheus API answer"),
    ],
)
def test_read_answer_failures(status, text, message):
    with pytest.raises(SkynetError) as caught:
        read_answer(status, text, WHERE, "sum(up")
    assert str(caught.value).startswith(WHERE)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("status", "kind", "rejected"),
    [(400, "bad_data", True), (422, "execution", False), (503, "timeout", False), (503, "unavailable", False)],
)
def test_only_bad_data_is_a_rejected_query(status, kind, rejected):
    """skynet_scale fails a policy whose query Prometheus rejects before any change; other errors hold."""
    with pytest.raises(SkynetError) as caught:
        read_answer(status, _body(status="error", errorType=kind, error="e"), WHERE, "sum(up")
    assert isinstance(caught.value, QueryRejected) is rejected


def test_read_answer_success_gives_the_data():
    assert read_answer(200, _body(status="success", data=ONE), WHERE, "up") == ONE
    assert read_answer(200, _body(status="success", data=ONE, warnings=["w"]), WHERE, "up") == ONE


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800), ("1w", 604800), ("15", 15)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m ago", "1h-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(SkynetError, match="is not a duration"):
        parse_duration(text)


NOW = 1700000000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (1699999000, 1699999000.0),
        (1699999000.25, 1699999000.25),
        ("1699999000.25", 1699999000.25),
        ("now", NOW),
        ("now-5m", NOW - 300),
        ("now - 1h30m", NOW - 5400),
        ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z"),
    ],
)
def test_resolve_time(value, expected):
    assert resolve_time(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "start True is not a time"),
        ("now-5 minutes", "start 'now-5 minutes' is not a time: '5 minutes' is not a duration such as 30s"),
        ("nowish", "start 'nowish' is not a time: use now, or now- and a duration such as now-5m"),
        ("now+5m", "start 'now+5m' is not a time"),
    ],
)
def test_resolve_time_rejects(value, message):
    with pytest.raises(SkynetError) as caught:
        resolve_time(value, NOW, "start")
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
        ("127.0.0.1:9090/", "http://127.0.0.1:9090"),
        ("https://metrics.example/prometheus/", "https://metrics.example/prometheus"),
        (None, "http://127.0.0.1:9090"),
        ("", "http://127.0.0.1:9090"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


@pytest.mark.parametrize("url", ["ftp://p:21", "http://", "https://:9090"])
def test_normalize_url_rejects(url):
    with pytest.raises(SkynetError, match="is not an http"):
        normalize_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://p:9090", "http://p:9090"),
        ("http://bob:s3cret@p:9090/x", "http://bob:***@p:9090/x"),
        ("https://bob@p", "https://bob@p"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_a_rejected_url_does_not_show_its_password():
    with pytest.raises(SkynetError) as caught:
        normalize_url("ftp://bob:s3cret@p")
    assert "s3cret" not in str(caught.value)


def _chain(*errors):
    """The last error, raised with each earlier one as its cause, like urllib3 and requests do."""
    for cause, error in pairwise(errors):
        error.__cause__ = cause
    return errors[-1]


class _Wrapper(Exception):
    def __init__(self, reason):
        super().__init__("wrapped")
        self.reason = reason


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            _chain(ConnectionRefusedError(111, "Connection refused"), RuntimeError("pool"), RuntimeError("requests")),
            "Connection refused",
        ),
        (_Wrapper(OSError(-2, "Name or service not known")), "Name or service not known"),
        (RuntimeError(ValueError("inner")), "inner"),
        (RuntimeError("alone"), "alone"),
    ],
)
def test_root_cause(error, expected):
    assert root_cause(error) == expected


def test_root_cause_stops_on_a_cycle():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert root_cause(a) in ("a", "b")


def test_client_sends_basic_auth():
    client = PrometheusClient(
        "https://bob:pw@p:9090/", username="alice", password="s3cret", verify="/ca.pem", cert=("/c", "/k")
    )
    assert client.url == "https://bob:pw@p:9090"
    assert client.where == "Prometheus at https://bob:***@p:9090"
    assert client.session.auth == ("alice", "s3cret")
    assert client.verify == "/ca.pem"
    assert client.cert == ("/c", "/k")
    assert "Authorization" not in client.session.headers


def test_client_sends_the_bearer_token():
    client = PrometheusClient(bearer_token="t0ken")
    assert client.session.headers["Authorization"] == "Bearer t0ken"
    assert client.session.auth is None


def test_client_refuses_two_kinds_of_credentials():
    with pytest.raises(SkynetError, match="username and password, or bearer_token, not both"):
        PrometheusClient(username="alice", password="pw", bearer_token="t")


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate", "set ca_cert"),
        (
            "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
            "set client_cert and client_key",
        ),
        ("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate", "set client_cert and client_key"),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "set client_cert and client_key"),
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number", "use an http:// url"),
        ("EOF occurred in violation of protocol", None),
    ],
)
def test_tls_hint(reason, hint):
    if hint:
        assert hint in tls_hint(reason)
    else:
        assert tls_hint(reason) == ""
