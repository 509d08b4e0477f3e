#!/usr/bin/env bash
# Makes a development CA and a server certificate for localhost, 127.0.0.1 and ::1.
# DEVELOPMENT ONLY: the CA key sits next to the certificates, unprotected.
#
#   certs/gen-dev-certs.sh                 # EC P-256 into certs/ (next to this script)
#   certs/gen-dev-certs.sh --rsa /tmp/c    # RSA-2048 into /tmp/c
#   certs/gen-dev-certs.sh --force         # throw away what exists and start again
#
# Files (in OUTDIR):
#   ca.key      CA private key (0600)          ca.crt      CA certificate (trust this in clients)
#   server.key  server private key (0600)      server.crt  server certificate, signed by the CA
#
# Idempotent: a CA that matches its key and stays valid for DAYS_LEFT more days is kept (whatever
# its key type, so a CA you already trust survives a switch to --rsa); so is a server certificate
# that also has the requested key type, the expected names and a valid signature by that CA.
# Anything else is regenerated. Knobs (environment): CA_DAYS (3650), SERVER_DAYS (825),
# DAYS_LEFT (30), CN (localhost).
set -euo pipefail

usage() {
  sed -n '2,17s/^# \{0,1\}//p' "$0"
}

KEY_TYPE=ec
FORCE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ec) KEY_TYPE=ec ;;
    --rsa) KEY_TYPE=rsa ;;
    --force) FORCE=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gen-dev-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      [ -z "$OUT" ] || { echo "gen-dev-certs.sh: only one output directory" >&2; exit 2; }
      OUT=$1 ;;
  esac
  shift
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT=${OUT:-$HERE}
CA_DAYS=${CA_DAYS:-3650}
SERVER_DAYS=${SERVER_DAYS:-825}   # the longest validity common TLS clients accept for a leaf
DAYS_LEFT=${DAYS_LEFT:-30}
CN=${CN:-localhost}
SAN="DNS:localhost,IP:127.0.0.1,IP:::1"

command -v openssl >/dev/null || { echo "gen-dev-certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ helpers
new_key() {        # path: a fresh private key of $KEY_TYPE in PKCS#8 PEM, mode 0600 from creation
  local tmp="$WORK/new.key"
  ( umask 077
    if [ "$KEY_TYPE" = rsa ]; then
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp" 2>/dev/null
    else
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp" 2>/dev/null
    fi )
  mv -f "$tmp" "$1"
  chmod 600 "$1"
}
key_type_of() {    # cert -> ec | rsa | other
  case "$(openssl x509 -in "$1" -noout -text 2>/dev/null | awk -F': ' '/Public Key Algorithm/ {print $2; exit}')" in
    id-ecPublicKey) echo ec ;;
    rsaEncryption) echo rsa ;;
    *) echo other ;;
  esac
}
pair_matches() {   # cert key -> 0 when the key belongs to the certificate
  local a b
  a=$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null | openssl dgst -sha256) || return 1
  b=$(openssl pkey -in "$2" -pubout -outform DER 2>/dev/null | openssl dgst -sha256) || return 1
  [ -n "$a" ] && [ "$a" = "$b" ]
}
still_valid() {    # cert -> 0 when it does not expire within DAYS_LEFT days
  openssl x509 -in "$1" -noout -checkend $((DAYS_LEFT * 86400)) >/dev/null 2>&1
}
usable() {         # cert key [type] -> 0 when both exist, match, stay valid (and are of type)
  [ -s "$1" ] && [ -s "$2" ] && pair_matches "$1" "$2" && still_valid "$1" \
    && { [ -z "${3:-}" ] || [ "$(key_type_of "$1")" = "$3" ]; }
}
has_names() {      # cert -> 0 when its SAN covers localhost, 127.0.0.1 and ::1
  local san
  san=$(openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null) || return 1
  grep -q 'DNS:localhost' <<<"$san" && grep -q 'IP Address:127.0.0.1' <<<"$san" \
    && grep -q 'IP Address:0:0:0:0:0:0:0:1' <<<"$san"
}
describe() {       # cert -> one line: subject, key, expiry, SHA-256 fingerprint
  local subj end fp
  subj=$(openssl x509 -in "$1" -noout -subject -nameopt oneline | sed 's/^subject= *//')
  end=$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)
  fp=$(openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2)
  printf '  %-22s %s, %s, expires %s\n  %-22s sha256 %s\n' "$(basename "$1")" "$subj" \
    "$(key_type_of "$1")" "$end" "" "$fp"
}

# ------------------------------------------------------------------ CA
CA_KEY="$OUT/ca.key"; CA_CRT="$OUT/ca.crt"
SRV_KEY="$OUT/server.key"; SRV_CRT="$OUT/server.crt"
made=()
if [ "$FORCE" = 1 ] || ! usable "$CA_CRT" "$CA_KEY"; then
  new_key "$CA_KEY"
  cat > "$WORK/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = scoregate development CA
O = scoregate (development only)
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -key "$CA_KEY" -sha256 -days "$CA_DAYS" -config "$WORK/ca.cnf" \
    -out "$WORK/ca.crt" 2>/dev/null
  mv -f "$WORK/ca.crt" "$CA_CRT"; chmod 644 "$CA_CRT"
  made+=("ca.key" "ca.crt")
  FORCE_SERVER=1      # a new CA invalidates any server certificate signed by the old one
else
  FORCE_SERVER=$FORCE
fi

# ------------------------------------------------------------------ server certificate
if [ "$FORCE_SERVER" = 1 ] || ! usable "$SRV_CRT" "$SRV_KEY" "$KEY_TYPE" || ! has_names "$SRV_CRT" \
  || ! openssl verify -CAfile "$CA_CRT" "$SRV_CRT" >/dev/null 2>&1; then
  new_key "$SRV_KEY"
  usage_bits="digitalSignature"
  [ "$KEY_TYPE" = rsa ] && usage_bits="digitalSignature, keyEncipherment"
  cat > "$WORK/server.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $CN
O = scoregate (development only)
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, $usage_bits
extendedKeyUsage = serverAuth
subjectAltName = $SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
  openssl req -new -key "$SRV_KEY" -config "$WORK/server.cnf" -out "$WORK/server.csr" 2>/dev/null
  # A random serial instead of a ca.srl file: nothing extra is left in OUT.
  openssl x509 -req -in "$WORK/server.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$SERVER_DAYS" \
    -extfile "$WORK/server.cnf" -extensions v3_server -out "$WORK/server.crt" 2>/dev/null
  openssl verify -CAfile "$CA_CRT" "$WORK/server.crt" >/dev/null
  mv -f "$WORK/server.crt" "$SRV_CRT"; chmod 644 "$SRV_CRT"
  made+=("server.key" "server.crt")
fi
chmod 600 "$CA_KEY" "$SRV_KEY"   # also tightens keys left by an older run

# ------------------------------------------------------------------ report
if [ ${#made[@]} -eq 0 ]; then
  echo "gen-dev-certs: $OUT is up to date ($KEY_TYPE); nothing made"
else
  echo "gen-dev-certs: made ${made[*]} in $OUT ($KEY_TYPE)"
fi
describe "$CA_CRT"
describe "$SRV_CRT"
echo "  names: $SAN"
echo "  use:   [server.tls] cert = \"$SRV_CRT\", key = \"$SRV_KEY\"; clients trust $CA_CRT"
