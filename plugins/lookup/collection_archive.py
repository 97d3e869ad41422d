# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: collection_archive
author: Skynet developers (@cyberdyne)
version_added: 0.1.0
short_description: A tarball of the collection that runs the play, for installing it on a host
description:
  - Packs the files of this collection that its daemons and playbooks run from (C(plugins), C(playbooks),
    C(meta), and C(MANIFEST.json) or C(galaxy.yml)) into a gzipped tarball on the controller and returns its path.
  - The tarball is the same, byte for byte, for the same files (sorted members, no times, owners or
    compression stamps), so copying it to a host is idempotent and changes only when the collection does.
    Byte code caches and hidden files are left out.
  - It works from an installed collection (Galaxy, a tarball) and from a source checkout alike; the
    C(cyberdyne.skynet.runtime) role unpacks it into the host's one installed copy of the collection.
options:
  dir:
    description:
      - Directory on the controller the tarball is written to; Ansible's local temporary directory of this
        run when omitted (removed when the run ends).
    type: path
"""

EXAMPLES = r"""
- name: Copy this collection to the host
  ansible.builtin.copy:
    src: "{{ lookup('cyberdyne.skynet.collection_archive') }}"
    dest: /opt/skynet/collection.tar.gz
    mode: "0644"
"""

RETURN = r"""
_raw:
  description: The path of the tarball on the controller, named after the collection and the checksum of its content.
  type: list
  elements: path
"""

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = ("MANIFEST.json", "galaxy.yml", "meta", "plugins", "playbooks")


def members(root):
    """The files to pack, relative to root, sorted: MEMBERS that exist, without byte code or hidden files."""
    found = []
    for top in MEMBERS:
        path = root / top
        if path.is_file():
            found.append(Path(top))
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
                found.extend(
                    Path(dirpath, f).relative_to(root)
                    for f in filenames
                    if not f.startswith(".") and not f.endswith((".pyc", ".pyo"))
                )
    return sorted(found)


def pack(root, files):
    """The gzipped tarball of files (relative to root) as bytes: the same bytes for the same content."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({parent for f in files for parent in f.parents if parent != Path(".")})
        for name in sorted([*dirs, *files]):
            info = tarfile.TarInfo(name.as_posix())
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            if name in dirs:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            data = (root / name).read_bytes()
            info.size, info.mode = len(data), 0o755 if os.access(root / name, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def write(root, directory):
    """Writes the tarball of root into directory (once: its name is its checksum) and returns its path."""
    data = pack(root, members(root))
    dest = Path(directory) / f"cyberdyne-skynet-{hashlib.sha256(data).hexdigest()[:16]}.tar.gz"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".collection-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    return str(dest)


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        directory = self.get_option("dir")
        if not directory:
            from ansible import constants as C

            directory = C.DEFAULT_LOCAL_TMP
        try:
            return [write(ROOT, directory)]
        except OSError as e:
            raise AnsibleLookupError(f"cannot pack the collection at {ROOT} into {directory}: {e}") from e
