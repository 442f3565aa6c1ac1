#!/usr/bin/env bash
# The whole test suite on this machine or a fresh Debian one:
#   1. checks for (and, saying so, installs with apt/pip/npm) what the tests need;
#   2. starts PostgreSQL (127.0.0.1:5432, trust for loopback) and Redis (127.0.0.1:6379) if down;
#   3. runs cargo fmt --check, clippy with warnings as errors, and every test in the workspace
#      (unit tests, tokio-postgres/wire/SCRAM-upstream tests, psql, psycopg, asyncpg, pgJDBC and
#      node-postgres through a real pgstepup, step-up approvals with a software passkey and in
#      headless Chromium, and two instances sharing a real Redis), after checking deploy/ with
#      real validators (deploy/validate.py) and running the Compose topology as processes, and
#      the load harness's own unit tests (benches/load/test_*.py).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
need_cmd psql postgresql-client
need_cmd pg_ctlcluster postgresql
need_cmd redis-server redis-server
need_cmd openssl openssl
need_cmd javac default-jdk-headless   # single-file source launch needs the compiler
need_cmd node nodejs
need_cmd npm npm
need_cmd python3 python3
need_cmd chromium chromium
need_cmd haproxy haproxy             # the load balancer of the topology test; haproxy -c on deploy/
need_cmd promtool prometheus         # promtool checks deploy/prometheus and the dashboard's PromQL
need_cmd systemd-analyze systemd     # verifies deploy/systemd/pgstepup.service
[ -f /usr/share/java/postgresql.jar ] || apt_missing+=(libpostgresql-jdbc-java)
if [ ${#apt_missing[@]} -gt 0 ]; then
  say "installing with apt: ${apt_missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
fi

if ! python3 -c 'import psycopg' 2>/dev/null; then
  say "installing with pip: psycopg[binary] (psycopg 3)"
  python3 -m pip install --quiet 'psycopg[binary]'
fi
if ! python3 -c 'import asyncpg' 2>/dev/null; then
  say "installing with pip: asyncpg"
  python3 -m pip install --quiet 'asyncpg>=0.30'
fi
if ! python3 -c 'import kubernetes_validate, check_jsonschema, dockerfile, yaml, jsonschema' 2>/dev/null; then
  say "installing with pip: kubernetes-validate, check-jsonschema, dockerfile, PyYAML, jsonschema (deploy/validate.py)"
  python3 -m pip install --quiet kubernetes-validate check-jsonschema dockerfile PyYAML jsonschema
fi
if [ ! -d proto-tests/clients/node/node_modules/pg ]; then
  say "installing with npm: pg, pg-copy-streams (proto-tests/clients/node, from package-lock.json)"
  (cd proto-tests/clients/node && npm ci --silent --no-audit --no-fund)
fi
if [ ! -d proto-tests/browser/node_modules/playwright-core ]; then
  say "installing with npm: playwright-core (proto-tests/browser, from package-lock.json)"
  (cd proto-tests/browser && npm ci --silent --no-audit --no-fund)
fi

say "PostgreSQL on 127.0.0.1:5432"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  hba=$(as_root find /etc/postgresql -name pg_hba.conf | sort -V | tail -1)
  echo "the tests log in as postgres over loopback without a password: adding 'host all postgres 127.0.0.1/32 trust' to $hba"
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main reload
  sleep 1
fi
psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select version()'

say "Redis on 127.0.0.1:6379"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "validate deploy/ (promtool, haproxy -c, systemd-analyze, kubernetes-validate, compose-spec)"
python3 deploy/validate.py
say "unit tests of the load harness's statistics (benches/load/test_*.py)"
python3 -m unittest discover -s benches/load -p 'test_*.py'
say "cargo test"
cargo test --workspace --quiet
say "all tests passed"
