#!/usr/bin/env bash
# Issue 14 item 4: key-mode CPU per request with the etcd backend ([cluster] backend = "etcd")
# against the local backend, interleaved round by round by loadtest/run.sh. etcd is never on the
# scoring path, so the two should cost the same.
#
#   BUILD=0 REPS=5 loadtest/fleet_cost.sh      # then read $RUN/results/summary.md
#
# Rows: scoregate-key-local and scoregate-key-etcd. Both keep their keys where scoregate stores
# them (no keys_file): before the rounds, this script starts each configuration once, sets both
# keys to run.sh's KEY1 / KEY2 with regenerateKeys {"keyValue"} on the admin listener, and stops
# it; the etcd row's keys live (sealed) in the namespace. The etcd server is one member on
# loopback ports with its data in $RUN/etcd, started here and stopped by its PID when the run
# ends. Records on (stdout) in both rows. Extra knobs go to run.sh as they are.
#
# EXTRA_ROWS adds rows to the same interleaved rounds, in run.sh's config-line format (e.g. other
# binaries of the local row for a before/after comparison:
#   EXTRA_ROWS='scoregate-key-before h1 key /api/v1/service/iris/score env SCOREGATE=/tmp/sg-before $HERE/peers/scoregate.sh key -'
# ).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export RUN="${RUN:-$(mktemp -d /tmp/scoregate-fleet-cost.XXXXXX)}"
: "${SCOREGATE:=${CARGO_TARGET_DIR:-$ROOT/target}/release/scoregate}"
: "${BUILD:=1}"
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --locked --bin scoregate); fi
export BUILD=0 SCOREGATE
command -v etcd >/dev/null || { echo "fleet_cost.sh: etcd not found (apt-get install -y etcd-server)" >&2; exit 1; }
mkdir -p "$RUN"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EC=$(free_port); EP=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
etcd --name lt --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$EC" --advertise-client-urls "http://127.0.0.1:$EC" \
  --listen-peer-urls "http://127.0.0.1:$EP" --initial-advertise-peer-urls "http://127.0.0.1:$EP" \
  --initial-cluster "lt=http://127.0.0.1:$EP" > "$RUN/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$EC/health" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$EC/health" >/dev/null || { echo "fleet_cost.sh: etcd did not start" >&2; tail "$RUN/etcd.log" >&2; exit 1; }
"$SCOREGATE" cluster seal-key > "$RUN/seal.key"
chmod 600 "$RUN/seal.key"
CLUSTER="[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:$EC\"]\nnamespace = \"loadtest\"\ninstance = \"lt\"\nseal_key_file = \"$RUN/seal.key\""
KEY1=${KEY1:-sk_primary_loadtest_7Q2mX9vL4pR8tK1wZ6nB}
KEY2=${KEY2:-sk_secondary_loadtest_H4jD8sA2gL6yU1oE9i}
export KEY1 KEY2

# Sets both keys of service iris in the store of row $1 (state_dir $RUN/state-$1).
seed() {
  local name=$1 cluster=$2 admin port conf pid token
  port=$(free_port); admin=$(free_port)
  conf=$(PEER_NAME=$name PORT=$port ADMIN_PORT=$admin UP=127.0.0.1:9 CERT=/dev/null CERTKEY=/dev/null \
    ROUTE=/api/v1/service/iris RECORDS=/dev/null SG_KEYS=stored SG_CLUSTER=$cluster SG_CONFIG_ONLY=1 \
    "$HERE/peers/scoregate.sh" key -)
  # No TLS while seeding: the scoring listener is not used.
  python3 - "$conf" <<'PY'
import re, sys
p = sys.argv[1]
text = open(p).read()
text = re.sub(r'\[server\.tls\]\ncert = .*\nkey = .*\n', '', text)
open(p, "w").write(text)
PY
  "$SCOREGATE" run --config "$conf" > "$RUN/seed-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && [ -s "$RUN/state-$name/admin.token" ] && break
    sleep 0.05
  done
  token=$(cat "$RUN/state-$name/admin.token")
  for slot in Primary:$KEY1 Secondary:$KEY2; do
    curl -sf -o /dev/null -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d "{\"keyType\": \"${slot%%:*}\", \"keyValue\": \"${slot#*:}\"}" \
      "http://127.0.0.1:$admin/services/iris/regenerateKeys" \
      || { echo "fleet_cost.sh: seeding $name failed" >&2; cat "$RUN/seed-$name.log" >&2; kill "$pid"; exit 1; }
  done
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$RUN/conf/$name.toml"
}
seed scoregate-key-local ""
seed scoregate-key-etcd "$CLUSTER"

row() { printf '%s h1 key /api/v1/service/iris/score %s $HERE/peers/scoregate.sh key -\n' "$1" "$2"; }
: "${EXTRA_ROWS:=}"
names='scoregate-key-local|scoregate-key-etcd'
while read -r name _; do [ -n "$name" ] && names="$names|$name"; done <<< "$EXTRA_ROWS"
EXTRA_CONFIGS="$(row scoregate-key-local "env SG_KEYS=stored")
$(row scoregate-key-etcd "env SG_KEYS=stored SG_CLUSTER='$CLUSTER'")
$EXTRA_ROWS" \
ONLY="^($names)\$" "$HERE/run.sh"
