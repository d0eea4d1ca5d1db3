#!/usr/bin/env bash
# The deterministic simulation (tests/integration/soak/): for each seed, a
# seeded world of rotator instances, the Mixpanel simulator with random
# faults, failing stores, consumers and clock steps runs for D simulated
# days on a manual clock, with every invariant checked after every step.
#
#   scripts/soak.sh [--seed S | --seeds A..B] [--days D] [--instances N] [--trace]
#
# --seeds A..B runs A to B, both included (default 1..20, 30 days, 3
# instances: what CI runs). --trace prints every event of the world.
# A line per seed (its event count and trace hash: the same seed always
# gives the same), then, for each seed that broke an invariant, the
# invariant, the step, the last 40 events and the command that replays it.
# The last line is `soak: <seeds> seeds, <days> days, <events> events,
# <violations> violations`; the exit status is 1 on any violation.
set -euo pipefail
cd "$(dirname "$0")/.."

first=1 last=20 days=30 instances=3 trace=0
usage() {
  echo "usage: scripts/soak.sh [--seed S | --seeds A..B] [--days D] [--instances N] [--trace]" >&2
  exit 2
}
number() { [[ "$1" =~ ^[0-9]+$ ]] || usage; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) [ $# -ge 2 ] || usage; number "$2"; first=$2 last=$2; shift 2 ;;
    --seeds)
      [ $# -ge 2 ] || usage
      first=${2%..*} last=${2#*..}
      number "$first"; number "$last"
      [ "$first" -le "$last" ] || usage
      shift 2 ;;
    --days) [ $# -ge 2 ] || usage; number "$2"; days=$2; shift 2 ;;
    --instances) [ $# -ge 2 ] || usage; number "$2"; instances=$2; shift 2 ;;
    --trace) trace=1; shift ;;
    *) usage ;;
  esac
done
[ "$days" -ge 1 ] && [ "$instances" -ge 1 ] || usage

export MPR_SOAK_SEEDS="${first}..$((last + 1))" MPR_SOAK_DAYS="$days" MPR_SOAK_INSTANCES="$instances"
export MPR_SOAK_TRACE="$trace"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# Built first, so that the time below is the simulation's alone.
cargo test --locked --quiet --test integration --no-run
status=0
start=$(date +%s)
cargo test --locked --quiet --test integration -- soak::search --exact --nocapture >"$out" 2>&1 || status=$?
summary=$(grep '^soak: ' "$out" | tail -n 1 || true)
if [ -z "$summary" ]; then
  # It did not get as far as running the seeds (a build error): all of it.
  cat "$out"
  echo "soak: did not run" >&2
  exit 1
fi
grep -v '^soak: ' "$out" | grep -E '^(seed |  |last events:|replay:)' || true
echo "ran in $(($(date +%s) - start)) s"
echo "$summary"
[ "$status" -eq 0 ] || exit 1
