#!/usr/bin/env bash
# Generates the placeholder secrets the kustomizations read, so every overlay renders and can be
# tried in a test cluster. Nothing here is committed: secrets/ directories are git-ignored.
#
#   deploy/kubernetes/gen-secrets.sh [--force] [--namespace NS]
#
# Writes (mode 0600, existing files are kept unless --force):
#   base/secrets/tls.crt, tls.key    a self-signed EC P-256 certificate for the scoring Service
#                                    (scoring, scoring.NS.svc, scoring.NS.svc.cluster.local)
#   base/secrets/keys.json           a primary and a secondary scoring key (256 bits each)
#   base/secrets/admin.token         the management API's bootstrap credential (256 bits)
#   overlays/fleet/secrets/seal.key  32 random bytes, base64: seals what fleet mode keeps in etcd
#
# For production, replace the certificate with one from your CA (README: cert-manager) and keep
# the keys, credential and seal key in your secret manager. Needs openssl, base64, head.
set -euo pipefail
cd "$(dirname "$0")"

force=0
namespace=scoring
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --namespace) namespace="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done
umask 077

# 32 random bytes as URL-safe base64 without padding (43 characters).
random_token() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }

# Writes stdin to $1 unless it exists (or --force): a re-run keeps what a cluster already uses.
write() {
  if [ -e "$1" ] && [ "$force" = 0 ]; then
    cat > /dev/null
    echo "kept      $1"
  else
    cat > "$1.tmp" && mv "$1.tmp" "$1"
    echo "generated $1"
  fi
}

mkdir -p base/secrets overlays/fleet/secrets

if [ "$force" = 1 ] || [ ! -e base/secrets/tls.key ] || [ ! -e base/secrets/tls.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
    -subj "/CN=scoring.${namespace}.svc" \
    -addext "subjectAltName=DNS:scoring,DNS:scoring.${namespace}.svc,DNS:scoring.${namespace}.svc.cluster.local,DNS:localhost" \
    -keyout base/secrets/tls.key.tmp -out base/secrets/tls.crt.tmp 2> /dev/null
  mv base/secrets/tls.key.tmp base/secrets/tls.key
  mv base/secrets/tls.crt.tmp base/secrets/tls.crt
  echo "generated base/secrets/tls.crt, base/secrets/tls.key"
else
  echo "kept      base/secrets/tls.crt, base/secrets/tls.key"
fi
printf '{"primaryKey": "%s", "secondaryKey": "%s"}\n' "$(random_token)" "$(random_token)" \
  | write base/secrets/keys.json
random_token | write base/secrets/admin.token
head -c 32 /dev/urandom | base64 | write overlays/fleet/secrets/seal.key
