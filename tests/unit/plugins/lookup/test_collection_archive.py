"""The collection tarball the runtime role installs: what it holds, and the same bytes for the same files."""

from __future__ import annotations

import ast
import io
import tarfile
from pathlib import Path

import pytest
from ansible_collections.cyberdyne.skynet.plugins.lookup import collection_archive
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _daemon

ROOT = Path(__file__).resolve().parents[4]
PACKAGE = "ansible_collections.cyberdyne.skynet.plugins.module_utils"


def names(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def tree(tmp_path):
    for path, text in {
        "galaxy.yml": "namespace: cyberdyne\n",
        "plugins/module_utils/_a.py": "A = 1\n",
        "plugins/module_utils/__pycache__/_a.cpython-311.pyc": "x",
        "plugins/modules/m.py": "#!/usr/bin/python\n",
        "plugins/.hidden": "x",
        "playbooks/autoscale.yml": "---\n",
        "meta/runtime.yml": "---\n",
        "tests/unit/test_x.py": "x",
        "docs/x.md": "x",
        ".venv/bin/python": "x",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "plugins/modules/m.py").chmod(0o755)
    return tmp_path


def test_members_are_what_the_daemons_and_playbooks_run_from(tree):
    assert [m.as_posix() for m in collection_archive.members(tree)] == [
        "galaxy.yml",
        "meta/runtime.yml",
        "playbooks/autoscale.yml",
        "plugins/module_utils/_a.py",
        "plugins/modules/m.py",
    ]


def test_the_same_files_give_the_same_bytes_and_a_change_other_bytes(tree, tmp_path_factory):
    first = collection_archive.pack(tree, collection_archive.members(tree))
    (tree / "plugins/module_utils/_a.py").touch()  # a new mtime only
    assert collection_archive.pack(tree, collection_archive.members(tree)) == first
    (tree / "plugins/module_utils/_a.py").write_text("A = 2\n")
    assert collection_archive.pack(tree, collection_archive.members(tree)) != first


def test_members_carry_no_owner_or_time_and_keep_the_executable_bit(tree):
    members = names(collection_archive.pack(tree, collection_archive.members(tree)))
    assert {m.mtime for m in members.values()} == {0} and {(m.uid, m.gid, m.uname) for m in members.values()} == {
        (0, 0, "")
    }
    assert members["plugins/modules/m.py"].mode == 0o755 and members["plugins/module_utils/_a.py"].mode == 0o644
    assert members["plugins/module_utils"].isdir()


def test_write_names_the_file_after_its_checksum_and_writes_it_once(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    path = collection_archive.write(tree, out)
    assert Path(path).name.startswith("cyberdyne-skynet-") and Path(path).stat().st_mode & 0o777 == 0o644
    assert collection_archive.write(tree, out) == path and len(list(out.iterdir())) == 1


def imported(name):
    """The module_utils files that module_utils/name imports, directly or not, with name itself."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.walk(ast.parse((ROOT / "plugins" / "module_utils" / current).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                todo.extend(f"{alias.name}.py" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                todo.append(node.module.rsplit(".", 1)[1] + ".py")
    return seen


@pytest.mark.parametrize("name", sorted(_daemon.DAEMONS))
def test_this_collections_tarball_holds_every_file_each_daemon_imports(name):
    members = names(collection_archive.pack(ROOT, collection_archive.members(ROOT)))
    needed = imported(f"{_daemon.DAEMONS[name]}.py") | {"_daemon.py"}
    assert {f"plugins/module_utils/{f}" for f in needed} <= set(members)
    assert "playbooks/autoscale.yml" in members and "meta/runtime.yml" in members
