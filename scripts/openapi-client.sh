#!/usr/bin/env bash
# The REST surface through a client someone else's tool generates: starts
# `rdm up --demo` (every port 0), generates a Python client from its
# /openapi.json with openapi-python-client, and runs
# scripts/openapi_client_check.py with it. Called by ./test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.tools/venv
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
RDM_LOG=warn RDM_ADMIN_PASSWORD=client-check-admin target/debug/rdm up --demo \
  --listen 127.0.0.1:0 --inventory-listen 127.0.0.1:0 --snmp-trap-listen 127.0.0.1:0 \
  --data-dir "$work/data" > "$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^rdm is up' "$work/out" 2>/dev/null && break
  sleep 0.2
done
base=$(sed -n 's/^rdm is up: gateway \(http:\/\/[^ ]*\).*/\1/p' "$work/out")
[ -n "$base" ] || { cat "$work/out"; echo "rdm up did not start"; exit 1; }
curl -sf "$base/openapi.json" > "$work/openapi.json"
(cd "$work" && "$OLDPWD/$venv/bin/openapi-python-client" generate --path openapi.json --meta none >/dev/null 2>&1) \
  || { echo "openapi-python-client could not generate a client"; exit 1; }
PYTHONPATH="$work" "$venv/bin/python" scripts/openapi_client_check.py "$base"
