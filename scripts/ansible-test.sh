#!/usr/bin/env bash
# Runs ansible-test on a copy of the collection at ansible_collections/cyberdyne/skynet,
# offline-safe: ansible-test's pip bootstrap script comes from a local stand-in.
# Usage: scripts/ansible-test.sh sanity [args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
export HOME="$here/.cache/home"
export PATH="$venv/bin:$PATH"

# ansible-test downloads get-pip.py from a host these machines cannot reach; give it a
# stand-in that installs pip from the wheel PyPI serves.
pip_version=$("$venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages
from types import SimpleNamespace as N; print(get_venv_packages(N(version="3.11"))["pip"])')
cache="$HOME/.ansible/test/cache"
stand_in="$cache/get_pip_${pip_version//./_}.py"
if [ ! -f "$stand_in" ]; then
  mkdir -p "$cache"
  "$venv/bin/pip" download -q --no-deps --only-binary=:all: -d "$cache" "pip==$pip_version" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  cat >"$stand_in" <<PY
# Stand-in for get-pip.py $pip_version: installs pip from the wheel beside this file.
import os, subprocess, sys
wheel = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-$pip_version-py3-none-any.whl")
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel") and not a.startswith("pip==")]
sys.exit(subprocess.call([sys.executable, os.path.join(wheel, "pip"), "install", *args, wheel]))
PY
fi

dest="$here/.build/ansible-test/ansible_collections/cyberdyne/skynet"
rm -rf "$dest" && mkdir -p "$dest"
(cd "$here" && git ls-files -co --exclude-standard -z) | rsync -a --from0 --ignore-missing-args --files-from=- "$here/" "$dest/"
cd "$dest"
git init -q  # ansible-test lists the files git knows, tracked or not
exec ansible-test "$@" --venv --python 3.11 --color no
