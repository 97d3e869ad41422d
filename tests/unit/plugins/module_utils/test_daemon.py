"""The daemons' one entry point: a name chooses the daemon, the rest are its arguments."""

from __future__ import annotations

import argparse
import importlib

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _daemon


@pytest.mark.parametrize("argv", [[], ["skynet-nothing"], ["--help"]])
def test_an_unknown_or_missing_name_is_a_usage_error_naming_the_daemons(argv, capsys):
    assert _daemon.main(argv) == 2
    assert "skynet-registrator" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(_daemon.DAEMONS))
def test_each_name_runs_its_own_daemon_with_the_rest_of_the_arguments(name, capsys):
    with pytest.raises(SystemExit) as done:
        _daemon.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name} ")
    assert callable(importlib.import_module(f"{_daemon.PACKAGE}.{_daemon.DAEMONS[name]}").main)


@pytest.mark.parametrize("given", ["INFO", "info", "Debug"])
def test_log_level_takes_either_case(given):
    parser = argparse.ArgumentParser()
    _daemon.add_log_level(parser)
    assert parser.parse_args([f"--log-level={given}"]).log_level == given.lower()
