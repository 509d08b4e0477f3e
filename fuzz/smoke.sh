#!/usr/bin/env bash
# A short fuzzing smoke for CI (.ci/run) and local use: builds the cargo-fuzz targets and runs
# each for FUZZ_SECONDS from its seed corpus (fuzz/corpus/<target>/seed-*). Exit 1 on any crash,
# panic, timeout or out-of-memory; the reproducer is left in fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh                          # SMOKE_TARGETS (default: jwt path), 30 s each
#   FUZZ_SECONDS=60 SMOKE_TARGETS="config redact" fuzz/smoke.sh
#   SMOKE_TARGETS=all fuzz/smoke.sh        # every target
#
# Needs `cargo +nightly` and `cargo fuzz` (cargo install cargo-fuzz --locked). The long runs behind
# docs/security.md ("Fuzzing") use the same build with -runs=10000000.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FUZZ_SECONDS:=30}"
: "${SMOKE_TARGETS:=jwt path}"
if [ "$SMOKE_TARGETS" = all ]; then
  SMOKE_TARGETS=$(cargo +nightly fuzz list)
fi
# -s none: the targets are safe Rust over #![forbid(unsafe_code)] code; without a sanitizer
# they run several times faster, and libFuzzer still catches panics, aborts, timeouts and OOMs.
# Debug assertions (overflow checks) stay on (cargo fuzz's default).
cargo +nightly fuzz build -s none
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for t in $SMOKE_TARGETS; do
  echo "== fuzz $t (${FUZZ_SECONDS} s)"
  rc=0
  cargo +nightly fuzz run -s none "$t" -- -max_total_time="$FUZZ_SECONDS" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 > "$LOG" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY)' "$LOG" || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$LOG"
    echo "fuzz target $t failed (exit $rc); the input is in fuzz/artifacts/$t/"
    exit 1
  fi
done
