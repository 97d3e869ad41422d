from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _names as names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

# Names that reach Consul, Docker, HAProxy, KV keys or file paths; none is a DNS label.
FUZZ = [
    "",
    "web\n",
    "we\nb",
    "web;reload",
    "web; show map",
    "../evil",
    "..",
    ".",
    "web/../x",
    "web app",
    " web",
    "web\t",
    "{{ lookup('env', 'HOME') }}",
    "{{web}}",
    "{% raw %}",
    "wéb",
    "\uff57\uff45\uff42",  # full-width
    "web\u200b",
    "w\u0435b",  # Cyrillic e
    "a" * 64,
    "a" * 200,
    "Web",
    "WEB",
    "web_blue",
    "web.example",
    "-web",
    "web-",
    "1web",
    "web\x00",
    "web\r",
    "$(reboot)",
    "web`id`",
    "web'",
    'web"',
    "web#1",
    "web,db",
    "web\\n",
]

VALID_NAMES = ["a", "web", "web-2", "api-v2-blue-x", "a" + "b" * 61 + "c", "x1"]


@pytest.mark.parametrize("value", VALID_NAMES)
def test_valid_service_names_pass(value):
    assert names.service_name(value) == value


@pytest.mark.parametrize("value", [*FUZZ, None, 7, ["web"], {"name": "web"}, True])
def test_fuzzed_service_names_are_refused_naming_field_and_rule(value):
    with pytest.raises(SkynetError) as e:
        names.service_name(value, "services[2].name")
    message = str(e.value)
    assert message.startswith(f"services[2].name {value!r}")
    assert "is not a valid service name: use 1-63 lower-case letters, digits and dashes" in message


def test_the_message_reads_as_the_issue_asks():
    with pytest.raises(SkynetError, match=r"^services\[2\]\.name '\.\./evil' is not a valid service name: use 1-63"):
        names.service_name("../evil", "services[2].name")


def test_63_characters_is_the_longest_name():
    assert names.service_name("a" * 63)
    with pytest.raises(SkynetError):
        names.service_name("a" * 64)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("blue", True), ("green", True), ("Blue", False), ("red", False), ("", False), (None, False), ("blue\n", False)],
)
def test_colors(value, ok):
    if ok:
        assert names.color(value) == value
    else:
        with pytest.raises(SkynetError, match=r"^color .* is not a valid color: use blue or green$"):
            names.color(value)


VALID_TAGS = ["v2", "canary", "traefik.enable=true", "prom_scrape", "Zone-A", "1", "a" * 128, "udp"]
BAD_TAGS = [
    "",
    " ",
    "a b",
    "a;b",
    "a\n",
    "{{ x }}",
    "tag/x",
    "-x",
    ".x",
    "_x",
    "=x",
    "é",
    "a" * 129,
    "blue",
    "green",
    "a,b",
    "a:b",
    None,
    3,
]


@pytest.mark.parametrize("value", VALID_TAGS)
def test_valid_tags_pass(value):
    assert names.tag(value) == value


@pytest.mark.parametrize("value", BAD_TAGS)
def test_bad_tags_are_refused(value):
    with pytest.raises(SkynetError, match=r"^tags\[1\] .* is not a valid tag: use 1-128 letters"):
        names.tag(value, "tags[1]")


def test_tags_name_the_index_of_the_bad_one():
    assert names.tags(["a", "b"]) == ("a", "b")
    assert names.tags([]) == ()
    with pytest.raises(SkynetError, match=r"^tags\[2\] 'x y'"):
        names.tags(["a", "b", "x y"])
    with pytest.raises(SkynetError, match="must be a list of tags"):
        names.tags("a,b")


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("skynet/scale/web/state", True),
        ("skynet/bluegreen/web-2/release", True),
        ("skynet/v1.2_x/a", True),
        ("skynet", True),
        ("skynet/../evil/state", False),
        ("skynet/./x", False),
        ("skynet//x", False),
        ("/skynet/x", False),
        ("skynet/x/", False),
        ("skynet/we b/x", False),
        ("skynet/web;x/state", False),
        ("skynet/web\n/state", False),
        ("skynet/{{x}}/state", False),
        ("skynet/wéb/state", False),
        ("skynet/" + "a" * 129, False),
        ("", False),
        (None, False),
    ],
)
def test_kv_keys(key, ok):
    if ok:
        assert names.kv_key(key) == key
    else:
        with pytest.raises(SkynetError, match=r"^key .* is not a valid Consul KV key: each part between slashes"):
            names.kv_key(key)


@pytest.mark.parametrize("segment", [*FUZZ[:9], "a/b", "a" * 129])
def test_kv_segments_refuse_fuzz(segment):
    with pytest.raises(SkynetError, match="is not a valid Consul KV key part"):
        names.kv_segment(segment, "service")


@pytest.mark.parametrize(
    ("word", "ok"),
    [
        ("/etc/haproxy/maps/live.map", True),
        ("web_green", True),
        ("web", True),
        ("#1", True),
        ("web green", False),
        ("web;show", False),
        ("web\n", False),
        ("web\r", False),
        ("web\t", False),
        ("web\\", False),
        ("web\x00", False),
        ("web\u2003", False),
        ("", False),
        (None, False),
    ],
)
def test_runtime_words(word, ok):
    if ok:
        assert names.runtime_word(word) == word
    else:
        with pytest.raises(SkynetError, match=r"cannot be sent to HAProxy's runtime API: it must be one word"):
            names.runtime_word(word, "map key")


def test_definition_errors_collects_every_problem_with_its_field():
    definitions = [
        {"name": "web", "color": "green", "tags": ["v2"]},
        {"name": "../evil"},
        {"name": "web"},
        {"name": "db", "color": "red", "tags": ["ok", "bad tag"]},
        "nope",
        {},
    ]
    errors = names.definition_errors(definitions, "prometheus_services")
    assert errors == [
        "prometheus_services[1].name '../evil' is not a valid service name: " + names.SERVICE_NAME_RULE,
        "prometheus_services[2].name 'web' is defined more than once",
        "prometheus_services[3].color 'red' is not a valid color: use blue or green",
        "prometheus_services[3].tags[1] 'bad tag' is not a valid tag: " + names.TAG_RULE,
        "prometheus_services[4] is not a mapping",
        "prometheus_services[5].name None (NoneType) is not a valid service name: " + names.SERVICE_NAME_RULE,
    ]
    assert names.definition_errors([{"name": "web"}, {"name": "db", "color": "blue"}]) == []
    assert names.definition_errors("web") == ["services must be a list of service definitions, not 'web'"]


def test_problem_is_none_for_valid_values():
    assert names.problem(names.service_name, "web", "x") is None
    assert "x '' is not a valid service name" in names.problem(names.service_name, "", "x")


# -- where the rules are applied -----------------------------------------------------------------


def scaling(name, **extra):
    return {
        "name": name,
        "image": "web:1",
        "scaling": {"min": 1, "max": 2, "checks": [{"name": "rps", "query": "q", "target": 5}]},
        **extra,
    }


@pytest.mark.parametrize("name", ["../evil", "web;x", "Web", "a" * 64, "we b", "{{ x }}", 3])
def test_scale_validation_refuses_bad_names_with_their_index(name):
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import validate

    with pytest.raises(SkynetError) as e:
        validate([scaling("web"), scaling(name)])
    assert str(e.value).startswith("invalid scaling policies, nothing was changed: ")
    assert f"services[1].name {names._quoted(name)} is not a valid service name" in str(e.value)


def test_scale_validation_refuses_bad_limits_and_colors():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import validate

    with pytest.raises(SkynetError) as e:
        validate([scaling("web", color="red")], limit=["../evil", "db"])
    message = str(e.value)
    assert "limit[0] '../evil' is not a valid service name" in message
    assert "services[0].color 'red' is not a valid color" in message
    assert "unknown service(s) in limit: db" in message
    assert "../evil (defined" not in message
    assert set(validate([scaling("web", color="green")], limit=["web"])) == {"web"}


class RecordingKV:
    def __init__(self):
        self.calls = []

    def get(self, key):
        self.calls.append(("get", key))
        return 0, None

    def put(self, key, value, **kwargs):
        self.calls.append(("put", key))
        return True


@pytest.mark.parametrize("key", ["skynet/scale/../evil/state", "skynet//state", "skynet/we b/x", "skynet/x;y", "/a"])
def test_the_registry_refuses_unsafe_kv_keys_before_calling_consul(key):
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry

    client = type("Client", (), {})()
    client.kv = RecordingKV()
    registry = Registry(client)
    for call in (
        lambda: registry.read_json(key),
        lambda: registry.write_json(key, {}),
        lambda: registry.read_versioned(key),
    ):
        with pytest.raises(SkynetError, match="is not a valid Consul KV key"):
            call()
    assert client.kv.calls == []
    assert registry.write_json("skynet/scale/web/state", {}) is True
    assert client.kv.calls == [("put", "skynet/scale/web/state")]
