#!/usr/bin/env bash
# The SNMP benchmarks with everything they compare against, printed side by
# side: `rdm bench snmp` (a full walk of the test agent by rdm, net-snmp's
# snmpbulkwalk and pysnmp) and `rdm bench snmp-poll` (one Poll over AGENTS
# snmpsim agents). Sets up net-snmp, pysnmp and snmpsim (each venv under
# .tools) and stops the agents it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-1000}
FIRST_PORT=${FIRST_PORT:-30000}
# snmpsim is single-threaded Python: the agents are split over this many processes.
SIM_PROCESSES=${SIM_PROCESSES:-2}

if ! command -v snmpbulkwalk >/dev/null || [ ! -x /usr/sbin/snmpd ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmpd snmp >/dev/null
fi
venv() { # name, packages...
  local dir=.tools/$1
  shift
  if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet "$@"
  fi
}
venv pysnmp 'pysnmp>=7,<8'
# snmpsim needs pysmi, and cryptography for SNMPv3 privacy (without it every
# encrypted request is answered with a decryption error).
venv snmpsim 'snmpsim>=1.2,<2' 'pysmi>=1,<2' 'cryptography>=42'

# The harness's snmpd (tests/src/snmpd.rs): one quick test starts it when none answers.
cargo nextest run -p rdm-tests --test snmp walks_stream_over_grpc >/dev/null
cargo build --release --bin rdm --quiet

# The walk first: the snmpsim agents below would grow snmpd's tables (their
# sockets and processes) and compete for the two cores.
PYSNMP_PYTHON=.tools/pysnmp/bin/python target/release/rdm bench snmp

work=$(mktemp -d)
sims=()
cleanup() {
  [ ${#sims[@]} -eq 0 ] || kill "${sims[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# One engine per agent (its own engine id, as devices have), serving the
# same two variables; snmpsim picks the data file by v3 context name.
mkdir -p "$work/data"
printf '1.3.6.1.2.1.1.1.0|4|rdm bench agent\n1.3.6.1.2.1.1.3.0|67|12345\n' >"$work/data/public.snmprec"
for p in $(seq 0 $((SIM_PROCESSES - 1))); do
  for i in $(seq "$p" "$SIM_PROCESSES" $((AGENTS - 1))); do
    printf -- '--v3-engine-id=8000000005%016x\n--data-dir=%s/data\n--v3-user=simUser\n--v3-auth-key=simauth123\n--v3-auth-proto=SHA\n--v3-priv-key=simpriv123\n--v3-priv-proto=AES\n--agent-udpv4-endpoint=127.0.0.1:%d\n' \
      "$i" "$work" $((FIRST_PORT + i))
  done >"$work/agents-$p.args"
  # As root, snmpsim would drop to a user that cannot read this Python.
  SNMPSIM_ALLOW_ROOT=true .tools/snmpsim/bin/snmpsim-command-responder \
    --args-from-file="$work/agents-$p.args" --cache-dir="$work/cache-$p" \
    --logging-method=null &
  sims+=($!)
done

for port in $FIRST_PORT $((FIRST_PORT + AGENTS - 1)); do
  for _ in $(seq 300); do
    snmpget -v2c -c public -t 1 -r 0 "127.0.0.1:$port" 1.3.6.1.2.1.1.3.0 >/dev/null 2>&1 && break
    sleep 1
  done
done

target/release/rdm bench snmp-poll --agents "$AGENTS" --first-port "$FIRST_PORT"
