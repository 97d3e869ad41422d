"""The sample service image, built offline from Debian's busybox-static: no registry involved."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
ENTRYPOINT = Path(__file__).resolve().parents[1] / "images" / "sample" / "entrypoint.sh"
REPOSITORY = "localhost/skynet-sample"


def _rootfs() -> bytes:
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "www", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        tar.add(ENTRYPOINT, "entrypoint.sh")
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


def build_sample_image(client, version: str = "1") -> str:
    """Imports the sample image as localhost/skynet-sample:<version> through the Docker API."""
    tag = f"{REPOSITORY}:{version}"
    changes = [
        f"ENV VERSION={version}",
        'ENTRYPOINT ["/bin/sh", "/entrypoint.sh"]',
        "EXPOSE 8080",
        f"LABEL org.opencontainers.image.title=skynet-sample org.opencontainers.image.version={version}",
    ]
    out = client.api.import_image_from_data(_rootfs(), repository=REPOSITORY, tag=version, changes=changes)
    image_id = json.loads(out.strip().splitlines()[-1])["status"].strip()
    # Podman's compat API ignores the tag of an import: set it afterwards, the same on Docker.
    client.images.get(image_id).tag(REPOSITORY, version)
    return tag
