"""Every option of a module and every role variable that carries a secret is marked no_log.

Walks each module's argument spec (as AnsibleModule gets it) and each role's meta/argument_specs.yml;
an option whose name says token, secret, password or key (other than a path or a name of one) must be
no_log: Ansible then masks its value in results, logs and the invocation record.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET = re.compile(r"(token|secret|password|passwd|(^|_)key)($|_)")
# A path to a key file, a key's name or a location of one is not the secret itself.
NOT_SECRET = re.compile(r"(_src|_file|_path|_url|_name|_dir|_prefix|key_name|_keys?_id)$|client_key|tls_.*key|_id$")


def secretish(name):
    return bool(SECRET.search(name)) and not NOT_SECRET.search(name)


def role_options():
    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        entry = yaml.safe_load(spec.read_text())["argument_specs"]["main"]
        for name, option in (entry.get("options") or {}).items():
            yield f"{spec.parts[-3]}: {name}", name, option


def module_options():
    """(module: option, option, spec) of every module's argument spec, spec helpers included."""
    from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _drivers, _prometheus, _service

    shared = {**_consul.consul_argument_spec(), **_drivers.compute_argument_spec()}
    shared.update(_prometheus.prometheus_argument_spec())
    shared.update(_service.instance_argument_spec())
    for name, spec in shared.items():
        yield f"module_utils: {name}", name, spec
    for path in sorted((ROOT / "plugins" / "modules").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg and isinstance(node.value, ast.Call):
                call = node.value
                if isinstance(call.func, ast.Name) and call.func.id == "dict":
                    kwargs = {k.arg: k.value for k in call.keywords if k.arg}
                    if "type" in kwargs:
                        no_log = kwargs.get("no_log")
                        value = no_log.value if isinstance(no_log, ast.Constant) else None
                        yield f"{path.stem}: {node.arg}", node.arg, {"no_log": value}


@pytest.mark.parametrize(
    ("where", "name", "spec"), [*role_options(), *module_options()], ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_secret_option_is_no_log(where, name, spec):
    if secretish(name):
        assert spec.get("no_log") is True, f"{where} carries a secret and must be no_log"


def test_the_walk_sees_the_known_secrets():
    names = {n for _w, n, _s in [*role_options(), *module_options()]}
    assert {"consul_token", "aws_secret_access_key", "autoscaler_consul_token", "consul_encrypt_key"} <= names
    assert secretish("consul_token") and secretish("consul_encrypt_key") and secretish("aws_secret_access_key")
    assert not secretish("tls_client_key") and not secretish("key_prefix") and not secretish("consul_apt_key_url")
