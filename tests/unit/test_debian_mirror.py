"""scripts/debian-mirror.sh, which scripts/deps.sh, scripts/molecule-image.sh and the prometheus
role's alternative molecule scenario take their Debian mirror from, on sample apt sources."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "debian-mirror.sh"
FALLBACK = "http://deb.debian.org/debian"

SECURITY_822 = """Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
NODESOURCE_822 = """Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def mirror(root, env=None, awk=None):
    environ = {k: v for k, v in os.environ.items() if k != "SKYNET_DEBIAN_MIRROR"}
    if awk:
        # The same script under another awk: a directory whose `awk` is that one, first on PATH.
        bin_dir = root.parent / f"{root.name}-bin"
        bin_dir.mkdir()
        (bin_dir / "awk").symlink_to(awk)
        environ["PATH"] = f"{bin_dir}:{environ['PATH']}"
    run = subprocess.run(
        ["bash", str(SCRIPT), str(root)],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert run.stderr == ""
    return run.stdout


def sources(root, files):
    for name, text in files.items():
        path = root / "etc" / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CASES = {
    "deb822 as on Debian 12, security first": (
        {
            "sources.list.d/debian.sources": SECURITY_822
            + "\n"
            + "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
            "URIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
        },
        "http://mirror.example/debian",
    ),
    "one-line with options": (
        {
            "sources.list": "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            "http://proxy.lan:3142/debian/ bookworm main contrib\n"
        },
        "http://proxy.lan:3142/debian",
    ),
    "one-line: spaced options, comments, deb-src and a commented line first": (
        {
            "sources.list": "# deb http://old.example/debian bookworm main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "  deb http://security.example/debian-security bookworm-security main\n"
            "\tdeb [ arch=amd64 ] https://local.example/debian stable main # the LAN's\n"
        },
        "https://local.example/debian",
    ),
    "sources.list before sources.list.d": (
        {
            "sources.list": "deb http://first.example/debian bookworm main\n",
            "sources.list.d/a.sources": "Types: deb\nURIs: http://second.example/debian\nSuites: bookworm\n"
            "Components: main\n",
        },
        "http://first.example/debian",
    ),
    "only .list and .sources files are read, in name order": (
        {
            "sources.list.d/a.list.disabled-by-farm": "deb http://disabled.example/debian bookworm main\n",
            "sources.list.d/b.sources.save": "Types: deb\nURIs: http://saved.example/debian\nSuites: bookworm\n"
            "Components: main\n",
            "sources.list.d/c.list": "deb http://c.example/debian bullseye main\n",
            "sources.list.d/d.sources": "Types: deb\nURIs: http://d.example/debian\nSuites: bookworm\n"
            "Components: main\n",
        },
        "http://c.example/debian",
    ),
    "deb822: disabled, deb-src, no main, then continuation lines and lower-case fields": (
        {
            "sources.list.d/debian.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
            "Components: main\nEnabled: no\n\n"
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
            "Types: deb\nURIs: http://contrib.example/debian\nSuites: bookworm\nComponents: contrib\n\n"
            "types: deb deb-src\nuris:\n cdrom:[Debian 12]/\n http://cont.example/debian\n"
            "suites:\n bookworm\n bookworm-updates\ncomponents: main non-free-firmware\n"
        },
        "http://cont.example/debian",
    ),
    "no Debian release among the sources": (
        {
            "sources.list.d/google.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
            "sources.list.d/nodesource.sources": NODESOURCE_822,
            "sources.list.d/security.sources": SECURITY_822,
        },
        FALLBACK,
    ),
    "no apt sources at all": ({}, FALLBACK),
}


@pytest.mark.parametrize(("files", "expected"), CASES.values(), ids=CASES.keys())
def test_the_mirror_comes_from_the_apt_sources(tmp_path, files, expected):
    assert mirror(sources(tmp_path, files)) == expected + "\n"


@pytest.mark.parametrize("awk", ["gawk", "original-awk", "busybox"])
def test_other_awks_read_them_alike(tmp_path, awk):
    # Debian's awk is mawk; other machines have gawk, a BSD awk or busybox's.
    found = shutil.which(awk)
    if not found:
        pytest.skip(f"{awk} is not installed")
    if awk == "busybox":
        (tmp_path / "busybox").mkdir()
        (tmp_path / "busybox" / "awk").symlink_to(found)
        found = str(tmp_path / "busybox" / "awk")
    for i, (files, expected) in enumerate(CASES.values()):
        root = sources(tmp_path / str(i), files)
        assert mirror(root, awk=found) == expected + "\n", list(CASES)[i]


def test_the_override_wins(tmp_path):
    root = sources(tmp_path, {"sources.list": "deb http://mirror.example/debian bookworm main\n"})
    assert mirror(root, env={"SKYNET_DEBIAN_MIRROR": "http://override.example/debian/"}) == (
        "http://override.example/debian\n"
    )
