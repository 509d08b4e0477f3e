#!/usr/bin/env bash
# End-to-end load test: the upstream alone ("direct", plain HTTP) against scoregate in front of it
# (TLS), interleaved round by round. See loadtest/README.md.
#
#   loadtest/run.sh                       # REPS=3 rounds x configs.txt x DUR=5s
#   QUICK=1 loadtest/run.sh               # 1 round x 2s
#   ONLY='^scoregate$' loadtest/run.sh    # a subset ("direct" is always kept)
#   EXTRA_CONFIGS='scoregate-h2 h2 none /api/v1/service/iris/score $HERE/peers/scoregate.sh none -' loadtest/run.sh
#   RATE=2000 loadtest/run.sh             # a fixed request rate (oha -q) instead of as fast as possible
#   CONFIGS_FILE=loadtest/compare/idle.txt loadtest/run.sh   # PROTO idle rows: RSS with idle connections
#   loadtest/compare.sh                   # issue 8: scoregate vs nginx and HAProxy (all of the above)
#
# Everything listens on 127.0.0.1 only. Every process is started by this script in its own
# process group and stopped by that PID / group only (also on errors and Ctrl-C).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

# ---------------------------------------------------------------- knobs
# The knobs the caller set, to write the exact command into env.txt.
SET_KNOBS=""
for v in QUICK REPS DUR WARM CONC H2_CONNS H2_STREAMS CERT_TYPE UPPORT PORT ADMIN_PORT ONLY \
  CONFIGS_FILE EXTRA_CONFIGS QUIET_WAIT QUIET_PCT BUILD BUILD_TIMEOUT RUN OUT OHA SCOREGATE \
  MAX_SECONDS NOISE_PCT TARGET_RATIO TARGET_RSS_MIB RATE IDLE_CONNS IDLE_PARALLEL IDLE_TIMEOUT \
  TOKEN_LIFETIME_S ANCHORS PERF PERF_FREQ ORDER; do
  if [ -n "${!v+x}" ]; then SET_KNOBS+="$v=$(printf '%q' "${!v}") "; fi
done
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${REPS:=1}" "${DUR:=2}" "${WARM:=1}"
else
  : "${REPS:=3}" "${DUR:=5}" "${WARM:=1}"
fi
: "${CONC:=50}"                         # HTTP/1.1 connections (= requests in flight)
: "${H2_CONNS:=10}" "${H2_STREAMS:=5}"  # HTTP/2 rows: connections x streams in flight
: "${CERT_TYPE:=ec}"                    # ec (P-256) | rsa (2048)
: "${UPPORT:=}" "${PORT:=}" "${ADMIN_PORT:=}" # default: three free ports picked at random
: "${ONLY:=}"                           # ERE on config names ("direct" is always kept)
: "${ORDER:=alternate}"                 # alternate: rows reversed in even rounds | fixed
: "${CONFIGS_FILE:=$HERE/configs.txt}"
: "${EXTRA_CONFIGS:=}"                  # more lines in the configs.txt format
: "${QUIET_WAIT:=30}"                    # before each run, wait up to this many seconds ...
: "${QUIET_PCT:=15}"                    # ... for a 1-s window where the machine is < this % busy
: "${BUILD:=1}"                         # 0: use the existing release binary
: "${BUILD_TIMEOUT:=1800}"              # seconds for cargo build / cargo install oha
: "${RUN:=$(mktemp -d /tmp/scoregate-loadtest.XXXXXX)}"
: "${OUT:=$RUN/results}"
: "${OHA:=}"
: "${RATE:=0}"                          # >0: oha -q RATE (requests/s over all connections)
: "${IDLE_CONNS:=10000}"                # PROTO idle: connections the opener holds open
: "${IDLE_PARALLEL:=100}"               # PROTO idle: handshakes in flight while opening
: "${IDLE_TIMEOUT:=120}"                # PROTO idle: seconds allowed for opening them all
: "${TOKEN_LIFETIME_S:=86400}"          # the load's tokens live this long (one token all run)
: "${PERF:=0}"                          # 1: perf record the proxy during each measured window
: "${PERF_FREQ:=999}"                   # its sampling frequency (Hz)
: "${ANCHORS:=$ROOT/../shared/anchors-bench}"
: "${TARGET_DIR:=${CARGO_TARGET_DIR:-$ROOT/target}}"
: "${SCOREGATE:=$TARGET_DIR/release/scoregate}"
BODY='{"data":[[5.1,3.5,1.4,0.2]]}'
EXPECT='"result":["setosa"]'            # the sample model's answer for BODY
ROUTE=/api/v1/service/iris
# Test credentials for future key/token rows (not secrets; fixed so configs and load agree).
KEY1=${KEY1:-sk_primary_loadtest_7Q2mX9vL4pR8tK1wZ6nB}
KEY2=${KEY2:-sk_secondary_loadtest_H4jD8sA2gL6yU1oE9i}
TOKEN=${TOKEN:-}
TOKEN_ES256=""; TOKEN_RS256=""          # minted at setup when a row uses AUTH es256 / rs256
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "$UPPORT$PORT$ADMIN_PORT" ]; then
  # Random free ports, not fixed ones: other programs on a shared machine (or another run of
  # this script) must never end up receiving this load, or serving it in our place.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    b=$(( 20000 + RANDOM % 12000 ))   # below the kernel's ephemeral range (32768+)
    if ! port_open "$b" && ! port_open $((b + 1)) && ! port_open $((b + 2)); then
      UPPORT=$b; PORT=$((b + 1)); ADMIN_PORT=$((b + 2)); break
    fi
  done
fi
if [ -z "$UPPORT" ] || [ -z "$PORT" ] || [ -z "$ADMIN_PORT" ]; then
  echo "run.sh: set all of UPPORT PORT ADMIN_PORT, or none of them" >&2; exit 1
fi
CERTS="$RUN/certs"
CERT="$CERTS/server.crt"; CERTKEY="$CERTS/server.key"; CA="$CERTS/ca.crt"; PEM="$CERTS/server.pem"
UP="127.0.0.1:$UPPORT"
# The same upstream also listens on a Unix socket, $UPSOCK, for rows that reach it there (issue
# 18); created with the upstream, below.
UPSOCK_DIR=""; UPSOCK=""
export SCOREGATE PORT ADMIN_PORT UP UPSOCK ROUTE CERT CERTKEY PEM CA RUN KEY1 KEY2 TOKEN HERE ANCHORS \
  TOKEN_LIFETIME_S

T0=$(date +%s)
log() { printf '[%s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
case "$CERT_TYPE" in ec | rsa) ;; *) die "CERT_TYPE must be ec or rsa" ;; esac
for v in QUIET_WAIT QUIET_PCT RATE; do
  if ! [[ "${!v}" =~ ^[0-9]+$ ]]; then die "$v must be a non-negative integer (got '${!v}')"; fi
done
for v in REPS DUR WARM CONC H2_CONNS H2_STREAMS UPPORT PORT ADMIN_PORT IDLE_CONNS IDLE_PARALLEL \
  IDLE_TIMEOUT TOKEN_LIFETIME_S; do
  if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then die "$v must be a positive integer (got '${!v}')"; fi
done

# ---------------------------------------------------------------- process helpers
PEER_PID=""; UP_PID=""; OPENER_PID=""
alive() {          # pid -> 0 while it exists and is not a zombie
  local s
  { read -r s < "/proc/$1/stat"; } 2>/dev/null || return 1
  s=${s##*) }; [ "${s:0:1}" != Z ]
}
wait_port() {      # port timeout_s [pid] -> 0 once something listens
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    port_open "$1" && return 0
    if [ -n "${3:-}" ] && ! alive "$3"; then return 1; fi
    sleep 0.05
  done
  return 1
}
wait_port_free() { local i; for ((i = 0; i < $2 * 20; i++)); do port_open "$1" || return 0; sleep 0.05; done; return 1; }
group_pids() { ps -e -o pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }
owns_port() {      # port pgid -> 0 when a process of that group listens on 127.0.0.1:port
  # (1 also when ss cannot tell; callers treat that as "not ours")
  local p
  for p in $(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2); do
    [ "$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ')" = "$2" ] && return 0
  done
  return 1
}
proc_field() {     # pid index -> field of /proc/pid/stat counted from the state field (index 0)
  local line a
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
  read -ra a <<< "${line##*) }"
  echo "${a[$2]}"
}
cpu_ticks() {      # pids... -> utime+stime of all their threads, in clock ticks
  local t=0 p
  for p in "$@"; do t=$(( t + $(proc_field "$p" 11) + $(proc_field "$p" 12) )); done
  echo "$t"
}
sys_ticks() {      # pids... -> stime (kernel time) of all their threads, in clock ticks
  local t=0 p
  for p in "$@"; do t=$(( t + $(proc_field "$p" 12) )); done
  echo "$t"
}
child_ticks() {    # -> cutime+cstime of this shell: CPU of every child it has waited for
  echo $(( $(proc_field $$ 13) + $(proc_field $$ 14) ))
}
sys_busy_ticks() { # -> non-idle CPU ticks of the whole machine (all CPUs), from /proc/stat
  local us ni sy irq sirq st
  # fields: cpu user nice system idle iowait irq softirq steal guest guest_nice
  read -r _ us ni sy _ _ irq sirq st _ < /proc/stat
  echo $(( us + ni + sy + irq + sirq + st ))
}
start_bg() {       # name logfile cmd... ; sets STARTED_PID, the leader of a new session/group
  local name=$1 lf=$2; shift 2
  # In a non-interactive shell a background job is not a group leader, so setsid execs
  # directly and $! is the program's PID as well as its process group id.
  PEER_NAME=$name setsid "$@" > "$lf" 2>&1 < /dev/null &
  STARTED_PID=$!
}
stop_pid() {       # pid: SIGTERM its group, wait up to 5 s, then SIGKILL the group
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.05; done
  if alive "$pid"; then log "pid $pid ignored SIGTERM for 5 s; killing its group"; fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  if [ -n "$OPENER_PID" ]; then stop_pid "$OPENER_PID"; OPENER_PID=""; fi
  if [ -n "$PEER_PID" ]; then stop_pid "$PEER_PID"; PEER_PID=""; fi
  if [ -n "$UP_PID" ]; then stop_pid "$UP_PID"; UP_PID=""; fi
  if [ -n "${UPSOCK_DIR:-}" ]; then rm -rf "$UPSOCK_DIR"; UPSOCK_DIR=""; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- setup: tools, binary, certs
for b in curl python3 openssl setsid timeout ps awk ss; do
  command -v "$b" >/dev/null || die "$b not found"
done
[ "$PERF" = 0 ] || command -v perf >/dev/null || die "PERF=1 needs perf (apt-get install linux-perf)"
if [ -z "$OHA" ]; then
  if command -v oha >/dev/null; then OHA=$(command -v oha)
  elif [ -x "$HOME/.cargo/bin/oha" ]; then OHA=$HOME/.cargo/bin/oha
  else
    log "oha not found; installing it with 'cargo install oha --locked' (a few minutes)"
    timeout "$BUILD_TIMEOUT" cargo install oha --locked >&2 || die "cargo install oha failed"
    OHA=$HOME/.cargo/bin/oha
  fi
fi
"$OHA" --version >/dev/null 2>&1 || die "oha at '$OHA' does not run"
if [ "$BUILD" = 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release >&2) || die "release build failed"
fi
[ -x "$SCOREGATE" ] || die "no scoregate binary at $SCOREGATE (BUILD=1 builds it)"

mkdir -p "$RUN/logs" "$OUT/raw" || die "cannot create $RUN / $OUT"
T0=$(date +%s)     # the time budget covers the measurements, not the build
"$ROOT/certs/gen-dev-certs.sh" "--$CERT_TYPE" "$CERTS" > "$RUN/logs/certs.txt" || die "cert generation failed"
# HAProxy-style peers want the certificate and key in one file.
( umask 077; cat "$CERT" "$CERTKEY" > "$PEM" )

# ---------------------------------------------------------------- configs
NAMES=(); PROTOS=(); AUTHS=(); PATHS=(); CMDS=()
while read -r n p a u c; do
  if [ -z "${n:-}" ] || [ "${n:0:1}" = "#" ]; then continue; fi
  if [ -n "$ONLY" ] && [ "$n" != direct ] && ! [[ "$n" =~ $ONLY ]]; then continue; fi
  case "$p" in plain | h1 | h2 | h1new | idle | idle-tls) ;; *) die "config $n: unknown PROTO '$p'" ;; esac
  case "$a" in none | key | token | es256 | rs256) ;; *) die "config $n: unknown AUTH '$a'" ;; esac
  if [[ "$p" == idle* ]] && [ "$c" = - ]; then die "config $n: PROTO $p needs a proxy COMMAND"; fi
  [ -n "${c:-}" ] || die "config $n: no COMMAND (use - for none)"
  NAMES+=("$n"); PROTOS+=("$p"); AUTHS+=("$a"); PATHS+=("$u"); CMDS+=("$c")
done < <(cat "$CONFIGS_FILE"; printf '%s\n' "$EXTRA_CONFIGS")
NC=${#NAMES[@]}
[ "$NC" -gt 0 ] || die "no configs selected"
HAS_LOAD=0; HAS_IDLE=0; NEED_TOKENS=0; USES=" "
for ((i = 0; i < NC; i++)); do
  if [[ "${PROTOS[$i]}" == idle* ]]; then HAS_IDLE=1; else HAS_LOAD=1; fi
  case "${AUTHS[$i]}" in es256 | rs256) NEED_TOKENS=1 ;; esac
  case "${CMDS[$i]}" in *nginx*) USES+="nginx " ;; esac
  case "${CMDS[$i]}" in *haproxy*) USES+="haproxy " ;; esac
done
if [ "$HAS_LOAD" = 1 ] && [ "${NAMES[0]}" != direct ]; then
  log "warning: the first config is not 'direct'; 'x direct' needs it"
fi
for b in nginx haproxy; do
  if [[ "$USES" == *" $b "* ]] && ! command -v "$b" >/dev/null; then
    die "a selected config runs $b, which is not installed (apt-get install -y ${b/nginx/nginx-light}; loadtest/compare.sh installs it)"
  fi
done
if [ "$HAS_IDLE" = 1 ]; then
  # The opener and the proxy each need a descriptor per idle connection.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 200)) ]; then
    die "open-file limit $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS (raise the hard limit)"
  fi
fi

PER_RUN=$(( WARM + DUR + 6 ))           # start, checks, warm-up, measure, stop
PER_IDLE=$(( IDLE_CONNS / 400 + 15 ))   # start, checks, open (about 400 TLS connections/s), stop
per_run() { if [[ "${PROTOS[$1]}" == idle* ]]; then echo "$PER_IDLE"; else echo "$PER_RUN"; fi; }
EST=0
for ((i = 0; i < NC; i++)); do EST=$(( EST + REPS * $(per_run "$i") )); done

# ---------------------------------------------------------------- tokens (AUTH es256 / rs256)
# An operator signing key per algorithm, and one long-lived token issued with it offline by
# `scoregate token issue` from the same config generator the scoregate rows use (same key, same
# kid). The load sends that one token on every request (realistic reuse); the HAProxy JWT peer
# verifies it with the key's public half ($RUN/jwt/<alg>.pub).
mint_token() {     # ALG -> the accessToken on stdout
  local alg=$1 lc=${1,,} conf out="" i
  conf=$(PEER_NAME="mint-$lc" SG_CONFIG_ONLY=1 "$HERE/peers/scoregate.sh" "token:$alg" 1) || return 1
  if "$SCOREGATE" token issue --help > /dev/null 2>&1; then
    out=$("$SCOREGATE" token issue --config "$conf" --service iris --subject loadtest 2>>"$RUN/logs/mint.err")
  else
    # This build has no `token issue` subcommand: ask a short-lived gateway with the same config
    # (same signing key) through the management API, POST /services/iris/token, with the bootstrap
    # Owner credential it writes to its state_dir.
    echo "scoregate token issue: not in this build; minting $alg through the admin API" >> "$RUN/logs/mint.err"
    start_bg "mint-$lc" "$RUN/logs/mint-$lc.log" "$SCOREGATE" run --config "$conf"
    PEER_PID=$STARTED_PID
    if wait_port "$ADMIN_PORT" 15 "$PEER_PID" && owns_port "$ADMIN_PORT" "$PEER_PID"; then
      for ((i = 0; i < 50; i++)); do [ -s "$RUN/state-mint-$lc/admin.token" ] && break; sleep 0.1; done
      out=$(curl -sS -m 5 -X POST -H "Authorization: Bearer $(cat "$RUN/state-mint-$lc/admin.token")" \
        "http://127.0.0.1:$ADMIN_PORT/services/iris/token" 2>>"$RUN/logs/mint.err") || out=""
    fi
    stop_pid "$PEER_PID"; PEER_PID=""
  fi
  printf '%s\n' "$out" >> "$RUN/logs/mint.err"
  printf '%s' "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])' 2>>"$RUN/logs/mint.err"
}
if [ "$NEED_TOKENS" = 1 ]; then
  mkdir -p "$RUN/jwt"
  ( umask 077
    [ -s "$RUN/jwt/es256.key" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$RUN/jwt/es256.key" 2>/dev/null
    [ -s "$RUN/jwt/rs256.key" ] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$RUN/jwt/rs256.key" 2>/dev/null
  ) || die "cannot generate the JWT signing keys in $RUN/jwt"
  for a in es256 rs256; do
    openssl pkey -in "$RUN/jwt/$a.key" -pubout -out "$RUN/jwt/$a.pub" 2>/dev/null || die "openssl pkey -pubout failed"
  done
  TOKEN_ES256=$(mint_token ES256) || die "scoregate token issue (ES256) failed; see $RUN/logs/mint.err"
  TOKEN_RS256=$(mint_token RS256) || die "scoregate token issue (RS256) failed; see $RUN/logs/mint.err"
  if [ -z "$TOKEN_ES256" ] || [ -z "$TOKEN_RS256" ]; then die "empty token; see $RUN/logs/mint.err"; fi
  log "minted ES256 and RS256 tokens (lifetime ${TOKEN_LIFETIME_S}s): $(printf '%s' "$TOKEN_ES256" | cut -d. -f1 | tr '_-' '/+' | base64 -d 2>/dev/null)"
fi
export TOKEN_ES256 TOKEN_RS256
: "${MAX_SECONDS:=$(( EST * 2 + 60 + REPS * NC * QUIET_WAIT ))}"

{
  echo "date: $(date -Is)"
  echo "command: $SET_KNOBS$0 $*"
  echo "host: $(uname -srm); $(nproc) CPUs; $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/^model name/ {m = $2} /^cpu family/ {f = $2} /^model\t/ {d = $2} /^cpu MHz/ {z = $2}
    END {printf "%s (family %s model %s, %.0f MHz)", m, f, d, z}' /proc/cpuinfo)$(grep -qw hypervisor /proc/cpuinfo && echo ', virtual machine')"
  echo "knobs: REPS=$REPS DUR=${DUR}s WARM=${WARM}s CONC=$CONC H2=${H2_CONNS}x${H2_STREAMS} CERT_TYPE=$CERT_TYPE QUIET_WAIT=${QUIET_WAIT}s QUIET_PCT=$QUIET_PCT MAX_SECONDS=$MAX_SECONDS$([ "$RATE" = 0 ] || echo " RATE=$RATE/s")$([ "$HAS_IDLE" = 0 ] || echo " IDLE_CONNS=$IDLE_CONNS IDLE_PARALLEL=$IDLE_PARALLEL")"
  echo "body: $BODY"
  echo "configs: ${NAMES[*]}"
  echo "scoregate: $("$SCOREGATE" --version 2>&1) ($SCOREGATE)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (src modified)')"
  echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
  echo "oha: $("$OHA" --version 2>&1 | head -1)"
  [[ "$USES" != *" nginx "* ]] || echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //') ($(dpkg-query -W -f '${Package} ${Version}\n' nginx-light nginx 2>/dev/null | paste -sd, -))"
  [[ "$USES" != *" haproxy "* ]] || echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  [ "$HAS_IDLE" = 0 ] || echo "python3: $(python3 --version 2>&1) ($(python3 -c 'import ssl; print(ssl.OPENSSL_VERSION)'))"
  echo "curl: $(curl --version | head -1)"
  echo "openssl: $(openssl version)"
  echo "kernel clock ticks: $(getconf CLK_TCK)/s"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/env.txt"
log "run dir $RUN; results -> $OUT"
read -r LOAD1 _ < /proc/loadavg
if awk -v l="$LOAD1" 'BEGIN {exit !(l > 1.0)}'; then
  log "warning: load average is $LOAD1 before the run; other work on this machine will skew the numbers (see 'other CPU %')"
fi
sed 's/^/    /' "$OUT/env.txt" >&2

# ---------------------------------------------------------------- upstream (up for the whole run)
wait_port_free "$UPPORT" 3 || die "port $UPPORT is already in use (set UPPORT)"
wait_port_free "$PORT" 3 || die "port $PORT is already in use (set PORT)"
wait_port_free "$ADMIN_PORT" 3 || die "port $ADMIN_PORT is already in use (set ADMIN_PORT)"
# The socket has a directory of its own that others may traverse (mode 0711; $RUN holds private
# keys) and is made connectable by all: nginx's and HAProxy's workers run as an unprivileged user.
UPSOCK_DIR=$(mktemp -d /tmp/scoregate-upsock.XXXXXX)
chmod 0711 "$UPSOCK_DIR"
UPSOCK="$UPSOCK_DIR/upstream.sock"
start_bg upstream "$RUN/logs/upstream.log" "$SCOREGATE" sample-model --listen "$UP" --unix "$UPSOCK"
UP_PID=$STARTED_PID
wait_port "$UPPORT" 10 "$UP_PID" || die "upstream did not start (see $RUN/logs/upstream.log)"
owns_port "$UPPORT" "$UP_PID" || die "port $UPPORT is served by another process, not our upstream"
for ((i = 0; i < 200; i++)); do [ -S "$UPSOCK" ] && break; sleep 0.05; done
[ -S "$UPSOCK" ] || die "upstream did not create its socket $UPSOCK (see $RUN/logs/upstream.log)"
chmod 0666 "$UPSOCK"

# ---------------------------------------------------------------- per-run pieces
start_peer() {     # idx -> sets PEER_PID; 1 on failure
  local i=$1 name=${NAMES[$1]}
  PEER_PID=""
  [ "${CMDS[$i]}" = "-" ] && return 0
  wait_port_free "$PORT" 5 || { log "port $PORT still busy"; return 1; }
  wait_port_free "$ADMIN_PORT" 5 || { log "port $ADMIN_PORT still busy"; return 1; }
  start_bg "$name" "$RUN/logs/$name.log" bash -c "exec ${CMDS[$i]}"
  PEER_PID=$STARTED_PID
  if ! wait_port "$PORT" 15 "$PEER_PID" || ! owns_port "$PORT" "$PEER_PID"; then
    log "$name: did not start; tail of $RUN/logs/$name.log:"
    tail -5 "$RUN/logs/$name.log" >&2 || true
    stop_pid "$PEER_PID"; PEER_PID=""; return 1
  fi
}
stop_peer() { stop_pid "$PEER_PID"; PEER_PID=""; }
url_of() {
  if [ "${PROTOS[$1]}" = plain ]; then echo "http://$UP${PATHS[$1]}"
  else echo "https://127.0.0.1:$PORT${PATHS[$1]}"; fi
}
auth_header() {    # idx -> the Authorization value the load sends ("" for none)
  case "${AUTHS[$1]}" in
    key) echo "Bearer $KEY1" ;; token) echo "Bearer $TOKEN" ;;
    es256) echo "Bearer $TOKEN_ES256" ;; rs256) echo "Bearer $TOKEN_RS256" ;; *) echo "" ;;
  esac
}
records_lines() {  # name -> lines in its record file (scoregate) or access log (anchors peers)
  local f
  for f in "$RUN/logs/records-$1.jsonl" "$RUN/logs/access-$1.log"; do
    if [ -f "$f" ]; then wc -l < "$f"; return; fi
  done
  echo ""
}

tamper_sig() {     # token -> the same token with one character of its signature changed
  local t=$1 sig head mid c
  sig=${t##*.}; head=${t%.*}; mid=$(( ${#sig} / 2 )); c=${sig:$mid:1}
  if [ "$c" = A ]; then c=B; else c=A; fi
  echo "$head.${sig:0:$mid}$c${sig:$((mid + 1))}"
}
resumes() {        # -> "resumed" when a second TLS connection resumes the first one's session
  local s="$RUN/tls-session.pem" req out
  rm -f "$s"
  req=$'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
  printf '%s' "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
    -CAfile "$CA" -alpn http/1.1 -ign_eof -sess_out "$s" > /dev/null 2>&1 || true
  [ -s "$s" ] || { echo "no-session"; return; }
  out=$(printf '%s' "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$PORT" -servername localhost \
    -CAfile "$CA" -alpn http/1.1 -ign_eof -sess_in "$s" 2>/dev/null || true)
  if grep -q '^Reused' <<< "$out"; then echo resumed; else echo not-resumed; fi
}

CHECK_FAILS=""
check() {          # idx -> 0 when every correctness check passes; appends to checks.tsv
  local i=$1 name=${NAMES[$1]} url proto bad="" n=0 cv=(--http1.1) note=
  url=$(url_of "$i"); proto=${PROTOS[$i]}
  [ "$proto" = h2 ] && cv=(--http2)
  [ "$proto" = plain ] || cv+=(--cacert "$CA")
  curl1() {        # auth_value -> "code version"; body in $RUN/check.body
    local h=()
    [ -n "$1" ] && h=(-H "Authorization: $1")
    curl -sS -m 5 "${cv[@]}" -o "$RUN/check.body" -w '%{http_code} %{http_version}' \
      -X POST -H 'Content-Type: application/json' -d "$BODY" "${h[@]}" "$url" 2>>"$RUN/logs/curl.err" \
      || echo "000 -"
  }
  expect() {       # desc want_code auth_value [must_contain]
    local got ver
    read -r got ver <<< "$(curl1 "$3")"
    n=$((n + 1))
    if [ "$got" = 000 ] && [ "$2" = 401 ] && [ "$proto" = h2 ]; then
      # An early 401 to an h2 POST whose body is still arriving is followed by RST_STREAM
      # (scoregate: NO_ERROR, as RFC 9113 8.1 allows; HAProxy 2.6: CANCEL), and curl 7.88 then
      # drops the complete response and reports no status. A GET still shows the rejection;
      # say so in the check column (as anchors-bench does).
      local h=()
      [ -z "$3" ] || h=(-H "Authorization: $3")
      read -r got ver <<< "$(curl -sS -m 5 "${cv[@]}" -o "$RUN/check.body" -w '%{http_code} %{http_version}' \
        "${h[@]}" "$url" 2>>"$RUN/logs/curl.err" || echo "000 -")"
      if [ "$got" = 401 ]; then note=" (h2 POST 401 -> RST_STREAM; GET 401 ok)"; fi
    fi
    if [ "$got" != "$2" ]; then bad+=" $1:got-$got"; return; fi
    if [ -n "${4:-}" ] && ! grep -qF "$4" "$RUN/check.body"; then bad+=" $1:body"; fi
    if [ "$proto" = h2 ] && [ "$ver" != 2 ]; then bad+=" $1:http$ver"; fi
  }
  # The listener is open; give the proxy up to 5 s to answer its first request.
  local k code
  for ((k = 0; k < 50; k++)); do
    read -r code _ <<< "$(curl1 "$(auth_header "$i")")"
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  case "${AUTHS[$i]}" in
    none) expect ok 200 "" "$EXPECT" ;;
    key) expect key1 200 "Bearer $KEY1" "$EXPECT"; expect key2 200 "Bearer $KEY2" "$EXPECT"
         expect no-key 401 ""; expect wrong-key 401 "Bearer sk_wrong"
         expect key1-suffix 401 "Bearer ${KEY1}x" ;;
    token) expect token 200 "Bearer $TOKEN" "$EXPECT"; expect no-token 401 ""
           expect garbage 401 "Bearer a.b.c" ;;
    es256 | rs256)
      local good other
      if [ "${AUTHS[$i]}" = es256 ]; then good=$TOKEN_ES256 other=$TOKEN_RS256
      else good=$TOKEN_RS256 other=$TOKEN_ES256; fi
      expect token 200 "Bearer $good" "$EXPECT"; expect no-token 401 ""
      expect bad-signature 401 "Bearer $(tamper_sig "$good")"
      expect other-alg 401 "Bearer $other"; expect garbage 401 "Bearer a.b.c"
      expect api-key 401 "Bearer $KEY1" ;;
  esac
  # New connection per request: say whether TLS sessions resume (oha's rustls client resumes).
  if [ "$proto" = h1new ]; then note+=" tls:$(resumes)"; fi
  local res
  if [ -z "$bad" ]; then res="PASS ($n)$note"; else res="FAIL:$bad$note"; CHECK_FAILS+=" $name"; fi
  printf '%s\t%s\n' "$name" "$res" >> "$OUT/checks.tsv"
  [ -z "$bad" ] || log "check $name: $res (body: $(head -c 200 "$RUN/check.body" 2>/dev/null))"
  [ -z "$bad" ]
}

oha_args() {       # idx seconds -> NUL-separated oha arguments
  local i=$1 a auth
  a=(--no-tui --output-format json -z "${2}s" -m POST -T application/json -d "$BODY")
  auth=$(auth_header "$i")
  [ -z "$auth" ] || a+=(-H "Authorization: $auth")
  [ "${PROTOS[$i]}" = plain ] || a+=(--cacert "$CA")   # verify against the dev CA
  [ "$RATE" = 0 ] || a+=(-q "$RATE")
  case "${PROTOS[$i]}" in
    h2) a+=(--http2 -c "$H2_CONNS" -p "$H2_STREAMS") ;;
    h1new) a+=(--disable-keepalive -c "$CONC" -w) ;;
    *) a+=(-c "$CONC" -w) ;;   # -w: finish in-flight requests at the deadline instead of aborting
  esac
  printf '%s\0' "${a[@]}" "$(url_of "$i")"
}

wait_quiet() {     # on a shared machine, start a run only when other work pauses (bounded)
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  local t0 a b pct tck
  t0=$(date +%s); tck=$(getconf CLK_TCK)
  while :; do
    a=$(sys_busy_ticks); sleep 1; b=$(sys_busy_ticks)
    pct=$(( (b - a) * 100 / tck ))
    [ "$pct" -lt "$QUIET_PCT" ] && return 0
    if (( $(date +%s) - t0 >= QUIET_WAIT )); then
      log "machine still ${pct}% busy after ${QUIET_WAIT}s of waiting; measuring anyway"
      return 0
    fi
  done
}

mem_kib() {        # field pids... -> "sum largest" of a /proc/PID/status field (VmRSS, VmHWM) in KiB
  local f=$1 s=0 m=0 p k v u; shift
  for p in "$@"; do
    while read -r k v u; do
      if [ "$k" = "$f:" ]; then s=$((s + v)); [ "$v" -le "$m" ] || m=$v; fi
    done 2>/dev/null < "/proc/$p/status"
  done
  echo "$s $m"
}
pss_kib() {        # pids... -> proportional set size summed over them, in KiB (shared pages split)
  local s=0 p k v u
  for p in "$@"; do
    while read -r k v u; do
      if [ "$k" = "Pss:" ]; then s=$((s + v)); fi
    done 2>/dev/null < "/proc/$p/smaps_rollup"
  done
  echo "$s"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
IDLE_FIELDS="round,name,proto,auth,conns,opened,ok,failed,established,open_s,rss_before_mib,rss_held_mib,largest_proc_rss_mib,pss_held_mib,peak_rss_mib,kib_per_conn,proxy_cpu_ms_per_conn,status"

idle_run() {       # round idx -> appends one row to idle.csv (PROTO idle)
  local r=$1 i=$2 name=${NAMES[$2]} ready="$RUN/idle-ready.json" status=ok
  local -a pids=()
  local k opened=0 okn=0 failed=0 secs="" est="" rss0 rss1 big pss hw c0 c1 per="" cpc="" noreq=()
  [ "${PROTOS[$i]}" = idle ] || noreq=(--no-request)      # idle-tls: the TLS handshake only
  rm -f "$RUN/logs/records-$name.jsonl" "$RUN/logs/access-$name.log" "$ready"
  export RECORDS="$RUN/logs/records-$name.jsonl"
  wait_quiet
  if ! start_peer "$i"; then
    printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},$IDLE_CONNS,,,,,,,,,,,,,nostart" >> "$OUT/idle.csv"; return
  fi
  if ! check "$i"; then
    stop_peer
    printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},$IDLE_CONNS,,,,,,,,,,,,,checkfail" >> "$OUT/idle.csv"; return
  fi
  mapfile -t pids < <(group_pids "$PEER_PID")
  read -r rss0 _ <<< "$(mem_kib VmRSS "${pids[@]}")"
  c0=$(cpu_ticks "${pids[@]}")
  start_bg opener "$RUN/logs/opener-$name.log" python3 "$HERE/idle_conns.py" --port "$PORT" \
    --cafile "$CA" --conns "$IDLE_CONNS" --parallel "$IDLE_PARALLEL" --path "${PATHS[$i]}" \
    --auth "$(auth_header "$i")" --body "$BODY" --hold $((IDLE_TIMEOUT + 60)) --ready-file "$ready" \
    "${noreq[@]}"
  OPENER_PID=$STARTED_PID
  for ((k = 0; k < IDLE_TIMEOUT * 10; k++)); do
    [ -s "$ready" ] && break
    alive "$OPENER_PID" || break
    sleep 0.1
  done
  if [ -s "$ready" ]; then
    sleep 2                             # let the proxy settle (buffers released after the request)
    est=$(ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l)
    read -r rss1 big <<< "$(mem_kib VmRSS "${pids[@]}")"
    pss=$(pss_kib "${pids[@]}")
    read -r hw _ <<< "$(mem_kib VmHWM "${pids[@]}")"
    c1=$(cpu_ticks "${pids[@]}")
    IFS=, read -r opened okn failed secs <<< "$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1])); print(d["opened"], d["ok"], d["failed"], d["seconds"], sep=",")' "$ready")"
    [ "$okn" = "$IDLE_CONNS" ] || status=incomplete
    if [ "$okn" -gt 0 ]; then
      per=$(awk -v a="$rss0" -v b="$rss1" -v n="$okn" 'BEGIN {printf "%.1f", (b - a) / n}')
      cpc=$(awk -v a="$c0" -v b="$c1" -v n="$okn" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", (b - a) / t * 1000 / n}')
    fi
  else
    status=openfail
    log "$name: the opener did not finish in ${IDLE_TIMEOUT}s; tail of $RUN/logs/opener-$name.log:"
    tail -3 "$RUN/logs/opener-$name.log" >&2 || true
    read -r rss1 big <<< "$(mem_kib VmRSS "${pids[@]}")"; pss=""; hw=""
  fi
  stop_pid "$OPENER_PID"; OPENER_PID=""
  stop_peer
  printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},$IDLE_CONNS,$opened,$okn,$failed,$est,$secs,$(mib "$rss0"),$(mib "$rss1"),$(mib "$big"),$([ -z "$pss" ] || mib "$pss"),$([ -z "$hw" ] || mib "$hw"),$per,$cpc,$status" >> "$OUT/idle.csv"
  log "r$r $(printf '%-14s' "$name") idle: ok=$okn/$IDLE_CONNS failed=$failed established=$est in ${secs}s rss $(mib "$rss0") -> $(mib "$rss1") MiB (pss $([ -z "$pss" ] || mib "$pss")) ${per:--} KiB/conn ${cpc:--} CPU-ms/conn $status"
}

one_run() {        # round idx -> appends one row to runs.csv
  local r=$1 i=$2 name=${NAMES[$2]} js status=ok
  js="$OUT/raw/r$r-$name.json"
  local -a args pids=()
  local c0=0 c1=0 k0=0 k1=0 u0 u1 l0 l1 s0 s1 hw="" rec0="" rec1="" recs="" proxied=0 k
  # A fresh record file / access log per run. (HAProxy sets O_NONBLOCK on its stdout with
  # F_SETFL, which clears the O_APPEND of the launcher's `>>`: it then writes from offset 0,
  # over whatever an earlier run left in the file, and a line count across runs is wrong.)
  rm -f "$RUN/logs/records-$name.jsonl" "$RUN/logs/access-$name.log"
  export RECORDS="$RUN/logs/records-$name.jsonl"
  wait_quiet
  if ! start_peer "$i"; then
    printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},,,,0,0,0,0,,,,,,,,,nostart," >> "$OUT/runs.csv"
    return
  fi
  if ! check "$i"; then
    stop_peer
    printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},,,,0,0,0,0,,,,,,,,,checkfail," >> "$OUT/runs.csv"
    return
  fi
  mapfile -d '' args < <(oha_args "$i" "$WARM")
  timeout $((WARM + 20)) "$OHA" "${args[@]}" > /dev/null 2>&1 || true     # warm-up, not recorded
  mapfile -d '' args < <(oha_args "$i" "$DUR")
  if [ -n "$PEER_PID" ]; then
    proxied=1
    mapfile -t pids < <(group_pids "$PEER_PID")
    sleep 0.2                           # let the record writer catch up with the warm-up
    rec0=$(records_lines "$name")
    c0=$(cpu_ticks "${pids[@]}"); k0=$(sys_ticks "${pids[@]}")
  fi
  local perf_pid="" pd="$OUT/raw/r$r-$name.perf"
  if [ "$PERF" = 1 ] && [ "$proxied" = 1 ]; then
    # Profile the proxy's processes during the measured window (cpu-clock samples; perf's own
    # cost lands on the machine, so a PERF=1 run's numbers are not for the table).
    start_bg perf "$RUN/logs/perf-$name.log" perf record -F "$PERF_FREQ" -g \
      -p "$(IFS=,; echo "${pids[*]}")" -o "$pd.data" -- sleep "$DUR"
    perf_pid=$STARTED_PID
  fi
  u0=$(cpu_ticks "$UP_PID"); l0=$(child_ticks); s0=$(sys_busy_ticks)
  timeout $((DUR + 30)) "$OHA" "${args[@]}" > "$js" 2> "$js.err" || status=ohafail
  s1=$(sys_busy_ticks); l1=$(child_ticks); u1=$(cpu_ticks "$UP_PID")
  if [ -n "$perf_pid" ]; then
    OPENER_PID=$perf_pid                # stopped by cleanup if we are interrupted
    for ((k = 0; k < 100; k++)); do alive "$perf_pid" || break; sleep 0.1; done
    stop_pid "$perf_pid"; OPENER_PID=""
  fi
  if [ "$proxied" = 1 ]; then
    c1=$(cpu_ticks "${pids[@]}"); k1=$(sys_ticks "${pids[@]}")
    read -r hw _ <<< "$(mem_kib VmHWM "${pids[@]}")"
    stop_peer                           # a clean stop flushes the record writer
    rec1=$(records_lines "$name")
    if [ -n "$rec0" ] && [ -n "$rec1" ]; then recs=$((rec1 - rec0)); fi
  fi
  local parsed
  parsed=$(python3 "$HERE/report.py" row "$js" 2>>"$RUN/logs/report.err") \
    || { [ "$status" = ok ] && status=parsefail; parsed=",,,0,0,0,0"; }
  local rps p50 p99 total n2 nn er pcpu="" pus="" pkus="" ppct="" upct lgpct opct rss=""
  IFS=, read -r rps p50 p99 total n2 nn er <<< "$parsed"
  local tck; tck=$(getconf CLK_TCK)
  if [ "$proxied" = 1 ]; then
    pcpu=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN {printf "%.2f", (b - a) / t}')
    pus=$(awk -v c="$pcpu" -v n="$total" 'BEGIN {if (n > 0) printf "%.1f", c * 1e6 / n}')
    pkus=$(awk -v a="$k0" -v b="$k1" -v t="$tck" -v n="$total" 'BEGIN {if (n > 0) printf "%.1f", (b - a) / t * 1e6 / n}')
    ppct=$(awk -v c="$pcpu" -v d="$DUR" 'BEGIN {printf "%.0f", c / d * 100}')
    rss=$(awk -v k="$hw" 'BEGIN {printf "%.1f", k / 1024}')
  fi
  upct=$(awk -v a="$u0" -v b="$u1" -v t="$tck" -v d="$DUR" 'BEGIN {printf "%.0f", (b - a) / t / d * 100}')
  lgpct=$(awk -v a="$l0" -v b="$l1" -v t="$tck" -v d="$DUR" 'BEGIN {printf "%.0f", (b - a) / t / d * 100}')
  # Everything else the machine did meanwhile (other processes, unattributed softirq): a noise
  # indicator. Runs with a high value were measured on a busy machine.
  opct=$(awk -v a="$s0" -v b="$s1" -v p="$((c1 - c0))" -v u="$((u1 - u0))" -v l="$((l1 - l0))" -v t="$tck" -v d="$DUR" \
    'BEGIN {x = (b - a - p - u - l) / t / d * 100; if (x < 0) x = 0; printf "%.0f", x}')
  printf '%s\n' "$r,$name,${PROTOS[$i]},${AUTHS[$i]},$rps,$p50,$p99,$total,$n2,$nn,$er,$pcpu,$pus,$ppct,$upct,$lgpct,$opct,$rss,$recs,$status,$pkus" >> "$OUT/runs.csv"
  if [ -s "$pd.data" ]; then         # after the measurement: where the proxy's time went
    local sort
    for sort in dso comm dso,symbol; do
      timeout 120 perf report -i "$pd.data" --no-children --sort "$sort" --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | cut -c1-150 | sed 's/ *$//' | head -40 > "$pd-${sort/,/-}.txt" || true
    done
    log "  perf $name (samples by dso): $(head -5 "$pd-dso.txt" | awk '{printf "%s %s; ", $2, $1}')"
  fi
  log "r$r $(printf '%-14s' "$name") rps=${rps%.*} p50=${p50}ms p99=${p99}ms non2xx=$nn err=$er proxy=${ppct:--}% ${pus:--}us/req up=${upct}% oha=${lgpct}% other=${opct}% rss=${rss:--}MiB records=${recs:--}/$total $status"
}

# ---------------------------------------------------------------- rounds
python3 "$HERE/report.py" fields > "$OUT/runs.csv"
[ "$HAS_IDLE" = 0 ] || echo "$IDLE_FIELDS" > "$OUT/idle.csv"
: > "$OUT/checks.tsv"
log "$NC configs x $REPS rounds x ${DUR}s (estimate ${EST}s, hard stop after ${MAX_SECONDS}s)"
STOPPED=0
# Row order: row 0 ("direct", each round's baseline) first, then the others in file order in odd
# rounds and in reverse order in even rounds (ORDER=alternate, the default), so a host whose load
# drifts within a round does not always favour the same row of an A/B pair (on this VM the second
# of two rows that cost the same measured ~17 % dearer in fixed order; loadtest/README.md).
# ORDER=fixed keeps file order in every round.
round_order() {
  local r=$1 i
  echo 0
  if [ "$ORDER" = alternate ] && (( r % 2 == 0 )); then
    for ((i = NC - 1; i >= 1; i--)); do echo "$i"; done
  else
    for ((i = 1; i < NC; i++)); do echo "$i"; done
  fi
}
for ((r = 1; r <= REPS && !STOPPED; r++)); do
  for i in $(round_order "$r"); do
    if (( $(date +%s) - T0 + $(per_run "$i") > MAX_SECONDS )); then
      log "time budget MAX_SECONDS=$MAX_SECONDS reached; stopping early"; STOPPED=1; break
    fi
    if [[ "${PROTOS[$i]}" == idle* ]]; then idle_run "$r" "$i"; else one_run "$r" "$i"; fi
  done
done
cleanup

{
  [ "$HAS_LOAD" = 0 ] || python3 "$HERE/report.py" table "$OUT/runs.csv" "$OUT/checks.tsv"
  [ "$HAS_IDLE" = 0 ] || python3 "$HERE/report.py" idle "$OUT/idle.csv" "$OUT/checks.tsv"
  echo
  echo "$(sed -n 's/^knobs: //p' "$OUT/env.txt"); $(sed -n 's/^date: //p' "$OUT/env.txt"); $(sed -n 's/^cpu: //p' "$OUT/env.txt"), $(nproc) CPUs"
} > "$OUT/table.md"
cat "$OUT/table.md"
[ -z "$CHECK_FAILS" ] || log "correctness check failures:$CHECK_FAILS"
log "done in $(( $(date +%s) - T0 ))s; results in $OUT (table.md runs.csv env.txt checks.tsv raw/)"
