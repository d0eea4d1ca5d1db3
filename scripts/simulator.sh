# Sourced by scripts/bench.sh, systemd-test.sh and container-test.sh: starts
# the built-in simulator on a free loopback port.
#
#   start_simulator BIN DIR NAME SEED [LATENCY]
#
# writes DIR/NAME.secret (the admin secret, 0600) and DIR/NAME.out, and sets
# SIM_PID, SIM_URL, SIM_USER, SIM_REGIONS (the `region_urls` line for a
# policy) and SIM_SECRET_FILE. Returns 1 if it does not start.
start_simulator() {
  local bin=$1 dir=$2 name=$3 seed=$4 latency=${5:-0ms}
  "$bin" simulator --listen 127.0.0.1:0 --seed "$seed" --latency "$latency" \
    --admin-secret-file "$dir/$name.secret" >"$dir/$name.out" 2>&1 &
  SIM_PID=$!
  for _ in $(seq 1 100); do grep -q '^listening on ' "$dir/$name.out" 2>/dev/null && break; sleep 0.05; done
  SIM_URL=$(sed -n 's/^listening on //p' "$dir/$name.out")
  SIM_USER=$(sed -n 's/^username = "\(.*\)"$/\1/p' "$dir/$name.out")
  SIM_REGIONS=$(grep '^region_urls' "$dir/$name.out" || true)
  SIM_SECRET_FILE="$dir/$name.secret"
  [ -n "$SIM_URL" ]
}

# mixpanel_section SECRET_FILE: the policy's [mixpanel] section for the newest
# simulator, its secret read from SECRET_FILE (where the rotator will see it).
mixpanel_section() {
  printf '[mixpanel]\nbase_url = "%s"\norganization_id = 1\nusername = "%s"\nsecret = { file = "%s" }\n%s\n' \
    "$SIM_URL" "$SIM_USER" "$1" "$SIM_REGIONS"
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
