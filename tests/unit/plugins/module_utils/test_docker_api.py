from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._docker_api import _version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("1.41", (1, 41)),
        ("1.45", (1, 45)),
        ("1.9", (1, 9)),
        ("2", (2,)),
        ("1.41.0", (1, 41, 0)),
    ],
)
def test_an_api_version_reads_as_numbers(text, version):
    assert _version(text) == version


def test_versions_compare_as_numbers_not_as_text():
    assert _version("1.9") < _version("1.41")
    assert min(_version("1.47"), _version("1.45")) == (1, 45)


@pytest.mark.parametrize("text", ["x", None, "", "1.", ".41", "1.x", "v1.41", "1,41"])
def test_what_is_not_a_version_is_none(text):
    assert _version(text) is None
