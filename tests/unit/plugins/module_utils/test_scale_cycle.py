from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale_cycle import run_arguments, validate


def test_validation_gives_the_defaults_and_types_of_the_module():
    params, no_log = validate({"services": [], "lock_wait": "30", "dry_run": "yes"})
    assert params["lock_wait"] == 30.0 and params["dry_run"] is True
    assert params["parallel"] == 8 and params["key_prefix"] == "skynet/scale" and params["wait_timeout"] == 120
    assert params["limit"] is None and no_log == set()


def test_the_values_of_no_log_arguments_are_known():
    _params, no_log = validate({"services": [], "consul_token": "s3cret"})
    assert "s3cret" in no_log


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "missing required arguments: services"),
        ({"services": [], "lock_wait": "soon"}, "lock_wait"),
        ({"services": [], "limits": ["web"]}, "unsupported parameters: limits"),
        ({"services": "web"}, "services"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_problem(arguments, problem):
    with pytest.raises(SkynetError, match=f"invalid skynet_scale arguments: .*{problem}"):
        validate(arguments)


def test_a_cycle_that_cannot_run_says_why_without_the_no_log_values():
    # An invalid key_prefix that happens to be the token: the message names it, masked.
    result = run_arguments({"services": [], "key_prefix": "s3cret/..", "consul_token": "s3cret/.."})
    assert set(result) == {"msg"}
    assert "key_prefix" in result["msg"] and "s3cret" not in result["msg"]


def test_invalid_arguments_are_a_message_not_an_exception():
    assert run_arguments({"services": "web", "consul_token": "x"})["msg"].startswith("invalid skynet_scale arguments")


def test_a_cycle_that_crashes_gives_its_traceback_without_the_no_log_values(monkeypatch):
    from ansible_collections.cyberdyne.skynet.plugins.module_utils import _scale_cycle

    def crash(params, parsed):
        raise KeyError(f"token {params['consul_token']} was seen")

    monkeypatch.setattr(_scale_cycle, "run", crash)
    msg = run_arguments({"services": [], "consul_token": "s3cret"})["msg"]
    assert msg.startswith("the cycle crashed: Traceback") and "KeyError" in msg and "s3cret" not in msg
