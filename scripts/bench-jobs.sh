#!/usr/bin/env bash
# `rdm bench jobs` with what it compares against: Celery on the local Redis,
# the seed backend's job runner (celery and redis in a venv under .tools).
# PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 must run (they
# do on this machine; ../shared/services.md says how to start them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .tools/celery/bin/python ]; then
  python3 -m venv .tools/celery
  .tools/celery/bin/pip install --quiet 'celery[redis]>=5.4,<6'
fi
# The harness's snmpd (tests/src/snmpd.rs): one quick test starts it when none answers.
cargo nextest run -p rdm-tests --test snmp walks_stream_over_grpc >/dev/null
cargo build --release --bin rdm --quiet
CELERY_PYTHON=.tools/celery/bin/python target/release/rdm bench jobs "$@"
