#!/usr/bin/env bash
# The tests, on a fresh machine: install what they start (PostgreSQL 15, redis-server, the
# S3-compatible moto_server, openssl and curl), then run them. Run as root: the tests start
# their PostgreSQL clusters as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
command -v moto_server >/dev/null || pip install -q 'moto[server]'
if command -v pyenv >/dev/null; then pyenv rehash; fi
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
cargo test --workspace "$@"
