#!/usr/bin/env bash
# The container image, for real (CI runs it; README, "Run it in a
# container"). The registries that serve the Dockerfile's base images are not
# reachable here, so the image is built from the Dockerfile with its runtime
# base replaced by a local image (the Debian bookworm root filesystem of
# scripts/rootfs.sh, through the RUNTIME_IMAGE build argument) and its build
# stage replaced by the natively built binary (`--build-context build=DIR`).
# Then it runs as the Kubernetes sidecar does: uid 65532, read-only root
# filesystem, policy and secret mounted read-only, the file sink on a tmpfs,
# the metrics server on its port; it must rotate against a simulator on the
# host's loopback, answer /healthz, and exit 0 on SIGTERM within the grace
# period.
#
# Needs root; installs podman and runc from Debian's archive if missing.
# Fails (never skips) when podman cannot run the container.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${MIXPANEL_ROTATOR_BIN:-$PWD/target/release/mixpanel-rotator}"
[ -x "$BIN" ] || cargo build --release --locked --bin mixpanel-rotator
ROOTFS=$(scripts/rootfs.sh)
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  echo "installing podman and runc from Debian's archive" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi

work=$(mktemp -d /var/tmp/mpr-container.XXXXXX)
chmod 0755 "$work"
name="mpr-test-$$"
sim=''
# runc and cgroupfs, without default ulimits: what this sandbox allows
# (crun and the default rlimits are refused here).
printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\n' >"$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
pm() { podman --runtime runc "$@"; }
cleanup() {
  pm rm -f -t 0 "$name" >/dev/null 2>&1 || true
  [ -n "$sim" ] && kill "$sim" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  pm logs "$name" 2>&1 | tail -30 >&2 || true
  exit 1
}
step() { echo "== [${SECONDS}s] $*"; }

step "the local runtime base image (bookworm root filesystem, cached as an image)"
stamp=$(cat "$ROOTFS"/.mixpanel-rotator-rootfs-* 2>/dev/null; ls "$ROOTFS"/.mixpanel-rotator-rootfs-*)
base="localhost/mixpanel-rotator-base:$(printf '%s' "$stamp" | sha256sum | cut -c1-12)"
if ! pm image exists "$base"; then
  tar -C "$ROOTFS" -c . | pm import -q - "$base" >/dev/null
fi

step "the image, from the Dockerfile (runtime stage on the local base, the native binary as its build stage)"
mkdir -p "$work/build/src/target/release"
cp "$BIN" "$work/build/src/target/release/mixpanel-rotator"
pm build -q --build-arg RUNTIME_IMAGE="$base" --build-context build="$work/build" \
  -t localhost/mixpanel-rotator:test . >"$work/image-id" || fail "podman build failed"
user=$(pm image inspect -f '{{.Config.User}}' localhost/mixpanel-rotator:test)
[ "$user" = 65532:65532 ] || fail "the image's user is '$user', not 65532:65532"

step "the simulator on the host's loopback; policy and secret as the sidecar mounts them"
# shellcheck source=scripts/simulator.sh
. scripts/simulator.sh
start_simulator "$BIN" "$work" sim empty || { sim=${SIM_PID:-}; fail "the simulator did not start"; }
sim=$SIM_PID
port=$(free_port)
mkdir -p "$work/secret"
install -m 0400 -o 65532 -g 65532 "$work/sim.secret" "$work/secret/mixpanel"
cat >"$work/policy.toml" <<EOF
version = 1
$(mixpanel_section /etc/mixpanel-rotator/secret/mixpanel)
[defaults]
projects = [{ id = 101, role = "consumer" }]
[sinks.local]
type = "file"
dir = "/run/mixpanel-rotator"
[server]
listen = "127.0.0.1:$port"
[[integrations]]
name = "etl"
sink = "local"
path = "etl.json"
EOF
chmod 0644 "$work/policy.toml"

step "run it: uid 65532, read-only root, read-only policy and secret, the sink on a tmpfs (0777, as an emptyDir)"
pm run -d --name "$name" --network host --read-only \
  --tmpfs /run/mixpanel-rotator:rw,mode=0777 \
  -v "$work/policy.toml:/etc/mixpanel-rotator/policy.toml:ro" \
  -v "$work/secret:/etc/mixpanel-rotator/secret:ro" \
  localhost/mixpanel-rotator:test >/dev/null || fail "podman run failed"
for _ in $(seq 1 120); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
  [ "$(pm inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited ($(pm inspect -f '{{.State.ExitCode}}' "$name"))"
  sleep 0.25
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || fail "/healthz does not answer"
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || fail "/readyz does not answer after 30s"
[ "$(pm inspect -f '{{.Config.User}}' "$name")" = 65532:65532 ] || fail "not run as 65532"
pm exec "$name" test -s /run/mixpanel-rotator/etl.json || fail "etl was not published on the tmpfs"
pm exec "$name" sh -c 'touch /usr/local/bin/x' 2>/dev/null && fail "the root filesystem is writable"
read -r uid mode owner < <(pm exec "$name" sh -c 'echo "$(id -u) $(stat -c "%a %u" /run/mixpanel-rotator/etl.json)"')
[ "$uid" = 65532 ] && [ "$mode" = 600 ] && [ "$owner" = 65532 ] || fail "process uid $uid, etl.json mode $mode owner $owner"
grep -q '^mixpanel_rotator_rotations_total{.*integration="etl".*} 1' <<<"$(curl -fsS "http://127.0.0.1:$port/metrics")" ||
  fail "/metrics does not count the rotation"
echo "running as uid 65532 on a read-only root; etl published 0600 on the tmpfs; /healthz and /readyz answer"

step "the day of a leak: rotate-now exec'd in the container; the daemon beside it follows at once"
expiry() { pm exec "$name" cat /run/mixpanel-rotator/etl.json | python3 -c 'import datetime, json, sys; print(int(datetime.datetime.fromisoformat(json.load(sys.stdin)["expires"].replace("Z", "+00:00")).timestamp()))'; }
first=$(expiry)
sleep 1.1 # expiries are whole seconds: the new one differs
pm exec "$name" mixpanel-rotator rotate-now etl >"$work/rotate-now.out" 2>&1 || fail "rotate-now in the container failed: $(cat "$work/rotate-now.out")"
grep -q 'Told the daemon' "$work/rotate-now.out" || fail "rotate-now did not tell the daemon: $(cat "$work/rotate-now.out")"
second=$(expiry)
[ "$second" -gt "$first" ] || fail "rotate-now published nothing new ($first, $second)"
gauge_is() {
  curl -fsS "http://127.0.0.1:$port/metrics" | python3 -c "
import sys
v = [l.rsplit(' ', 1)[1] for l in sys.stdin.read().splitlines() if l.startswith('mixpanel_rotator_credential_expiry_timestamp_seconds{integration=\"etl\"}')]
sys.exit(0 if v and int(float(v[0])) == $1 else 1)"
}
ok=''
for _ in $(seq 1 20); do gauge_is "$second" && ok=1 && break; sleep 0.25; done
[ -n "$ok" ] || fail "the daemon's expiry gauge did not follow rotate-now within 5 s"
echo "rotate-now in the container: the daemon's gauge at $second within 5 s"

step "SIGTERM: exit 0 within the grace period"
t0=$(date +%s.%N)
pm stop -t 30 "$name" >/dev/null
took=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
code=$(pm inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
python3 -c "import sys; sys.exit(0 if $took < 30 else 1)" || fail "took ${took}s: killed at the end of the grace period"
pm logs "$name" >"$work/logs" 2>&1
secret=$(cat "$work/sim.secret")
grep -qF -- "$secret" "$work/logs" && fail "the rotator's secret is in the container's log"
echo "stopped by SIGTERM in ${took}s, exit code 0; no secret in its log"
echo "container: all checks passed"
