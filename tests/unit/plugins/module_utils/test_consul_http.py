"""ConsulHTTP's constructor checks its URL (no connection is made before the first call)."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_http import ConsulHTTP, ConsulHTTPError


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("http://127.0.0.1:8500", "http", "127.0.0.1", 8500),
        ("http://consul.service.consul:8500/", "http", "consul.service.consul", 8500),
        ("https://consul.example.com", "https", "consul.example.com", None),
        ("http://[::1]:8500", "http", "::1", 8500),
    ],
)
def test_a_good_url_is_taken(url, scheme, host, port):
    consul = ConsulHTTP(url)
    assert (consul.scheme, consul.host, consul.port) == (scheme, host, port)
    assert consul.url == url.rstrip("/")


def test_only_https_gets_a_tls_context():
    assert ConsulHTTP("http://127.0.0.1:8500").context is None
    assert ConsulHTTP("https://127.0.0.1:8501").context is not None


@pytest.mark.parametrize(
    "url",
    ["consul:8500", "127.0.0.1:8500", "ftp://consul:8500", "http://", "http:///v1", "", None, "//consul:8500"],
)
def test_a_bad_url_is_refused_naming_it(url):
    with pytest.raises(ConsulHTTPError) as e:
        ConsulHTTP(url)
    assert repr(url) in str(e.value)
    assert "http(s)://HOST[:PORT]" in str(e.value)


@pytest.mark.parametrize("url", ["http://consul:abc", "http://consul:99999", "http://consul:-1"])
def test_a_url_with_a_bad_port_is_refused_naming_it(url):
    with pytest.raises(ConsulHTTPError) as e:
        ConsulHTTP(url)
    assert repr(url) in str(e.value)
