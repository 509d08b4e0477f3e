#!/usr/bin/env bash
# Issue 17 item 4: key-mode CPU per request with a telemetry exporter on (its receiver up) against
# request records to stdout only, interleaved round by round by loadtest/run.sh.
#
#   BUILD=0 REPS=5 loadtest/export_cost.sh      # then read $RUN/results/summary.md
#
# Rows: scoregate-key (records only), scoregate-key-otlp ([telemetry.otlp]) and
# scoregate-key-azure ([telemetry.azure_monitor]), all with records on. The receiver is one nginx
# worker on loopback that answers every POST with 200 (it reads and discards the body), started
# here and stopped by its PID when the run ends. Extra knobs go to run.sh as they are.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export RUN="${RUN:-$(mktemp -d /tmp/scoregate-export-cost.XXXXXX)}"
mkdir -p "$RUN"
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$RUN/receiver.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/receiver.pid;
error_log $RUN/receiver-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  server {
    listen 127.0.0.1:$RPORT;
    location / { return 200 '{"itemsReceived":0,"itemsAccepted":0,"errors":[]}'; }
  }
}
CONF
nginx -c "$RUN/receiver.conf" -p "$RUN" &
RECEIVER=$!
trap 'kill "$RECEIVER" 2>/dev/null || true; wait "$RECEIVER" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$RPORT/v1/traces" && break
  sleep 0.1
done
printf 'InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=http://127.0.0.1:%s/\n' \
  "$RPORT" > "$RUN/connection-string"
row() { printf '%s h1 key /api/v1/service/iris/score %s $HERE/peers/scoregate.sh key -\n' "$1" "$2"; }
EXTRA_CONFIGS="$(row scoregate-key '')
$(row scoregate-key-otlp "env SG_TELEMETRY_EXTRA='[telemetry.otlp]\\nendpoint = \"http://127.0.0.1:$RPORT\"'")
$(row scoregate-key-azure "env SG_TELEMETRY_EXTRA='[telemetry.azure_monitor]\\nconnection_string_file = \"$RUN/connection-string\"'")" \
ONLY='^scoregate-key' "$HERE/run.sh"
