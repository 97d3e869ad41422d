from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect, consul_argument_spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8500", "http://127.0.0.1:8500"),
        ("127.0.0.1:18500", "http://127.0.0.1:18500"),
        ("https://consul.example:8501", "https://consul.example:8501"),
        ("https://consul.example", "https://consul.example:443"),
        (None, "http://127.0.0.1:8500"),
    ],
)
def test_connect_parses_the_url(monkeypatch, url, base):
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    client = connect({"consul_url": url})
    assert client.http.base_uri == base


def test_connect_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.1.2.3:9500")
    assert connect({}).http.base_uri == "http://10.1.2.3:9500"


@pytest.mark.parametrize("url", ["ftp://consul:21", "http://"])
def test_connect_rejects_a_url_it_cannot_use(url):
    with pytest.raises(SkynetError, match=r"consul_url .* is not an http"):
        connect({"consul_url": url})


def test_tls_options_reach_the_client():
    client = connect(
        {
            "consul_url": "https://c:8501",
            "consul_ca_cert": "/ca.pem",
            "consul_client_cert": "/c.pem",
            "consul_client_key": "/k.pem",
            "consul_token": "s3cret",
        }
    )
    assert client.http.verify == "/ca.pem"
    assert client.http.cert == ("/c.pem", "/k.pem")
    assert client.token == "s3cret"


def test_unverified_tls_ignores_the_ca():
    client = connect({"consul_url": "https://c:8501", "consul_validate_certs": False, "consul_ca_cert": "/ca.pem"})
    assert client.http.verify is False


def test_the_token_is_no_log():
    spec = consul_argument_spec()
    assert spec["consul_token"]["no_log"] is True
    assert all(not opt.get("no_log") for name, opt in spec.items() if name != "consul_token")
