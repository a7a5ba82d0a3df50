# Sourced by the scripts that test rdm from outside: starts `rdm up --demo`
# (every port 0, data in a temp dir removed on exit) and sets $work (the
# temp dir), $pid and $base (the gateway's http:// address).
# Needs RDM_ADMIN_PASSWORD set by the caller.
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
RDM_LOG=warn target/debug/rdm up --demo \
  --listen 127.0.0.1:0 --inventory-listen 127.0.0.1:0 --snmp-trap-listen 127.0.0.1:0 --usp-websocket-listen 127.0.0.1:0 --tr069-cwmp-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --data-dir "$work/data" --tr069-files-dir "$work/data/tr069-files" > "$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^rdm is up' "$work/out" 2>/dev/null && break
  sleep 0.2
done
base=$(sed -n 's/^rdm is up: gateway \(http:\/\/[^ ]*\).*/\1/p' "$work/out")
[ -n "$base" ] || { cat "$work/out"; echo "rdm up did not start"; exit 1; }
