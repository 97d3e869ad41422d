#!/usr/bin/env bash
# Prints the Debian mirror that this machine's apt sources already use, so that the temporary
# apt sources and debootstrap runs of the scripts and molecule scenarios go where apt goes (a
# local mirror, a caching proxy): SKYNET_DEBIAN_MIRROR when set; else the first enabled `deb`
# source of a Debian release suite (bookworm, bullseye, stable, ...) with component main, read
# as apt reads them (sources.list, then sources.list.d/*.list and *.sources, one-line and deb822
# formats); else http://deb.debian.org/debian.
# Usage: scripts/debian-mirror.sh [ROOT]    ROOT holds the etc/apt to read (default /).
set -euo pipefail

if [ -n "${SKYNET_DEBIAN_MIRROR:-}" ]; then
  printf '%s\n' "${SKYNET_DEBIAN_MIRROR%/}"
  exit 0
fi

apt="${1:-}/etc/apt"
files=()
[ -f "$apt/sources.list" ] && files+=("$apt/sources.list")
for f in "$apt"/sources.list.d/*; do
  case $f in *.list | *.sources) [ -f "$f" ] && files+=("$f") ;; esac
done

found=""
if [ ${#files[@]} -gt 0 ]; then
  found=$(awk '
    function release(suites,   n, i, s) {
      n = split(suites, s, /[ \t]+/)
      for (i = 1; i <= n; i++)
        if (s[i] ~ /^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldoldstable|oldstable|stable|testing|unstable)$/)
          return 1
      return 0
    }
    function has(list, word,   n, i, w) {
      n = split(list, w, /[ \t]+/)
      for (i = 1; i <= n; i++) if (w[i] == word) return 1
      return 0
    }
    function pick(types, uris, suites, components, enabled,   n, i, u) {
      if (found || tolower(enabled) == "no" || !has(types, "deb") || !release(suites) || !has(components, "main"))
        return
      n = split(uris, u, /[ \t]+/)
      for (i = 1; i <= n && !found; i++)
        if (u[i] ~ /^(https?|ftp|file):/) { sub(/\/+$/, "", u[i]); print u[i]; found = 1 }
    }
    function flush() {
      if (uris != "") pick(f["types"], uris, f["suites"], f["components"], f["enabled"])
      delete f; uris = ""; key = ""
    }
    FNR == 1 { flush(); deb822 = FILENAME ~ /\.sources$/ }
    !deb822 {
      # deb [options] uri suite component...
      line = $0
      sub(/#.*/, "", line)
      gsub(/^[ \t]+|[ \t]+$/, "", line)
      n = split(line, w, /[ \t]+/)
      if (w[1] != "deb") next
      i = 2
      if (w[i] ~ /^\[/) { while (i <= n && w[i] !~ /\]$/) i++; i++ }
      comps = ""
      for (j = i + 2; j <= n; j++) comps = comps " " w[j]
      pick("deb", w[i], w[i + 1], comps, "yes")
      next
    }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    /^[ \t]/ { if (key != "") { f[key] = f[key] " " $0; if (key == "uris") uris = f[key] } next }
    {
      key = tolower(substr($0, 1, index($0, ":") - 1))
      value = substr($0, index($0, ":") + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", value)
      f[key] = value
      if (key == "uris") uris = value
    }
    END { flush() }
  ' "${files[@]}")
fi
printf '%s\n' "${found:-http://deb.debian.org/debian}"
