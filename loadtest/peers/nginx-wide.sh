#!/usr/bin/env bash
# anchors-bench's nginx launcher with room for many connections: the same config, but
# worker_connections raised from 8192 to $NGINX_WORKER_CONNECTIONS (default 16384), so the
# idle-connection rows (10,000 client connections plus upstream ones) fit in one worker.
#   Usage: nginx-wide.sh <auth:none|key> <log:0|1> <workers>   (as $ANCHORS/peers/nginx.sh)
# Needs env from run.sh: ANCHORS RUN PEER_NAME PORT UP CERT CERTKEY KEY1 KEY2.
set -euo pipefail
wc=${NGINX_WORKER_CONNECTIONS:-16384}
d="$RUN/nginx-wide"
mkdir -p "$d/conf"
sed "s/worker_connections 8192;/worker_connections $wc;/" "$ANCHORS/conf/nginx.conf" > "$d/conf/nginx.conf"
grep -q "worker_connections $wc;" "$d/conf/nginx.conf" \
  || { echo "nginx-wide.sh: could not raise worker_connections in $ANCHORS/conf/nginx.conf" >&2; exit 2; }
HERE=$d exec "$ANCHORS/peers/nginx.sh" "$@"
