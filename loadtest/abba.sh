#!/usr/bin/env bash
# Alternating A/B of scoregate's CPU per request, for differences smaller than the drift of a
# shared host within a round: N pairs, A then B in odd pairs and B then A in even ones (ABBA), so
# a drift favours neither side. Each measurement starts the row's scoregate, sends 1 s of warm-up
# and DUR seconds of load with oha (CONC connections, HTTP/1.1 over TLS, POST with the key), and
# takes the process's utime+stime from /proc over the measured window; the row is stopped (by its
# PID) before the next starts. Prints one line per pair with both costs and the ratio B/A.
#
#   loadtest/abba.sh N NAME_A BIN_A CONF_A NAME_B BIN_B CONF_B
#
# CONF_* are scoregate configs that listen on PORT (default: read from CONF_A) and forward to an
# upstream that is already running, e.g. the ones `loadtest/fleet_cost.sh` leaves in $RUN/conf
# (start its etcd and `scoregate sample-model --listen <its upstream>` again on the same ports).
# KEY is the key the load sends (fleet_cost.sh's KEY1 by default). Loopback only.
set -euo pipefail
[ $# -eq 7 ] || { sed -n '2,15p' "$0"; exit 2; }
N=$1; NAME_A=$2; BIN_A=$3; CONF_A=$4; NAME_B=$5; BIN_B=$6; CONF_B=$7
: "${DUR:=4}" "${CONC:=50}" "${KEY:=sk_primary_loadtest_7Q2mX9vL4pR8tK1wZ6nB}"
: "${PORT:=$(sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"/\1/p' "$CONF_A")}"
URL="https://127.0.0.1:$PORT/api/v1/service/iris/score"
TICK=$(getconf CLK_TCK)
PID=""
trap '[ -z "$PID" ] || { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }' EXIT

load() {
  oha -z "$1" -c "$CONC" --no-tui --insecure -m POST -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d '{"data":[[1,2,3,4]]}' --output-format json "$URL" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); c=d["statusCodeDistribution"]; print(c.get("200",0), sum(c.values()))'
}

# CPU microseconds per request of one row: bin conf.
measure() {
  "$1" run --config "$2" > /dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sk -o /dev/null "https://127.0.0.1:$PORT/" && break; sleep 0.05; done
  load 1s > /dev/null
  local a b ok total
  a=$(awk '{print $14+$15}' "/proc/$PID/stat")
  read -r ok total < <(load "${DUR}s")
  b=$(awk '{print $14+$15}' "/proc/$PID/stat")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  [ "$ok" = "$total" ] && [ "$ok" -gt 0 ] || { echo "abba.sh: $ok of $total answered 200" >&2; exit 1; }
  python3 -c "print(round(($b - $a) * 1e6 / $TICK / $ok, 1))"
}

for ((i = 1; i <= N; i++)); do
  if (( i % 2 )); then a=$(measure "$BIN_A" "$CONF_A"); b=$(measure "$BIN_B" "$CONF_B")
  else b=$(measure "$BIN_B" "$CONF_B"); a=$(measure "$BIN_A" "$CONF_A"); fi
  echo "$i $NAME_A=$a $NAME_B=$b ratio=$(python3 -c "print(round($b / $a, 3))")"
done
