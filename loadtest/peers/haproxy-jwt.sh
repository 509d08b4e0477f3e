#!/usr/bin/env bash
# HAProxy JWT peer for loadtest/run.sh (config: haproxy-jwt.cfg).
#   Usage: haproxy-jwt.sh ALG [LOG] [THREADS]
#     ALG      ES256 | RS256: verified with the public half of the signing key run.sh generated
#              ($RUN/jwt/<alg>.pub), the key scoregate issues the load's token with
#     LOG      1 (default): one access-log line per request to $RUN/logs/access-$PEER_NAME.log
#     THREADS  nbthread (default 1)
# Needs env from run.sh: PORT UP PEM RUN HERE PEER_NAME.
set -euo pipefail
case "${1:-}" in ES256 | RS256) ;; *) echo "haproxy-jwt.sh: ALG must be ES256 or RS256" >&2; exit 2 ;; esac
export JWT_ALG=$1 LOG=${2:-1} THREADS=${3:-1}
export JWT_PUB="$RUN/jwt/${JWT_ALG,,}.pub" PORT UP PEM
[ -r "$JWT_PUB" ] || { echo "haproxy-jwt.sh: no public key $JWT_PUB" >&2; exit 2; }
if [ "$LOG" = 1 ]; then
  exec haproxy -db -f "$HERE/peers/haproxy-jwt.cfg" >> "$RUN/logs/access-${PEER_NAME:-haproxy}.log"
fi
exec haproxy -db -f "$HERE/peers/haproxy-jwt.cfg"
