#!/usr/bin/env bash
# Installs everything Skynet's tests and demo need on a Debian 12 machine, as root.
# Idempotent: each step checks first and says what it does.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/.tools"
venv="$here/.venv"
consul_version=1.8.7+dfsg1-2+b3
consul_sha256=e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9
prometheus_version=2.24.1+ds-1+b7
prometheus_sha256=7f98887c0fa36e0dd81bb39abc57a9e2535c2a0dc20442a431255ebc0b87b73a
apt_packages=(haproxy socat podman runc prometheus prometheus-alertmanager
  prometheus-node-exporter busybox-static wrk apache2-utils shellcheck debootstrap iproute2
  dnsutils curl rsync git make conmon openjdk-17-jre-headless)

say() { printf '\033[1m[deps]\033[0m %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "deps: run as root (apt, podman)" >&2; exit 1; }; }

mkdir -p "$tools/bin"

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  say "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's packages start their daemons where systemd runs; the tests start their own.
  for s in prometheus prometheus-alertmanager prometheus-node-exporter haproxy; do
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    fi
  done
else
  say "apt: all ${#apt_packages[@]} packages present"
fi

# Consul and the consul_sd-enabled Prometheus come from bullseye (not in bookworm), from the
# mirror this machine's apt sources name (or SKYNET_DEBIAN_MIRROR).
mirror=$(bash "$here/scripts/debian-mirror.sh")
bullseye_fetch() { # package version sha256 member dest
  local pkg=$1 ver=$2 sum=$3 member=$4 dest=$5
  if [ -x "$dest" ]; then say "$pkg $ver: present"; return; fi
  say "$pkg $ver: downloading from Debian bullseye at $mirror"
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" >"$tmp/sources.list"
  local opts=(-o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$tmp/lists" -o Dir::Cache::Archives="$tmp/archives" -o APT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update
  (cd "$tmp" && apt-get "${opts[@]}" download "$pkg=$ver")
  local deb; deb=$(ls "$tmp"/"${pkg}"_*.deb)
  if [ "$sum" != "any" ]; then
    echo "$sum  $deb" | sha256sum -c --quiet - || { echo "deps: checksum mismatch for $deb" >&2; exit 1; }
  fi
  dpkg-deb -x "$deb" "$tmp/root"
  install -m 0755 "$tmp/root/$member" "$dest"
  rm -rf "$tmp"
}
bullseye_fetch consul "$consul_version" "$consul_sha256" usr/bin/consul "$tools/bin/consul"
bullseye_fetch prometheus "$prometheus_version" "$prometheus_sha256" usr/bin/prometheus "$tools/bin/prometheus-consul-sd"

conf="$here/tests/harness/containers.conf"
say "podman: containers.conf at $conf (runc, no default ulimits)"

if [ ! -x "$venv/bin/python" ]; then
  say "venv: creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want=$(cat "$here/requirements.txt" "$here/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "venv: installing pinned Python packages (requirements.txt, requirements-dev.txt)"
  # The machine's pip.conf names local indexes that may be absent: hide only that warning.
  { "$venv/bin/pip" install -q --upgrade pip==24.3.1 &&
    "$venv/bin/pip" install -q -r "$here/requirements.txt" -r "$here/requirements-dev.txt"; } \
    2> >(grep -v "is neither a file nor a directory" >&2)
  echo "$want" >"$stamp"
else
  say "venv: Python packages up to date"
fi
say "ready"
