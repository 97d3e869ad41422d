#!/usr/bin/env bash
# Builds the systemd image the molecule scenarios run roles in, with no registry involved:
# a Debian 12 rootfs from debootstrap, imported into podman's default storage.
# Idempotent: does nothing when the image exists. Run as root. Usage: scripts/molecule-image.sh [--force]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/tests/harness/containers.conf}"
image=localhost/skynet-debian12-systemd:latest
# The mirror this machine's apt sources name (or SKYNET_DEBIAN_MIRROR); the image's apt uses it too.
mirror=$(bash "$here/scripts/debian-mirror.sh")
packages=python3,systemd,systemd-sysv,dbus,ca-certificates,iproute2,procps,curl,sudo

say() { printf '\033[1m[molecule-image]\033[0m %s\n' "$*"; }
if [ "${1:-}" = "--force" ]; then
  podman image rm -f "$image" >/dev/null 2>&1 || true
fi
if podman image exists "$image"; then
  say "$image: present"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "molecule-image: run as root (debootstrap, podman)" >&2; exit 1; }

start=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/skynet-molecule-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
say "$image: debootstrap bookworm (minbase + $packages) from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$tmp/root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
  { tail -n 30 "$tmp/debootstrap.log" >&2; exit 1; }

# Trim what a test container never needs, and keep systemd from starting units that fail in
# a container (no consoles, no udev, no kernel modules).
chroot "$tmp/root" apt-get clean
rm -rf "$tmp/root"/var/lib/apt/lists/* "$tmp/root"/usr/share/doc/* "$tmp/root"/usr/share/man/*
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service \
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
  systemd-remount-fs.service console-getty.service; do
  ln -sfn /dev/null "$tmp/root/etc/systemd/system/$unit"
done
: >"$tmp/root/etc/machine-id"

say "$image: podman import"
tar -C "$tmp/root" -c . | podman import --quiet \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV=container=podman' \
  --change 'STOPSIGNAL=SIGRTMIN+3' \
  --change 'LABEL=org.opencontainers.image.title=skynet-debian12-systemd' \
  --message "debootstrap bookworm minbase + $packages" \
  - "$image" >/dev/null
say "$image: built in $((SECONDS - start))s ($(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec))"
