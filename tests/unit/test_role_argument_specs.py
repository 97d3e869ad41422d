"""Every role documents each of its defaults in meta/argument_specs.yml, with the same value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p.parent.parent for p in (Path(__file__).resolve().parents[2] / "roles").glob("*/defaults/main.yml"))


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options), "defaults and argument_specs name different variables"
    for name, value in defaults.items():
        if "default" in options[name]:
            assert options[name]["default"] == value, f"{name}: argument_specs says {options[name]['default']!r}"
