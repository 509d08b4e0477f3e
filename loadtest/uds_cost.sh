#!/usr/bin/env bash
# Issue 18 item 1: CPU per request with the upstream over a Unix socket against TCP, scoregate
# and nginx side by side, in one interleaved loadtest/run.sh run (rows in alternating order).
#
#   BUILD=0 REPS=7 loadtest/uds_cost.sh      # then read $RUN/results/split.md
#
# Rows (from loadtest/compare/main.txt, the comparison's own work: TLS, key check with two keys,
# a record or access-log line per request, 1 worker each): scoregate-key and nginx-key-log reach
# the sample model over TCP, scoregate-key-uds and nginx-key-uds-log over its Unix socket. The
# split table gives each row's CPU per request in kernel and user space (from the proxy's
# utime/stime) and its ratio to nginx over the socket, round by round. Extra knobs go to run.sh
# as they are.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export RUN="${RUN:-$(mktemp -d /tmp/scoregate-uds-cost.XXXXXX)}"
export OUT="${OUT:-$RUN/results}"
CONFIGS_FILE="$HERE/compare/main.txt" \
  ONLY='^(scoregate-key|nginx-key-log|scoregate-key-uds|nginx-key-uds-log)$' "$HERE/run.sh"
python3 "$HERE/report.py" split "$OUT/runs.csv" nginx-key-uds-log | tee "$OUT/split.md"
