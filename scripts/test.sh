#!/usr/bin/env bash
# Runs the test steps given (all by default), each timed; prints one summary line at the end
# and exits non-zero when any step failed. Called by `make test` after `make deps`.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
export PATH="$here/.venv/bin:$here/.tools/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.build/collections"
export CONTAINERS_CONF="$here/tests/harness/containers.conf"
# Nothing the tests do may leak into the invoking user's home or /tmp.
export HOME="$here/.cache/home" TMPDIR="$here/.cache/tmp"
mkdir -p "$HOME" "$TMPDIR"

step_lint() {
  ruff check . && ruff format --check . && yamllint -s . && ansible-lint -q
}
step_sanity() { bash scripts/ansible-test.sh sanity; }
step_unit() { pytest -q tests/unit; }
# Integration tests mostly wait on real components (health checks, elections, cooldowns): files run
# side by side, each on one worker, with its own stack on free ports.
step_integration() { pytest -q -n "${SKYNET_TEST_WORKERS:-4}" --dist loadfile tests/integration; }
step_molecule() {
  # Each role's scenarios (or those of the roles in MOLECULE_ROLES) in systemd containers of the
  # image molecule-image.sh builds.
  bash scripts/molecule-image.sh || return 1
  # The Podman API service the scenarios' tasks connect through (.config/molecule/config.yml).
  export SKYNET_MOLECULE_PODMAN_SOCKET="$TMPDIR/molecule-podman.sock"
  rm -f "$SKYNET_MOLECULE_PODMAN_SOCKET"
  podman system service --time 0 "unix://$SKYNET_MOLECULE_PODMAN_SOCKET" &
  local service=$! rc=0 dir role start times=()
  for _ in $(seq 50); do [ -S "$SKYNET_MOLECULE_PODMAN_SOCKET" ] && break; sleep 0.1; done
  for role in ${MOLECULE_ROLES:-$(cd roles && echo *)}; do
    dir=roles/$role/molecule
    [ -d "$dir" ] || continue
    printf '\n-- molecule: %s --\n' "${dir%/molecule}"
    start=$SECONDS
    (cd "${dir%/molecule}" && molecule test --all) || rc=1
    times+=("$role $((SECONDS - start))s")
  done
  # playbooks/site.yml on six containers (skipped when MOLECULE_ROLES picks roles).
  if [ -z "${MOLECULE_ROLES:-}" ] || [[ " $MOLECULE_ROLES " == *" site "* ]]; then
    printf '\n-- molecule: site --\n'
    start=$SECONDS
    (cd extensions && molecule test -s site) || rc=1
    times+=("site $((SECONDS - start))s")
  fi
  # What each took, for keeping the whole run within CI's limit.
  (IFS=, && printf '\nmolecule: %s\n' "${times[*]}")
  kill "$service" && wait "$service" 2>/dev/null
  return $rc
}
step_build() {
  local out="$TMPDIR/galaxy" && rm -rf "$out" && mkdir -p "$out" &&
    ansible-galaxy collection build --force --output-path "$out" . &&
    ansible-galaxy collection install --force -p "$out/installed" "$out"/cyberdyne-skynet-*.tar.gz &&
    ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc -l cyberdyne.skynet >/dev/null &&
    rm -rf "$out"
}
step_leftovers() {
  # The harness names its work dirs skynet-stack-* under $TMPDIR: none, nor any process using
  # one, may remain (other clones' runs use other TMPDIRs). Nor may a container's network
  # namespace: a leaked one keeps its port-forwarding rules, which then capture the traffic of
  # whatever later listens on that loopback port. Nor a bridge or veth of the multi-host stack
  # (tests/harness/multihost.py names them skyb-*).
  local dirs procs ctrs netns links
  dirs=$( (find "$TMPDIR" -maxdepth 1 \( -name 'skynet-stack-*' -o -name 'skynet-act-*' \); find /tmp -maxdepth 1 -name 'skynet-act-*') 2>/dev/null)
  procs=$(pgrep -af "$TMPDIR/skynet-stack-" | grep -v pgrep)
  ctrs=$(comm -13 <(echo "$molecule_before" | sort) <(podman ps -aq --filter label=owner=molecule 2>/dev/null | sort))
  netns=$(comm -13 <(echo "$netns_before" | sort) <(netns_list | sort))
  links=$(comm -13 <(echo "$links_before" | sort) <(skyb_links | sort))
  [ -z "$dirs$procs$ctrs$netns$links" ] || {
    echo "left behind:"; echo "$dirs"; echo "$procs"; echo "$ctrs"; echo "$netns"; echo "$links"; return 1
  }
}

# Molecule containers that other work on this machine already had are not this run's leftovers.
molecule_before=$(podman ps -aq --filter label=owner=molecule 2>/dev/null)
netns_list() { ip netns list 2>/dev/null | awk '{print $1}'; }
netns_before=$(netns_list)
skyb_links() { ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep '^skyb-'; }
links_before=$(skyb_links)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(lint sanity unit integration molecule build leftovers)
passed=() failed=() times=()
# Each step's output is kept too, so that the end of a failed step (pytest's summary of what failed) is
# printed again last, where a CI log cut to its tail still shows it.
logs="$TMPDIR/test-steps" && rm -rf "$logs" && mkdir -p "$logs"
for s in "${steps[@]}"; do
  printf '\n\033[1m== %s ==\033[0m\n' "$s"
  start=$SECONDS
  "step_$s" 2>&1 | tee "$logs/$s.log"
  if [ "${PIPESTATUS[0]}" -eq 0 ]; then passed+=("$s"); else failed+=("$s"); fi
  times+=("$s $((SECONDS - start))s")
done
IFS=, ; summary="${times[*]}"; unset IFS
if [ ${#failed[@]} -eq 0 ]; then
  printf '\n\033[32mmake test: %d passed, 0 failed (%s)\033[0m\n' "${#passed[@]}" "${summary//,/, }"
else
  for s in "${failed[@]}"; do
    printf '\n\033[1m== %s failed; the end of its output ==\033[0m\n' "$s"
    grep -E '^(FAILED|ERROR) |^[0-9]+ (passed|failed)|^left behind|Error|error:|failed' "$logs/$s.log" | tail -n 30
    tail -n 15 "$logs/$s.log"
  done
  printf '\n\033[31mmake test: %d passed, %d failed: %s (%s)\033[0m\n' "${#passed[@]}" "${#failed[@]}" "${failed[*]}" "${summary//,/, }"
  exit 1
fi
