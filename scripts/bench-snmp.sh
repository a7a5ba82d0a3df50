#!/usr/bin/env bash
# rdm bench snmp with everything it compares against: the test agent
# (started by the SNMP tests' harness if it is not running), net-snmp's
# tools, and pysnmp in a venv of its own. Prints the figures README quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v snmpbulkwalk >/dev/null || [ ! -x /usr/sbin/snmpd ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmpd snmp >/dev/null
fi
if [ ! -x .tools/pysnmp/bin/python ]; then
  python3 -m venv .tools/pysnmp
  .tools/pysnmp/bin/pip install --quiet 'pysnmp>=7,<8'
fi
# The harness's snmpd (tests/src/snmpd.rs): one quick test starts it when none answers.
cargo nextest run -p rdm-tests --test snmp walks_stream_over_grpc >/dev/null
cargo build --release --bin rdm --quiet
PYSNMP_PYTHON=.tools/pysnmp/bin/python target/release/rdm bench snmp "$@"
