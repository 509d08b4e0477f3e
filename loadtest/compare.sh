#!/usr/bin/env bash
# Issue 8: scoregate side by side with nginx and HAProxy, on the same work, in one command.
# See loadtest/README.md ("Comparison with nginx and HAProxy").
#
#   loadtest/compare.sh                       # all three modes (about 15 minutes on an idle machine)
#   QUICK=1 loadtest/compare.sh               # 1 round each, short runs, 2,000 idle connections
#   MODES='main' loadtest/compare.sh          # a subset of: main rate idle
#   QUIET_WAIT=120 loadtest/compare.sh        # a busy shared machine: wait longer for pauses
#
# Three invocations of loadtest/run.sh, each with its own config list in loadtest/compare/:
#   main  every proxy under the same full-speed load: key mode (HTTP/1.1 and HTTP/2, and a new
#         connection per request), token mode, auth none and records off (interleaved rounds)
#   rate  direct and the key-mode proxies at a fixed moderate rate (oha -q $RATE): added p99
#   idle  RSS while $IDLE_CONNS TLS keep-alive connections sit idle (scoregate vs nginx)
# then `report.py compare` (table, targets) and `report.py chart` (PNG).
# Everything listens on 127.0.0.1 only; run.sh starts every process in its own process group
# and stops it by PID/group (also on errors and Ctrl-C); each mode has a hard time limit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

SET_KNOBS=""
for v in QUICK MODES REPS DUR QUIET_WAIT RATE RATE_DUR RATE_REPS IDLE_CONNS IDLE_REPS BASE OUT \
  VENV CHART BUILD CERT_TYPE PNG; do
  if [ -n "${!v+x}" ]; then SET_KNOBS+="$v=$(printf '%q' "${!v}") "; fi
done
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${REPS:=1}" "${DUR:=2}" "${RATE_REPS:=1}" "${RATE_DUR:=6}" "${IDLE_REPS:=1}" "${IDLE_CONNS:=2000}"
else
  : "${REPS:=3}" "${DUR:=5}" "${RATE_REPS:=3}" "${RATE_DUR:=10}" "${IDLE_REPS:=2}" "${IDLE_CONNS:=10000}"
fi
: "${MODES:=main rate idle}"
: "${QUIET_WAIT:=60}"                   # per run: wait up to this long for a quiet second
: "${RATE:=2000}"                       # the rate mode's oha -q
: "${BASE:=$(mktemp -d /tmp/scoregate-compare.XXXXXX)}"
: "${OUT:=$BASE/results}"
: "${VENV:=/tmp/scoregate-loadtest-venv}"   # python venv with matplotlib, for the chart
: "${CHART:=1}"
: "${BUILD:=1}"
: "${BUILD_TIMEOUT:=1800}"
: "${PNG:=$OUT/compare.png}"
export QUIET_WAIT CERT_TYPE="${CERT_TYPE:-ec}"

T0=$(date +%s)
log() { printf '[%s +%4ss] compare: %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for m in $MODES; do case "$m" in main | rate | idle) ;; *) die "unknown mode '$m' (main rate idle)" ;; esac; done

CHILD=""
on_signal() {
  log "interrupted"
  # run.sh runs in the background (so this trap fires at once); it stops its own processes on TERM
  if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
  exit 130
}
trap on_signal INT TERM

# ---------------------------------------------------------------- tools
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  # Debian's packages; their services are never used (the harness runs the binaries itself).
  log "installing ${need_pkgs[*]} (apt-get)"
  if ! as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${need_pkgs[@]}" >&2; then
    as_root timeout 600 apt-get update -q >&2 || true
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${need_pkgs[@]}" >&2 \
      || die "could not install ${need_pkgs[*]}; install them (apt-get install -y nginx-light haproxy) and rerun"
  fi
fi
haproxy -vv 2>/dev/null | grep -q 'OpenSSL' || die "haproxy has no OpenSSL support (TLS and jwt_verify need it)"
for b in python3 openssl curl ss; do command -v "$b" >/dev/null || die "$b not found"; done
if [ "$CHART" = 1 ]; then
  if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "creating $VENV with matplotlib (pip) for the chart"
    { python3 -m venv "$VENV" && timeout 600 "$VENV/bin/pip" install -q matplotlib >&2; } \
      || { log "warning: could not install matplotlib; no chart (CHART=0 skips this step)"; CHART=0; }
  fi
fi
if [ "$BUILD" = 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release >&2) || die "release build failed"
fi

# ---------------------------------------------------------------- the three modes
mkdir -p "$OUT" || die "cannot create $OUT"
{
  echo "date: $(date -Is)"
  echo "command: $SET_KNOBS$0 $*"
  echo "modes: $MODES; REPS=$REPS DUR=${DUR}s; rate: RATE=$RATE/s RATE_REPS=$RATE_REPS RATE_DUR=${RATE_DUR}s; idle: IDLE_CONNS=$IDLE_CONNS IDLE_REPS=$IDLE_REPS; QUIET_WAIT=${QUIET_WAIT}s"
} > "$OUT/compare-env.txt"
log "results -> $OUT"
run_mode() {       # mode -> runs run.sh for it (in the background, so signals reach this script)
  local m=$1 rc=0
  local -a env=(BUILD=0 "CONFIGS_FILE=$HERE/compare/$m.txt" "RUN=$BASE/run-$m" "OUT=$OUT/$m" ONLY=)
  case "$m" in
    main) env+=("REPS=$REPS" "DUR=$DUR" RATE=0) ;;
    rate) env+=("REPS=$RATE_REPS" "DUR=$RATE_DUR" "RATE=$RATE") ;;
    idle) env+=("REPS=$IDLE_REPS" "IDLE_CONNS=$IDLE_CONNS" RATE=0) ;;
  esac
  log "mode $m: ${env[*]} loadtest/run.sh"
  env "${env[@]}" "$HERE/run.sh" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  [ "$rc" = 0 ] || log "warning: mode $m ended with status $rc (see $OUT/$m)"
}
for m in $MODES; do run_mode "$m"; done

# ---------------------------------------------------------------- report
python3 "$HERE/report.py" compare "$OUT" > "$OUT/compare.md" || die "report.py compare failed"
if [ "$CHART" = 1 ] && [ -s "$OUT/main/runs.csv" ]; then
  "$VENV/bin/python" "$HERE/report.py" chart "$OUT" "$PNG" || log "warning: chart failed"
  [ -s "$PNG" ] && log "chart: $PNG ($(( $(stat -c %s "$PNG") / 1024 )) KiB)"
fi
cat "$OUT/compare.md"
log "done in $(( $(date +%s) - T0 ))s; results in $OUT (compare.md, compare.png, main/ rate/ idle/)"
