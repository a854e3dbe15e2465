#!/usr/bin/env bash
# A private CA and a server certificate for the broker (EC P-256, SAN = the given host names / IPs).
# Usage: ./make-certs.sh HOST [HOST...]   -> certs/ca.pem, certs/ca.key, certs/server.pem, certs/server.key
# Devices get certs/ca.pem as EDGELOOP_AGENT_MQTT_CA_FILE. Keep certs/ca.key offline.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 HOST [HOST...]" >&2; exit 2; }
out="${CERTS_DIR:-certs}"
mkdir -p "$out"
san=""
for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san+="IP:$host,"; else san+="DNS:$host,"; fi
done
san="${san%,}"
openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=edgeloop MQTT CA" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl ecparam -name prime256v1 -genkey -noout -out "$out/server.key"
openssl req -new -key "$out/server.key" -subj "/CN=$1" -out "$out/server.csr"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -days 825 \
    -sha256 -extfile "$out/server.ext" -out "$out/server.pem"
rm -f "$out/server.csr" "$out/server.ext"
chmod 600 "$out/ca.key" "$out/server.key"
echo "wrote $out/ca.pem $out/server.pem $out/server.key (CA key: $out/ca.key)"
