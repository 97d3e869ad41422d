from __future__ import annotations

import os
import socket
import threading

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _haproxy_runtime as hr
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

STAT = """# pxname,svname,status,addr,
web,FRONTEND,OPEN,,
web_green,web_green1,UP,127.0.0.1:4001,
web_green,web_green2,MAINT (resolution),,
web_green,web_green3,DOWN,127.0.0.1:4003,
web_green,web_green4,UP 1/2,127.0.0.1:4004,
web_green,BACKEND,UP,,
"""


class FakeHAProxy:
    """A unix socket that answers one command per connection, like HAProxy's admin socket."""

    def __init__(self, path):
        self.path, self.maps, self.commands = str(path), {"/m/live.map": {"web": "web_blue"}}, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, cmd):
        words = cmd.split()
        if words == ["show", "map"]:
            return (
                "# id (file) description\n"
                + "".join(f"{n} ({m}) pattern loaded\n" for n, m in enumerate(self.maps))
                + "\n"
            )
        if words[:2] == ["show", "map"]:
            entries = self.maps.get(words[2])
            if entries is None:
                return "Unknown map identifier. Please use #<id> or <file>.\n"
            return "".join(f"0x{n:x} {k} {v}\n" for n, (k, v) in enumerate(entries.items())) + "\n"
        if words[:2] in (["set", "map"], ["add", "map"]):
            entries = self.maps.get(words[2])
            if entries is None:
                return "Unknown map identifier. Please use #<id> or <file>.\n"
            if words[0] == "set" and words[3] not in entries:
                return "entry not found.\n"
            entries[words[3]] = words[4]
            return "\n"
        if words == ["show", "stat"]:
            return STAT
        return "Unknown command: '" + cmd + "'\n"

    def serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            with conn:
                cmd = conn.recv(4096).decode().strip()
                self.commands.append(cmd)
                conn.sendall(self.answer(cmd).encode())

    def close(self):
        self.sock.close()


@pytest.fixture
def fake(tmp_path):
    f = FakeHAProxy(tmp_path / "admin.sock")
    yield f
    f.close()


@pytest.mark.parametrize(
    ("address", "kind", "target"),
    [
        ("/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock"),
        ("unix:///run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock"),
        ("unix@/run/admin.sock", "unix", "/run/admin.sock"),
        ("127.0.0.1:9999", "tcp", ("127.0.0.1", 9999)),
        ("tcp://lb1.example:9999", "tcp", ("lb1.example", 9999)),
        ("ipv4@10.0.0.1:9999", "tcp", ("10.0.0.1", 9999)),
        ("[::1]:9999", "tcp", ("::1", 9999)),
    ],
)
def test_parse_address(address, kind, target):
    assert hr.parse_address(address) == (kind, target)


@pytest.mark.parametrize("address", ["", "lb1", "lb1:http", "lb1:70000", ":9999"])
def test_parse_address_refuses(address):
    with pytest.raises(SkynetError, match=r"unix socket path|empty"):
        hr.parse_address(address)


def test_parsers():
    assert hr.parse_show_map("0x1 web web_blue\n0x2 api api_green\n\n") == {"web": "web_blue", "api": "api_green"}
    rows = hr.parse_show_stat(STAT)
    servers = hr.backend_servers(rows, "web_green")
    assert [s["name"] for s in servers] == ["web_green1", "web_green2", "web_green3", "web_green4"]
    assert [hr.is_up(s) for s in servers] == [True, False, False, True]
    assert hr.parse_show_stat("Permission denied\n") == []
    listing = "# id (file) description\n2 (/etc/haproxy/maps/live.map) pattern loaded from file\n\n"
    assert hr.parse_map_list(listing) == ["/etc/haproxy/maps/live.map"]
    assert hr.refusal("\n") is None
    assert hr.refusal("entry not found.\n") == "entry not found."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "web web_green\n"),
        ("web web_blue\n", "web web_green\n"),
        ("# maps\napi api_blue\nweb web_blue\n", "# maps\napi api_blue\nweb web_green\n"),
        ("api api_blue", "api api_blue\nweb web_green\n"),
        ("web web_blue\nweb web_blue\n", "web web_green\n"),
    ],
)
def test_rewrite_map(text, expected):
    assert hr.rewrite_map(text, "web", "web_green") == expected


def test_write_map_file_keeps_mode_and_is_atomic(tmp_path):
    path = tmp_path / "live.map"
    path.write_text("api api_blue\nweb web_blue\n")
    os.chmod(path, 0o640)
    assert hr.write_map_file(str(path), "web", "web_green")
    assert path.read_text() == "api api_blue\nweb web_green\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert not hr.write_map_file(str(path), "web", "web_green")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.map"]
    with pytest.raises(SkynetError, match="cannot write the HAProxy map file"):
        hr.write_map_file(str(tmp_path / "missing" / "live.map"), "web", "web_green")


def test_runtime_commands(fake):
    rt = hr.HAProxyRuntime(fake.path, name="lb1")
    assert rt.maps() == ["/m/live.map"]
    assert rt.show_map("/m/live.map") == {"web": "web_blue"}
    assert rt.get_map("/m/live.map", "nope") is None
    rt.set_map("/m/live.map", "web", "web_green")
    assert rt.get_map("/m/live.map", "web") == "web_green"
    assert rt.put_map("/m/live.map", "api", "api_blue") is None
    assert fake.maps["/m/live.map"]["api"] == "api_blue"
    assert [s["address"] for s in rt.servers("web_green") if hr.is_up(s)] == ["127.0.0.1:4001", "127.0.0.1:4004"]
    with pytest.raises(SkynetError, match=r"HAProxy node lb1 .* refused `set map /m/live.map nope x`: entry not found"):
        rt.set_map("/m/live.map", "nope", "x")
    with pytest.raises(SkynetError, match=r"cannot show map /m/other.map: Unknown map identifier"):
        rt.show_map("/m/other.map")
    with pytest.raises(SkynetError, match="has no backend web_red"):
        rt.servers("web_red")


def test_unreachable_node_is_named(tmp_path):
    rt = hr.HAProxyRuntime(str(tmp_path / "nothing.sock"), name="lb2")
    with pytest.raises(SkynetError, match=r"HAProxy node lb2 \(.*nothing.sock\) is unreachable on its admin socket"):
        rt.show_map("/m/live.map")
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    rt = hr.HAProxyRuntime(f"127.0.0.1:{port}")
    with pytest.raises(SkynetError, match=f"HAProxy node 127.0.0.1:{port} is unreachable"):
        rt.command("show info")


def test_a_node_that_does_not_answer_is_named(tmp_path):
    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(path)
        silent.listen(1)
        rt = hr.HAProxyRuntime(path, name="lb3", timeout=0.2)
        with pytest.raises(SkynetError, match=r"HAProxy node lb3 .* did not answer `show stat` within 0.2s"):
            rt.show_stat()


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("set_map", ("/m/live.map", "web;show", "web_green")),
        ("set_map", ("/m/live.map", "web", "web_green\nshutdown frontend web")),
        ("add_map", ("/m/live.map", "we b", "web_green")),
        ("add_map", ("/m/li ve.map", "web", "web_green")),
        ("del_map", ("/m/live.map", "web\r")),
        ("show_map", ("/m/live.map;show stat",)),
        ("servers", ("web_green; disable server web_green/web_green1",)),
        ("command", ("show stat\nshutdown sessions",)),
    ],
)
def test_unsafe_words_never_reach_the_socket(fake, call, args):
    runtime = hr.HAProxyRuntime(fake.path)
    with pytest.raises(SkynetError, match=r"runtime API|refusing to send"):
        getattr(runtime, call)(*args)
    assert fake.commands == []
    assert fake.maps["/m/live.map"] == {"web": "web_blue"}


@pytest.mark.parametrize(("key", "value"), [("web\n", "web_green"), ("web", "web_green api api_blue"), ("a;b", "x")])
def test_map_files_refuse_unsafe_words(tmp_path, key, value):
    path = tmp_path / "live.map"
    path.write_text("web web_blue\n")
    with pytest.raises(SkynetError, match="cannot be sent to HAProxy's runtime API"):
        hr.write_map_file(str(path), key, value)
    assert path.read_text() == "web web_blue\n"
