#!/usr/bin/env bash
# Whole-process figures of the release binary against the built-in simulator
# with latency (README, "Performance"). Not a test: it prints numbers.
#
#   scripts/bench.sh                 # N = 1, 100, 1000, 10000; 20 ms per Mixpanel call
#   BENCH_N="1 100" BENCH_LATENCY=20ms scripts/bench.sh
#
# For each N (integrations, explicit projects 101 and 102, file sink,
# `max_concurrency` 3):
#   bootstrap   `reconcile` creating N accounts, with latency (N <= BENCH_BOOTSTRAP_MAX)
#   quiet       `reconcile` with nothing to do, with latency (wall) and without (CPU)
# and one `rotate-now` in copy mode (the demo seed's `etl-legacy`: 2 projects),
# into OpenBao when `bao` is available (else a file sink). Each wall is also
# shown as a ratio to its floor: round trips x latency, or calls / 3 x latency.
# With `bao`, `curl` and `jq`, the same rotation as a shell script (curl + jq
# + `bao kv put`) is timed too, for the CPU ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

NS="${BENCH_N:-1 100 1000 10000}"
LATENCY="${BENCH_LATENCY:-20ms}"
BOOTSTRAP_MAX="${BENCH_BOOTSTRAP_MAX:-1000}"
VENV="${MIXPANEL_ROTATOR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mixpanel-rotator/venv}"
BAO="$(command -v bao || true)"
[ -z "$BAO" ] && [ -x "$VENV/bin/bao" ] && BAO="$VENV/bin/bao"
lat_ms=$(python3 -c "import sys; s=sys.argv[1]; print(float(s[:-2]) if s.endswith('ms') else float(s[:-1])*1000)" "$LATENCY")

cargo build --release --locked --quiet --bin mixpanel-rotator
BIN="$PWD/target/release/mixpanel-rotator"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); latency ${LATENCY} per Mixpanel call"

# sim NAME SEED LATENCY: starts a simulator (scripts/simulator.sh); sets
# SIM_URL, SIM_USER, SIM_SECRET_FILE, SIM_REGIONS.
# shellcheck source=scripts/simulator.sh
. scripts/simulator.sh
sim() {
  start_simulator "$BIN" "$work" "$1" "$2" "$3" || { echo "the simulator did not start"; exit 1; }
  pids+=("$SIM_PID")
}

calls() { curl -fsS "${SIM_URL%/api/app}/_simulator/stats" | jq .requests; }

# policy FILE N SINKDIR: N integrations with explicit projects, a file sink.
policy() {
  local file=$1 n=$2 dir=$3
  {
    printf 'version = 1\n'
    mixpanel_section "$SIM_SECRET_FILE"
    printf '[defaults]\nprojects = [{ id = 101, role = "consumer" }, { id = 102, role = "consumer" }]\n'
    printf '[sinks.local]\ntype = "file"\ndir = "%s"\n' "$dir"
    awk -v n="$n" 'BEGIN { for (i = 1; i <= n; i++) printf "[[integrations]]\nname = \"i%05d\"\nsink = \"local\"\npath = \"i%05d.json\"\n", i, i }'
  } >"$file"
}

# measure CMD...: runs it; sets WALL (s), CPU (s, user + system), RSS (MiB,
# peak), THREADS (peak, sampled every millisecond), RC. Microsecond CPU from
# wait4(2), not /usr/bin/time's hundredths.
measure() {
  read -r WALL CPU RSS THREADS RC < <(python3 - "$work/out" "$work/err" "$@" <<'PY'
import os, subprocess, sys, time
out = open(sys.argv[1], "w")
err = open(sys.argv[2], "w")
start = time.monotonic()
p = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
peak = 0
while True:
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    peak = max(peak, int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.001)
wall = time.monotonic() - start
print(f"{wall:.3f} {ru.ru_utime + ru.ru_stime:.3f} {ru.ru_maxrss / 1024:.1f} {peak} {os.waitstatus_to_exitcode(status)}")
PY
  )
}

# probe_latency: the mean time of one GET /me to the newest simulator, in
# ms, over 50 calls on one kept-alive connection (the floor's real per-call time).
probe_latency() {
  python3 - "$SIM_URL" "$SIM_USER" "$SIM_SECRET_FILE" <<'PY'
import base64, http.client, statistics, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
auth = base64.b64encode(f"{sys.argv[2]}:{open(sys.argv[3]).read().strip()}".encode()).decode()
c = http.client.HTTPConnection(u.hostname, u.port)
ts = []
for _ in range(50):
    t = time.perf_counter()
    c.request("GET", u.path + "/me", headers={"Authorization": "Basic " + auth})
    c.getresponse().read()
    ts.append((time.perf_counter() - t) * 1000)
print(f"{statistics.mean(ts):.2f}")
PY
}

# sim_cpu: the CPU seconds (user + system) the newest simulator has used.
sim_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/${pids[-1]}/stat"; }

# failed: what the last measured command said, when it failed.
failed() { echo "exit status $RC"; tail -5 "$work/err"; grep -v '^$' "$work/out" | grep -v ': rotated (\|: up to date$' | tail -30; }

# median: of lines of numbers on stdin, the median of each column.
median() { python3 -c "import sys; rows=[l.split() for l in sys.stdin if l.strip()]; print(' '.join(sorted((r[i] for r in rows), key=float)[len(rows) // 2] for i in range(len(rows[0]))))"; }

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b > 0 else '-')" "$1" "$2"; }

printf '\n%-7s %-10s %9s %8s %8s %8s %7s %9s %9s\n' N phase wall_s cpu_s rss_MiB threads calls floor_s wall/floor
for n in $NS; do
  dir="$work/creds-$n"
  if [ "$n" -le "$BOOTSTRAP_MAX" ]; then
    sim "lat$n" empty "$LATENCY"
    policy "$work/p$n.toml" "$n" "$dir"
    before=$(calls)
    sim_before=$(sim_cpu)
    measure "$BIN" --config "$work/p$n.toml" --log-level warn reconcile
    [ "$RC" = 0 ] || { echo "bootstrap of $n failed:"; failed; exit 1; }
    used=$(( $(calls) - before ))
    sim_used=$(python3 -c "print(f'{$(sim_cpu) - $sim_before:.2f}')")
    floor=$(python3 -c "print(f'{$used / 3 * $lat_ms / 1000:.3f}')")
    printf '%-7s %-10s %9s %8s %8s %8s %7s %9s %9s\n' "$n" bootstrap "$WALL" "$CPU" "$RSS" "$THREADS" "$used" "$floor" "$(ratio "$WALL" "$floor")"
    echo "        (the simulator used ${sim_used} s of CPU for these ${used} calls, on the same cores)"
    per_call=$(probe_latency)
    real_floor=$(python3 -c "print(f'{$used / 3 * $per_call / 1000:.3f}')")
    echo "        (one call to this simulator takes ${per_call} ms at --latency ${LATENCY}, measured sequentially: its timer and HTTP;"
    echo "         with that per-call time the floor is ${real_floor} s and the wall is $(ratio "$WALL" "$real_floor") of it)"
    before=$(calls)
    measure "$BIN" --config "$work/p$n.toml" --log-level warn reconcile
    used=$(( $(calls) - before ))
    floor=$(python3 -c "print(f'{$lat_ms / 1000:.3f}')")
    printf '%-7s %-10s %9s %8s %8s %8s %7s %9s %9s\n' "$n" quiet "$WALL" "$CPU" "$RSS" "$THREADS" "$used" "$floor" "$(ratio "$WALL" "$floor")"
    kill "${pids[-1]}" 2>/dev/null || true
  fi
  # Without latency: the CPU and memory of a quiet pass over N integrations.
  rm -rf "$dir"
  sim "zero$n" empty 0ms
  policy "$work/z$n.toml" "$n" "$dir"
  measure "$BIN" --config "$work/z$n.toml" --log-level warn reconcile
  [ "$RC" = 0 ] || { echo "bootstrap of $n (no latency) failed:"; failed; exit 1; }
  [ "$n" -le "$BOOTSTRAP_MAX" ] || printf '%-7s %-10s %9s %8s %8s %8s %7s %9s %9s\n' "$n" "bootstr/0" "$WALL" "$CPU" "$RSS" "$THREADS" - - -
  # The steady state, not the tail of the bootstrap: its files written back
  # first, then the median of three passes (each figure on its own).
  sync
  before=$(calls)
  runs=()
  for _ in 1 2 3; do
    measure "$BIN" --config "$work/z$n.toml" --log-level warn reconcile
    runs+=("$WALL $CPU $RSS $THREADS")
  done
  used=$(( ($(calls) - before) / 3 ))
  read -r WALL CPU RSS THREADS < <(printf '%s\n' "${runs[@]}" | median)
  printf '%-7s %-10s %9s %8s %8s %8s %7s %9s %9s\n' "$n" "quiet/0" "$WALL" "$CPU" "$RSS" "$THREADS" "$used" - -
  kill "${pids[-1]}" 2>/dev/null || true
  rm -rf "$dir"
done

# One rotate-now in copy mode (2 projects), into OpenBao when available.
echo
sim one demo "$LATENCY"
legacy=$(grep -o 'adopt = [0-9]*' "$work/one.out" | head -1 | cut -d' ' -f3)
sink='[sinks.local]
type = "file"
dir = "'"$work"'/one-creds"'
isink=local
if [ -n "$BAO" ]; then
  port=$(free_port)
  python3 -c 'import secrets; print(secrets.token_hex(16))' >"$work/bao.token"
  env BAO_DEV_ROOT_TOKEN_ID="$(cat "$work/bao.token")" "$BAO" server -dev -dev-listen-address="127.0.0.1:$port" \
    -dev-no-store-token >"$work/bao.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/v1/sys/health" 2>/dev/null && break; sleep 0.1; done
  sink='[sinks.vault]
type = "vault"
address = "http://127.0.0.1:'"$port"'"
auth = { method = "token", token = { file = "'"$work"'/bao.token" } }'
  isink=vault
fi
cat >"$work/one.toml" <<EOF
version = 1
[mixpanel]
base_url = "$SIM_URL"
organization_id = 1
username = "$SIM_USER"
secret = { file = "$SIM_SECRET_FILE" }
$SIM_REGIONS
$sink
[[integrations]]
name = "etl"
sink = "$isink"
path = "mixpanel/etl"
role = "analyst"
adopt = $legacy
EOF
[ "$isink" = local ] && sed -i 's|path = "mixpanel/etl"|path = "etl.json"|' "$work/one.toml"
"$BIN" --config "$work/one.toml" --log-level warn reconcile >/dev/null 2>&1  # bootstrap, not timed
best_wall=999 best_cpu=999
for _ in 1 2 3 4 5; do
  before=$(calls)
  measure "$BIN" --config "$work/one.toml" --log-level warn rotate-now etl
  [ "$RC" = 0 ] || { echo "rotate-now failed:"; failed; exit 1; }
  used=$(( $(calls) - before ))
  best_wall=$(python3 -c "print(min($best_wall, $WALL))")
  best_cpu=$(python3 -c "print(min($best_cpu, $CPU))")
done
echo "rotate-now (copy mode, sink $isink): wall ${best_wall}s ($(python3 -c "print(f'{$best_wall * 1000 / $lat_ms:.1f}')") x latency), CPU ${best_cpu}s, ${used} Mixpanel calls (best of 5)"

if [ -n "$BAO" ] && command -v jq >/dev/null && command -v curl >/dev/null; then
  cat >"$work/rotate.sh" <<'EOF'
#!/usr/bin/env bash
# The same rotation by hand: create, publish to Vault, verify, delete the old one.
set -euo pipefail
auth="$SIM_USER:$(cat "$SIM_SECRET_FILE")"
new=$(curl -fsS -u "$auth" -H 'Content-Type: application/json' -X POST "$SIM_URL/organizations/1/service-accounts" \
  -d "{\"username\":\"shell-$RANDOM$RANDOM\",\"role\":\"analyst\",\"projects\":[{\"id\":101,\"role\":\"analyst\"},{\"id\":102,\"role\":\"admin\"}]}")
user=$(jq -r .results.username <<<"$new")
token=$(jq -r .results.token <<<"$new")
id=$(jq -r .results.id <<<"$new")
curl -fsS -u "$user:$token" "$SIM_URL/me" >/dev/null
BAO_ADDR="$BAO_ADDR" BAO_TOKEN="$(cat "$BAO_TOKEN_FILE")" "$BAO" kv put -mount=secret shell/etl username="$user" secret="$token" service_account_id="$id" >/dev/null
old=$(cat "$STATE" 2>/dev/null || true)
[ -n "$old" ] && curl -fsS -u "$auth" -X DELETE "$SIM_URL/organizations/1/service-accounts/$old" >/dev/null
echo "$id" >"$STATE"
EOF
  chmod +x "$work/rotate.sh"
  shell_best=999
  for _ in 1 2 3; do
    SIM_URL="$SIM_URL" SIM_USER="$SIM_USER" SIM_SECRET_FILE="$SIM_SECRET_FILE" BAO="$BAO" \
      BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN_FILE="$work/bao.token" STATE="$work/shell.state" \
      /usr/bin/time -f "%e %U %S" -o "$work/stime" "$work/rotate.sh"
    read -r w u s <"$work/stime"
    shell_best=$(python3 -c "print(min($shell_best, $u + $s))")
  done
  echo "the same rotation as a shell script (curl + jq + bao kv put): CPU ${shell_best}s = $(ratio "$shell_best" "$best_cpu") the rotator's"
fi
