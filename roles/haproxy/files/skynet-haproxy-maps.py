# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Puts the live colors recorded in Consul KV into HAProxy's map files, just before a start or reload.

Installed by the cyberdyne.skynet.haproxy role and run by its systemd drop-in, so that a node whose
map files no release wrote (skynet_bluegreen persist: false) starts or reloads on the recorded color
even before the role runs again. It follows the role's order for the services already in live.map:
a service whose release has not ended keeps its line; otherwise the recorded color wins. Lines are
neither added nor removed (the role does that). When Consul cannot be read it says so and changes
nothing: HAProxy then starts on the files as they are. It never fails the start or the reload.
"""

import argparse
import base64
import json
import os
import ssl
import sys
import tempfile
import urllib.error
import urllib.request

COLORS = ("blue", "green")
ENDED = ("done", "rolled_back", "aborted", "failed")


def records(args):
    """{service: recorded color} of the services without a release in progress."""
    headers = {}
    if args.token_file and os.path.exists(args.token_file):
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            headers["X-Consul-Token"] = token
    context = None
    if args.consul.startswith("https:"):
        context = ssl.create_default_context(cafile=args.ca_cert or None)
        if args.client_cert:
            context.load_cert_chain(args.client_cert, args.client_key or None)
        if args.no_verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    url = f"{args.consul.rstrip('/')}/v1/kv/{args.prefix}/?recurse=true"
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - main() allows http(s) only
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as r:  # noqa: S310
            entries = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        entries = []
    live, releasing = {}, set()
    for entry in entries:
        parts = entry.get("Key", "").split("/")
        if len(parts) != len(args.prefix.split("/")) + 2 or entry.get("Value") is None:
            continue
        try:
            value = json.loads(base64.b64decode(entry["Value"]))
        except ValueError:
            continue
        if parts[-1] == "live" and value in COLORS:
            live[parts[-2]] = value
        elif parts[-1] == "release" and isinstance(value, dict) and value.get("phase") not in ENDED:
            releasing.add(parts[-2])
    return {name: color for name, color in live.items() if name not in releasing}


def lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def rewrite(path, colors, preview):
    """Rewrites the NAME NAME_COLOR lines of path to colors (the other color for preview); True when changed."""
    old = lines(path)
    new = []
    for line in old:
        fields = line.split()
        if len(fields) == 2 and fields[0] in colors and fields[1] in (f"{fields[0]}_{c}" for c in COLORS):
            color = colors[fields[0]]
            line = f"{fields[0]} {fields[0]}_{COLORS[1 - COLORS.index(color)] if preview else color}"
        new.append(line)
    if new == old:  # also a missing file: the role creates the files, this only corrects them
        return False
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".skynet-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in new))
    os.chmod(tmp, st.st_mode & 0o7777)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--map-dir", required=True)
    p.add_argument("--consul", default="http://127.0.0.1:8500")
    p.add_argument("--token-file")
    p.add_argument("--ca-cert")
    p.add_argument("--client-cert")
    p.add_argument("--client-key")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--timeout", type=float, default=3)
    p.add_argument("--prefix", default="skynet/bluegreen")
    args = p.parse_args()
    if not args.consul.startswith(("http://", "https://")):
        print(f"skynet-haproxy-maps: --consul {args.consul!r} is not an http(s) URL: map files kept", file=sys.stderr)
        return 0
    try:
        colors = records(args)
    except (OSError, ValueError) as e:
        print(
            f"skynet-haproxy-maps: Consul KV at {args.consul} could not be read ({e}): map files kept", file=sys.stderr
        )
        return 0
    live = os.path.join(args.map_dir, "live.map")
    current = {f[0]: f[1][len(f[0]) + 1 :] for f in (line.split() for line in lines(live)) if len(f) == 2}
    changed = {n: c for n, c in colors.items() if n in current and current[n] != c}
    if changed:
        rewrite(live, colors, preview=False)
        rewrite(os.path.join(args.map_dir, "preview.map"), colors, preview=True)
        said = ", ".join(f"{n} {c}" for n, c in sorted(changed.items()))
        print(
            f"skynet-haproxy-maps: live colors recorded in Consul KV written to the map files: {said}", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
