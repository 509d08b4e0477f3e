#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable for the same
# binary and load whatever else the machine is doing, so it resolves changes of 1-2 % that the
# CPU-time rows of run.sh cannot on a shared 2-core VM. A count, not a time: memory stalls,
# syscalls and the kernel are not in it, so a change that moves work there needs run.sh too.
#
#   loadtest/instructions.sh BIN [BIN...]          # key mode over HTTP/2, 10 x 5 streams
#   PROTO=h1 N=8000 loadtest/instructions.sh /tmp/sg-old target/release/scoregate
#
# For each binary in turn: scoregate under callgrind (TLS, key mode, a record per request, one
# worker: the work of run.sh's scoregate-key rows) in front of the sample model (the first
# binary's, for every run), a warm-up of WARM requests, then the counters are zeroed, N requests
# sent with oha, and the counters dumped.
# Prints one line per binary: instructions in all threads during the N requests, divided by N
# (oha's 10 new TLS handshakes included, so compare binaries at the same N).
# valgrind's CPU has no SHA extensions, so the key check's SHA-256 runs sha2's portable code
# here (about 6,600 instructions a request) where the real CPU uses SHA-NI.
# Knobs: PROTO (h1 | h2), N (4000), WARM (500), RUN (a new temporary directory), OHA.
# Listens on 127.0.0.1 only; stops only the processes it started (by PID).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,19s/^# \{0,1\}//p' "$0" >&2; exit 2; }
: "${PROTO:=h2}" "${N:=4000}" "${WARM:=500}"
: "${RUN:=$(mktemp -d /tmp/scoregate-instructions.XXXXXX)}"
OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
for b in valgrind callgrind_control openssl setsid "$OHA"; do
  command -v "$b" >/dev/null || { echo "instructions.sh: $b not found" >&2; exit 1; }
done
case "$PROTO" in h1 | h2) ;; *) echo "instructions.sh: PROTO is h1 or h2" >&2; exit 2 ;; esac

export RUN PORT=28701 ADMIN_PORT=28702 UP=127.0.0.1:28700 ROUTE=/api/v1/service/iris
export KEY1=sk_primary_instructions_7Q2mX9vL4pR8tK1w KEY2=sk_secondary_instructions_H4jD8sA2g
export CERT="$RUN/certs/server.crt" CERTKEY="$RUN/certs/server.key" RECORDS="$RUN/records.jsonl"
mkdir -p "$RUN/logs"
"$ROOT/certs/gen-dev-certs.sh" "$RUN/certs" > "$RUN/logs/certs.txt"

STARTED=()
cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
wait_port() {      # port pid: up to 60 s (valgrind starts slowly)
  local i
  for ((i = 0; i < 600; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
stop() {           # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

setsid "$1" sample-model --listen "$UP" > "$RUN/logs/upstream.log" 2>&1 < /dev/null &
up=$!; STARTED+=("$up")
wait_port "${UP##*:}" "$up" \
  || { echo "instructions.sh: the sample model did not start" >&2; exit 1; }

args=(--no-tui -c 10 --insecure -m POST -T application/json -d '{"inputs":[[0.1,0.2,0.3,0.4]]}'
  -H "Authorization: Bearer $KEY1")
[ "$PROTO" = h1 ] || args+=(--http2 -p 5)
url="https://127.0.0.1:$PORT$ROUTE/score"
i=0
for bin in "$@"; do
  i=$((i + 1))
  conf=$(SG_CONFIG_ONLY=1 PEER_NAME="sg$i" "$HERE/peers/scoregate.sh" key 1)
  out="$RUN/callgrind-$i.out"
  PEER_NAME="sg$i" setsid valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" run --config "$conf" >> "$RECORDS" 2> "$RUN/logs/sg$i.log" < /dev/null &
  sg=$!; STARTED+=("$sg")
  wait_port "$PORT" "$sg" \
    || { echo "instructions.sh: $bin did not start (see $RUN/logs)" >&2; exit 1; }
  "$OHA" "${args[@]}" -n "$WARM" "$url" > "$RUN/logs/warm-$i.txt"
  callgrind_control -z "$sg" > /dev/null 2>&1
  "$OHA" "${args[@]}" -n "$N" "$url" > "$RUN/logs/oha-$i.txt"
  callgrind_control -d "$sg" > /dev/null 2>&1
  stop "$sg"
  STARTED=("$up")    # a stopped PID may be reused: the exit trap must not signal it
  grep -q 'Success rate:.*100.00%' "$RUN/logs/oha-$i.txt" \
    || { echo "instructions.sh: not every request succeeded ($RUN/logs/oha-$i.txt)" >&2; exit 1; }
  total=$(awk '/^totals:/ { print $2; exit }' "$out.1")
  printf '%s  %s  %d instructions per request (%s in %d requests)\n' \
    "$PROTO" "$bin" $((total / N)) "$total" "$N"
done
echo "callgrind data: $RUN/callgrind-*.out.1 (callgrind_annotate --inclusive=no FILE)"
