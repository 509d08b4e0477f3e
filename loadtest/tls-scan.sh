#!/usr/bin/env bash
# TLS scan of the scoring listener (issue 15 item 14): starts a release `scoregate demo` (TLS with
# a throwaway P-256 certificate, the same rustls configuration `run` uses) on a free loopback
# port, runs testssl.sh against it, and lists every finding rated MEDIUM or worse. Exit 1 if there
# is one other than the demo certificate's own (it names no CRL or OCSP URI). testssl is given
# the demo's CA (--add-ca), as the demo's clients are. Summary in docs/security.md ("TLS scan").
#
#   loadtest/tls-scan.sh                  # full scan (several minutes)
#   BUILD=0 OUT=/tmp/scan loadtest/tls-scan.sh
#
# Needs testssl.sh (Debian: apt-get install -y testssl.sh). Stops only the demo it started.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
: "${BUILD:=1}"
: "${OUT:=$(mktemp -d /tmp/scoregate-tls-scan.XXXXXX)}"
: "${SCOREGATE:=${CARGO_TARGET_DIR:-$ROOT/target}/release/scoregate}"
: "${SCAN_TIMEOUT:=1800}"
TESTSSL=$(command -v testssl || command -v testssl.sh || true)
[ -n "$TESTSSL" ] || { echo "tls-scan.sh: testssl.sh not found (apt-get install -y testssl.sh)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --locked --bin scoregate); fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 20); do
  b=$(( 20000 + RANDOM % 12000 ))
  if ! port_open "$b" && ! port_open $((b + 1)); then PORT=$b; ADMIN=$((b + 1)); break; fi
done
[ -n "${PORT:-}" ] || { echo "tls-scan.sh: no free port" >&2; exit 1; }
mkdir -p "$OUT"
setsid "$SCOREGATE" demo --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
  --seconds "$SCAN_TIMEOUT" > "$OUT/demo.txt" 2>&1 < /dev/null &
DEMO=$!
trap 'kill -TERM -- "-$DEMO" 2>/dev/null || true; wait "$DEMO" 2>/dev/null || true' EXIT
for _ in $(seq 600); do port_open "$PORT" && break; sleep 0.05; done
port_open "$PORT" || { echo "tls-scan.sh: the demo did not start" >&2; cat "$OUT/demo.txt" >&2; exit 1; }
# The demo prints its CA's path (`curl --cacert <dir>/ca.pem`) once it has checked itself: testssl
# trusts that CA as the demo's clients do, so the chain of trust is judged, not the CA's absence
# from the system store.
for _ in $(seq 600); do grep -q -- '--cacert ' "$OUT/demo.txt" && break; sleep 0.05; done
CA=$(grep -o -- '--cacert [^ ]*' "$OUT/demo.txt" | head -n 1 | cut -d' ' -f2)
[ -s "$CA" ] || { echo "tls-scan.sh: the demo printed no CA path" >&2; cat "$OUT/demo.txt" >&2; exit 1; }
echo "scanning https://localhost:$PORT (testssl $("$TESTSSL" --version 2>/dev/null | grep -o '[0-9]\.[0-9.]*' | head -1))" >&2
# --ip: scan loopback only; the JSON holds every finding with its severity.
timeout "$SCAN_TIMEOUT" "$TESTSSL" --quiet --color 0 --warnings off --ip 127.0.0.1 --add-ca "$CA" \
  --jsonfile "$OUT/testssl.json" --logfile "$OUT/testssl.txt" "https://localhost:$PORT" > /dev/null 2>&1 || true
[ -s "$OUT/testssl.json" ] || { echo "tls-scan.sh: testssl produced no results" >&2; exit 1; }
python3 - "$OUT/testssl.json" <<'PY'
import collections, json, sys
findings = json.load(open(sys.argv[1]))
order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK", "DEBUG"]
count = collections.Counter(f.get("severity") for f in findings)
print("findings by severity:", ", ".join(f"{s} {count[s]}" for s in order if count[s]))
# A property of the demo's throwaway certificate, not of scoregate: it names no CRL or OCSP
# responder. `run` serves the operator's certificate, whose revocation URIs come from the CA that
# issued it (docs/security.md, "TLS scan").
DEMO_CERT = {
    ("cert_revocation", "Neither CRL nor OCSP URI provided"),
}
def demo_cert(f):
    return (f.get("id"), f.get("finding")) in DEMO_CERT
bad = [f for f in findings
       if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM") and not demo_cert(f)]
for f in findings:
    if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN"):
        note = "   (the demo certificate's, not scoregate's)" if demo_cert(f) else ""
        print(f"  {f['severity']:8} {f['id']}: {f['finding']}{note}")
for key in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cipher_order", "FS", "ALPN", "overall_grade"):
    for f in findings:
        if f.get("id") == key:
            print(f"  {f['severity']:8} {key}: {f['finding']}")
print("RESULT:", "FAIL" if bad else "PASS (no finding rated MEDIUM or worse but the demo certificate's)")
sys.exit(1 if bad else 0)
PY
