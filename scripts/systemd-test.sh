#!/usr/bin/env bash
# The systemd units under a real, booted systemd (CI runs it; README, "Run it
# as a service"). Boots Debian bookworm (systemd 252) in systemd-nspawn from a
# cached root filesystem (scripts/rootfs.sh), runs each unit header's
# `Install:` lines verbatim from a copy of the repository, with a simulator
# on the host's loopback as Mixpanel, and checks what the README promises:
# the service runs and publishes with the documented mode and group (a
# member of the group reads it, another user cannot), reload applies a
# policy and refuses a broken one, the README's rotate-now line and a
# consumer's path unit work, the watchdog restarts a hung process, stop is
# clean, the reconcile unit and its timer work, the sandboxing scores <= 2.0,
# no secret reaches the journal, and the README's uninstall blocks leave
# nothing behind.
#
# Needs root. Fails (never skips) when the container cannot boot.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${MIXPANEL_ROTATOR_BIN:-$PWD/target/release/mixpanel-rotator}"
[ -x "$BIN" ] || cargo build --release --locked --bin mixpanel-rotator
ROOTFS=$(scripts/rootfs.sh)

work=$(mktemp -d /var/tmp/mpr-systemd.XXXXXX)
nspawn='' sim=''
cleanup() {
  [ -n "$nspawn" ] && kill "$nspawn" 2>/dev/null && sleep 1
  [ -n "$sim" ] && kill "$sim" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  if [ -n "${pid1:-}" ]; then
    echo "--- journal of the units" >&2
    inside journalctl --no-pager -n 60 -u mixpanel-rotator.service -u mixpanel-rotator-reconcile.service >&2 || true
  fi
  exit 1
}
step() { echo "== [${SECONDS}s] $*"; }

# The simulator, on the host's loopback (the container shares the network).
# shellcheck source=scripts/simulator.sh
. scripts/simulator.sh
start_simulator "$BIN" "$work" sim empty || { sim=${SIM_PID:-}; fail "the simulator did not start: $(cat "$work/sim.out")"; }
sim=$SIM_PID
port=$(free_port)

step "a fresh copy of the root filesystem, with the repository staged in /root/stage"
cp -a "$ROOTFS" "$work/root"
stage="$work/root/root/stage"
mkdir -p "$stage/target/release"
git ls-files -z | xargs -0 cp --parents -t "$stage"
cp "$BIN" "$stage/target/release/mixpanel-rotator"
cp "$work/sim.secret" "$stage/rotator.secret"
policy() {
  cat <<EOF
version = 1
$(mixpanel_section /etc/mixpanel-rotator/mixpanel.secret)
[defaults]
projects = [{ id = 101, role = "consumer" }]
[sinks.local]
type = "file"
dir = "/run/mixpanel-rotator"
mode = "0640"
[sinks.state]
type = "file"
dir = "/var/lib/mixpanel-rotator"
[mixpanel.self]
sink = "state"
path = "rotator.json"
[server]
listen = "127.0.0.1:$port"
[daemon]
spread = "0s"   # one rotator: its first pass need not wait for a share of the spread
[[integrations]]
name = "etl"
sink = "local"
path = "etl.json"
EOF
}
policy >"$stage/policy.toml"

step "boot systemd in systemd-nspawn"
setsid systemd-nspawn --register=no --keep-unit -q -D "$work/root" -b </dev/null >"$work/console.log" 2>&1 &
nspawn=$!
# The container's PID 1 is the child of systemd-nspawn named `systemd` (an
# intermediate child of nspawn's own exists for a moment at start: not it).
pid1=''
for _ in $(seq 1 200); do
  pid1=$(pgrep -P "$nspawn" -x systemd | head -1 || true)
  [ -n "$pid1" ] && break
  sleep 0.1
done
[ -n "$pid1" ] || fail "systemd-nspawn started no container: $(tail -20 "$work/console.log")"
inside() { nsenter -t "$pid1" -a "$@"; }
state=''
for _ in $(seq 1 120); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded) break ;; esac
  sleep 0.5
done
case "$state" in running | degraded) ;; *) fail "systemd did not boot (state: ${state:-none}): $(tail -20 "$work/console.log")" ;; esac
echo "systemd $(inside systemctl --version | head -1 | cut -d' ' -f2) is $state"

# install_lines UNIT: the `#   ` lines after `# Install`, verbatim.
install_lines() { awk '/^# Install:$/ {on = 1; next} on && /^#   / {sub(/^#   /, ""); print; next} on {exit}' "$1"; }
run_install() {
  local lines
  lines=$(install_lines "$1")
  [ -n "$lines" ] || fail "no Install: lines in $1"
  while IFS= read -r line; do
    echo "# $line"
    inside sh -c "cd /root/stage && $line" || fail "install line of $1 failed: $line"
  done <<<"$lines"
}
prop() { inside systemctl show -P "$2" "$1"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2
  shift 2
  for _ in $(seq 1 $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  fail "after ${t}s: $what"
}

step "mixpanel-rotator.service: its Install: lines, verbatim"
run_install systemd/mixpanel-rotator.service
wait_for 30 "etl published in /run/mixpanel-rotator" inside test -s /run/mixpanel-rotator/etl.json
wait_for 30 "the rotator's own credential in /var/lib/mixpanel-rotator" inside test -s /var/lib/mixpanel-rotator/rotator.json
own=$(inside stat -c '%a %U' /var/lib/mixpanel-rotator/rotator.json /var/lib/mixpanel-rotator | tr '\n' ' ')
[ "$own" = "600 mixpanel-rotator 700 mixpanel-rotator " ] || fail "the own credential and its directory are '$own', not 600/700 mixpanel-rotator"
grep -q '"username": "mpr-rotator-' "$work/root/var/lib/mixpanel-rotator/rotator.json" || fail "the own credential is not of the rotator's lineage"
echo "the rotator's own credential: rotated, in /var/lib/mixpanel-rotator (0600 in 0700)"
[ "$(inside systemctl is-active mixpanel-rotator.service)" = active ] || fail "not active"
[ "$(prop mixpanel-rotator.service SubState)" = running ] || fail "not running"
status_text=$(prop mixpanel-rotator.service StatusText)
[ -n "$status_text" ] || fail "StatusText= is empty"
echo "StatusText: $status_text"
perm=$(inside stat -c '%a %G' /run/mixpanel-rotator/etl.json)
[ "$perm" = "640 mixpanel-creds" ] || fail "etl.json is '$perm', the README says 640 and group mixpanel-creds"
inside curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || fail "/readyz does not answer 200 on loopback"
inside grep -q '^\.TH mixpanel-rotator 1' /usr/local/share/man/man1/mixpanel-rotator.1 || fail "the man page the units name is not installed"
inside grep -q '^\.TH mixpanel-rotator-rotate-now 1' /usr/local/share/man/man1/mixpanel-rotator-rotate-now.1 || fail "no manual page per command"
inside useradd --system --no-create-home --groups mixpanel-creds etl-app
inside useradd --system --no-create-home other-app
inside runuser -u etl-app -- cat /run/mixpanel-rotator/etl.json >/dev/null || fail "a member of mixpanel-creds cannot read etl.json"
if inside runuser -u other-app -- cat /run/mixpanel-rotator/etl.json >/dev/null 2>&1; then fail "a user outside mixpanel-creds can read etl.json"; fi
echo "published 0640 group mixpanel-creds (a member reads it, another user cannot); /readyz answers; man pages installed"

step "reload: a new integration is applied, a broken policy is refused and the service stays up"
main_pid=$(prop mixpanel-rotator.service MainPID)
{ policy; printf '[[integrations]]\nname = "etl2"\nsink = "local"\npath = "etl2.json"\n'; } >"$work/root/etc/mixpanel-rotator/policy.toml"
inside systemctl reload mixpanel-rotator.service || fail "reload of a valid policy failed"
wait_for 30 "etl2 published after reload" inside test -s /run/mixpanel-rotator/etl2.json
cp "$work/root/etc/mixpanel-rotator/policy.toml" "$work/good.toml"
echo 'this is not a policy' >>"$work/root/etc/mixpanel-rotator/policy.toml"
if inside systemctl reload mixpanel-rotator.service 2>"$work/reload.err"; then
  fail "reload of a broken policy succeeded"
fi
[ "$(inside systemctl is-active mixpanel-rotator.service)" = active ] || fail "a broken policy stopped the service"
[ "$(prop mixpanel-rotator.service MainPID)" = "$main_pid" ] || fail "a reload restarted the process"
# (Whole outputs into grep, never `cmd | grep -q`: with pipefail, grep
# quitting at the first match makes the writer's SIGPIPE fail the check.)
grep -q 'not valid TOML' <<<"$(inside journalctl --no-pager -o cat -u mixpanel-rotator.service)" ||
  fail "the journal does not say why the reload failed"
cp "$work/good.toml" "$work/root/etc/mixpanel-rotator/policy.toml"
echo "reload applied etl2; the broken policy was refused (reload failed, same PID $main_pid)"

step "a consumer's path unit, the README's two units verbatim: armed before rotate-now below"
# A stand-in consumer: its reloads are counted in /run/etl-reloads.
printf '[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sh -c "echo reloaded >>/run/etl-reloads"\n' \
  >"$work/root/etc/systemd/system/etl.service"
python3 - README.md "$work/root" <<'PY' || fail "the README's path units could not be installed"
import re, sys
readme, root = open(sys.argv[1]).read(), sys.argv[2]
units = re.findall(r"```ini\n# (/etc/systemd/system/etl-mixpanel-credential\.(?:path|service))\n(.*?)```", readme, re.S)
assert sorted(u for u, _ in units) == ["/etc/systemd/system/etl-mixpanel-credential.path",
                                       "/etc/systemd/system/etl-mixpanel-credential.service"], units
for path, text in units:
    open(root + path, "w").write(text)
print("installed", ", ".join(u for u, _ in units))
PY
inside systemctl daemon-reload
inside systemctl start etl.service
inside systemctl enable --now etl-mixpanel-credential.path || fail "the path unit does not start"
reloads() { inside sh -c 'cat /run/etl-reloads 2>/dev/null | wc -l'; }
[ "$(reloads)" = 0 ] || fail "etl was reloaded before any change"

step "rotate-now on this host: the README's line, verbatim; same group, the daemon follows at once"
recipe=$(awk '/^- \*\*`rotate-now` on this host\*\*/ {on = 1; next} on && /^  ```sh$/ {inb = 1; next} inb && /^  ```$/ {exit} inb {sub(/^  /, ""); print}' README.md)
[ -n "$recipe" ] || fail "no rotate-now line for systemd hosts in README.md"
payload() { inside cat /run/mixpanel-rotator/etl.json | python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
before=$(payload rotation_id)
sleep 1.1 # expiries are whole seconds: the new one differs
inside sh -c "$recipe" >"$work/rotate-now.out" 2>&1 || fail "the README's rotate-now line failed: $(cat "$work/rotate-now.out")"
[ "$(payload rotation_id)" != "$before" ] || fail "rotate-now published nothing new"
perm=$(inside stat -c '%a %G' /run/mixpanel-rotator/etl.json)
[ "$perm" = "640 mixpanel-creds" ] || fail "after rotate-now etl.json is '$perm', not 640 mixpanel-creds"
grep -q 'Told the daemon' "$work/rotate-now.out" || fail "rotate-now did not tell the daemon: $(cat "$work/rotate-now.out")"
expiry=$(payload expires | python3 -c 'import datetime, sys; print(int(datetime.datetime.fromisoformat(sys.stdin.read().strip().replace("Z", "+00:00")).timestamp()))')
gauge_is() {
  nsenter -t "$pid1" -a curl -fsS "http://127.0.0.1:$port/metrics" | python3 -c "
import sys
v = [l.rsplit(' ', 1)[1] for l in sys.stdin.read().splitlines() if l.startswith('mixpanel_rotator_credential_expiry_timestamp_seconds{integration=\"etl\"}')]
sys.exit(0 if v and int(float(v[0])) == $1 else 1)"
}
wait_for 5 "the daemon's expiry gauge shows the credential rotate-now published" gauge_is "$expiry"
echo "rotate-now as the service's user: 640 mixpanel-creds, the daemon's gauge at $expiry within 5 s"
wait_for 10 "the path unit reloaded etl after rotate-now" sh -c "[ \"\$(nsenter -t $pid1 -a sh -c 'cat /run/etl-reloads 2>/dev/null | wc -l')\" -ge 1 ]"
sleep 2 # anything more would come now: the daemon's pass after the resync request has run
[ "$(reloads)" = 1 ] || fail "etl was reloaded $(reloads) times for one rotation, not once"
echo "the path unit reloaded etl exactly once for the rotation"
# The same as root (sudo on the day of a leak): the file stays the service's.
before=$(payload rotation_id)
inside mixpanel-rotator --config /etc/mixpanel-rotator/policy.toml rotate-now etl >"$work/rotate-root.out" 2>&1 ||
  fail "rotate-now as root failed: $(cat "$work/rotate-root.out")"
[ "$(payload rotation_id)" != "$before" ] || fail "rotate-now as root published nothing new"
owner=$(inside stat -c '%U %G %a' /run/mixpanel-rotator/etl.json /run/mixpanel-rotator/etl.json.lock | sort -u | tr '\n' ' ')
[ "$owner" = "mixpanel-rotator mixpanel-creds 600 mixpanel-rotator mixpanel-creds 640 " ] ||
  fail "after rotate-now as root: etl.json and its lock are '$owner'"
inside runuser -u etl-app -- cat /run/mixpanel-rotator/etl.json >/dev/null || fail "the consumer cannot read etl.json after rotate-now as root"
echo "rotate-now as root: etl.json stays mixpanel-rotator:mixpanel-creds 0640, the consumer reads it"

step "journald: priorities, no second timestamp"
inside journalctl --no-pager -o json -u mixpanel-rotator.service -t mixpanel-rotator >"$work/journal.json"
python3 - "$work/journal.json" <<'PY' || fail "journal lines are not journald-shaped"
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
msgs = [(r.get("PRIORITY"), r.get("MESSAGE")) for r in rows if isinstance(r.get("MESSAGE"), str)]
assert msgs, "no line from the service"
stamped = [m for _, m in msgs if re.match(r"\s*\d{4}-\d\d-\d\dT", m)]
assert not stamped, f"own timestamps: {stamped[:3]}"
prios = {p for p, _ in msgs}
assert "6" in prios, f"no info line (priorities {prios})"
assert not any(m.startswith("<") for _, m in msgs), "a <N> prefix reached the message"
print(f"{len(msgs)} lines, priorities {sorted(prios)}, none with its own timestamp")
PY

step "watchdog: a stopped process is restarted"
inside mkdir -p /etc/systemd/system/mixpanel-rotator.service.d
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\nRestartSec=1s\n' >"$work/root/etc/systemd/system/mixpanel-rotator.service.d/watchdog.conf"
inside systemctl daemon-reload
inside systemctl restart mixpanel-rotator.service || fail "restart with WatchdogSec=3s failed"
restarts=$(prop mixpanel-rotator.service NRestarts)
sleep 8 # more than twice WatchdogSec: the pings keep it alive
[ "$(prop mixpanel-rotator.service NRestarts)" = "$restarts" ] || fail "restarted although it was not hung (watchdog pings missing)"
hung=$(prop mixpanel-rotator.service MainPID)
inside kill -STOP "$hung"
wait_for 30 "the watchdog restarted the hung process" sh -c \
  "[ \"\$(nsenter -t $pid1 -a systemctl show -P NRestarts mixpanel-rotator.service)\" -gt $restarts ] && nsenter -t $pid1 -a systemctl is-active -q mixpanel-rotator.service"
grep -qi 'watchdog timeout' <<<"$(inside journalctl --no-pager -o cat -u mixpanel-rotator.service)" ||
  fail "no watchdog timeout in the journal"
echo "PID $hung stopped: watchdog timeout, restarted as $(prop mixpanel-rotator.service MainPID)"
rm "$work/root/etc/systemd/system/mixpanel-rotator.service.d/watchdog.conf"
inside systemctl daemon-reload
inside systemctl restart mixpanel-rotator.service

step "stop: clean, within TimeoutStopSec"
wait_for 30 "ready again" inside curl -fsS "http://127.0.0.1:$port/readyz"
t0=$(date +%s.%N)
inside systemctl stop mixpanel-rotator.service
took=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
[ "$(prop mixpanel-rotator.service Result)" = success ] || fail "stop: Result=$(prop mixpanel-rotator.service Result)"
python3 -c "import sys; sys.exit(0 if $took < 45 else 1)" || fail "stop took ${took}s (TimeoutStopSec=45s)"
echo "stopped in ${took}s, Result=success"

step "mixpanel-rotator-reconcile: its Install: lines, verbatim; one pass; the timer"
run_install systemd/mixpanel-rotator-reconcile.service
inside systemctl start mixpanel-rotator-reconcile.service || fail "the reconcile pass failed"
[ "$(prop mixpanel-rotator-reconcile.service Result)" = success ] || fail "reconcile: Result=$(prop mixpanel-rotator-reconcile.service Result)"
[ "$(prop mixpanel-rotator-reconcile.service ExecMainStatus)" = 0 ] || fail "reconcile exited $(prop mixpanel-rotator-reconcile.service ExecMainStatus)"
grep -q 'mixpanel-rotator-reconcile.timer' <<<"$(inside systemctl list-timers --all --no-pager)" ||
  fail "the timer is not listed"
echo "one pass: Result=success; $(inside systemctl list-timers --all --no-pager | grep mixpanel-rotator-reconcile.timer | tr -s ' ')"

step "systemd-analyze security, on the installed units"
for u in mixpanel-rotator.service mixpanel-rotator-reconcile.service; do
  score=$(inside systemd-analyze security --no-pager "$u" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  [ -n "$score" ] || fail "no exposure level for $u"
  python3 -c "import sys; sys.exit(0 if $score <= 2.0 else 1)" || fail "$u: exposure $score > 2.0"
  echo "$u: exposure $score"
done

step "no secret in the journal"
inside journalctl --no-pager -o cat >"$work/journal.txt"
secrets=("$(cat "$work/sim.secret")")
for f in etl etl2; do
  # The container's /run is its own tmpfs: read the payload from inside.
  secrets+=("$(inside cat "/run/mixpanel-rotator/$f.json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')")
done
for s in "${secrets[@]}"; do
  [ "${#s}" -ge 8 ] || fail "a secret to look for is too short to be one"
  if grep -qF -- "$s" "$work/journal.txt"; then fail "a secret is in the journal"; fi
done
echo "${#secrets[@]} secrets looked for in $(wc -l <"$work/journal.txt") journal lines: none found"
step "uninstall: the README's two blocks, verbatim (retire each integration, then remove everything)"
blocks=$(python3 - README.md <<'PY'
import json, re, sys
readme = open(sys.argv[1]).read()
part = readme[readme.index("**Uninstall**, as root."):]
blocks = re.findall(r"```sh\n(.*?)```", part, re.S)[:2]
print(json.dumps(blocks))
PY
)
retire=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])[0])' "$blocks")
remove=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])[1])' "$blocks")
grep -q 'retire etl --yes' <<<"$retire" || fail "the README's uninstall does not retire first: $retire"
# Its retire line names etl; the policy with etl2 as well is put back.
cp "$work/good.toml" "$work/root/etc/mixpanel-rotator/policy.toml"
inside sh -c "$retire
$(grep 'retire etl --yes' <<<"$retire" | sed 's/retire etl --yes/retire etl2 --yes/')" >"$work/retire.out" 2>&1 ||
  fail "the README's retire lines failed: $(cat "$work/retire.out")"
[ "$(grep -c '^retired: now remove' "$work/retire.out")" = 2 ] || fail "retire did not finish: $(cat "$work/retire.out")"
inside sh -c "$remove" >"$work/remove.out" 2>&1 || fail "the README's uninstall lines failed: $(cat "$work/remove.out")"
left=$(inside systemctl list-unit-files --no-legend 'mixpanel-rotator*' || true)
[ -z "$left" ] || fail "units left after uninstall: $left"
for what in "passwd mixpanel-rotator" "group mixpanel-rotator-config" "group mixpanel-creds"; do
  # shellcheck disable=SC2086 # two words on purpose
  if inside getent $what >/dev/null; then fail "left after uninstall: $what"; fi
done
for f in /etc/mixpanel-rotator /usr/local/bin/mixpanel-rotator /usr/local/share/man/man1/mixpanel-rotator.1 \
  /usr/local/share/man/man1/mixpanel-rotator-run.1 /usr/local/share/doc/mixpanel-rotator \
  /run/mixpanel-rotator/etl.json /run/mixpanel-rotator/etl2.json /var/lib/mixpanel-rotator; do
  if inside test -e "$f"; then fail "left after uninstall: $f"; fi
done
echo "retired etl and etl2; no unit, user, group, file or payload left"
echo "systemd: all checks passed"
