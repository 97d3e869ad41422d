"""The shared Consul connection against a real agent, and the message when none answers."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect, describe_failure

from harness.proc import free_port


def test_connects_to_a_real_agent(consul):
    client = connect({"consul_url": consul.url})
    assert client.status.leader()
    client.kv.put("skynet/smoke", "1")
    assert client.kv.get("skynet/smoke")[1]["Value"] == b"1"
    client.kv.delete("skynet/smoke")


def test_an_unreachable_agent_is_named_in_the_message():
    url = f"http://127.0.0.1:{free_port()}"
    client = connect({"consul_url": url, "consul_timeout": 2})
    with pytest.raises(Exception) as caught:
        client.status.leader()
    assert describe_failure(client, caught.value).startswith(f"Consul at {url} is unreachable")
