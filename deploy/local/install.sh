#!/usr/bin/env bash
# Installs what the local stack needs, once; every download and build is cached under var/.
# Idempotent: a second run only checks stamps and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VAR=${TASKBUS_CACHE:-$ROOT/var}
KAFKA_POM=deploy/local/kafka/pom.xml
FERRETDB_VERSION=v1.24.2
mkdir -p "$VAR/bin" "$VAR/log"

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "install: '$1' is required ($2)" >&2; exit 1; }; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Python environment (uv, one lock file).
if ! command -v uv >/dev/null 2>&1; then
  say "uv: installing from PyPI"
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
export UV_CACHE_DIR="$VAR/uv-cache"
# Precompiled bytecode: some machines set PYTHONDONTWRITEBYTECODE, and every service process
# would otherwise compile its imports from source at start (seconds of CPU each).
uv sync --frozen --quiet --compile-bytecode

# Redis from Debian's package.
if ! command -v redis-server >/dev/null 2>&1; then
  say "redis-server: installing Debian's package"
  as_root apt-get install -y -q redis-server >"$VAR/log/install-redis.log" 2>&1 || {
    as_root apt-get update -q >>"$VAR/log/install-redis.log" 2>&1
    as_root apt-get install -y -q redis-server >>"$VAR/log/install-redis.log" 2>&1
  }
  # Debian starts a system redis on 6379; the stack runs its own, so stop that one.
  as_root systemctl disable --now redis-server >/dev/null 2>&1 || as_root service redis-server stop >/dev/null 2>&1 || true
fi

# wrk from Debian's package: the overload fault test's load generator (C, so the client does not
# take the CPU the service under test needs).
if ! command -v wrk >/dev/null 2>&1; then
  say "wrk: installing Debian's package"
  as_root apt-get install -y -q wrk >"$VAR/log/install-wrk.log" 2>&1 || {
    as_root apt-get update -q >>"$VAR/log/install-wrk.log" 2>&1
    as_root apt-get install -y -q wrk >>"$VAR/log/install-wrk.log" 2>&1
  }
fi

# promtool and amtool from Debian's prometheus and prometheus-alertmanager packages: the unit
# tests check and run the alerting rules and the Alertmanager routing with them. Debian starts
# both daemons (and a node exporter) on install; the stack runs none of them, so stop them.
if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
  say "promtool, amtool: installing Debian's prometheus and prometheus-alertmanager packages"
  as_root apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager \
    >"$VAR/log/install-prometheus.log" 2>&1 || {
    as_root apt-get update -q >>"$VAR/log/install-prometheus.log" 2>&1
    as_root apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager \
      >>"$VAR/log/install-prometheus.log" 2>&1
  }
  for unit in prometheus prometheus-alertmanager; do
    as_root systemctl disable --now "$unit" >/dev/null 2>&1 || as_root service "$unit" stop >/dev/null 2>&1 || true
  done
fi

# Apache Kafka: broker jars and runtime dependencies from Maven Central.
kafka_stamp="$VAR/kafka/libs/.pom-$(sha256sum "$KAFKA_POM" | cut -c1-16)"
if [ ! -f "$kafka_stamp" ]; then
  need mvn "Maven fetches Kafka's jars"; need java "Kafka runs on Java 17"
  say "kafka: fetching jars with Maven (first time only)"
  rm -rf "$VAR/kafka/libs"
  mvn -q -B -f "$KAFKA_POM" -Dmaven.repo.local="$VAR/m2" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$VAR/kafka/libs" >"$VAR/log/install-kafka.log" 2>&1 \
    || { echo "install: Maven could not fetch Kafka; see $VAR/log/install-kafka.log" >&2; exit 1; }
  touch "$kafka_stamp"
fi

# FerretDB, built with Go from the module proxy with deploy/local/ferretdb/*.patch applied (the
# SQLite backend's lookups by _id use the _id index: see the patch). The stamp names the version
# and the patches' hash, so a changed patch rebuilds.
if [ "$(cat "$VAR/bin/ferretdb.stamp" 2>/dev/null)" != "$(deploy/local/ferretdb/build.sh stamp "$FERRETDB_VERSION")" ]; then
  need go "FerretDB is built from source"; need patch "FerretDB is patched before the build"
  say "ferretdb: building $FERRETDB_VERSION with Go and deploy/local/ferretdb/*.patch (a few minutes the first time)"
  TASKBUS_CACHE="$VAR" deploy/local/ferretdb/build.sh build "$FERRETDB_VERSION" "$VAR/bin/ferretdb" \
    >"$VAR/log/install-ferretdb.log" 2>&1 \
    || { echo "install: FerretDB build failed; see $VAR/log/install-ferretdb.log" >&2; exit 1; }
fi

# The Compose Specification's JSON schema (from compose-go, via the Go module proxy): lets the tests
# validate compose.yaml offline, since no Docker engine or compose plugin runs here.
COMPOSE_GO=github.com/compose-spec/compose-go/v2@v2.16.2
if [ ! -f "$VAR/schemas/compose-spec.json" ]; then
  need go "the compose schema comes from the Go module proxy"
  export GOMODCACHE="$VAR/go/mod" GOFLAGS=-modcacherw GOTOOLCHAIN=local
  dir=$(go mod download -json "$COMPOSE_GO" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$VAR/schemas" && cp "$dir/schema/compose-spec.json" "$VAR/schemas/compose-spec.json"
fi

# The AsyncAPI parser (npm, pinned by deploy/local/asyncapi/package-lock.json): the tests validate
# the AsyncAPI document common/asyncapi.py generates with it. Install scripts are not run.
ASYNCAPI_SRC=deploy/local/asyncapi
asyncapi_stamp="$VAR/asyncapi/.lock-$(sha256sum "$ASYNCAPI_SRC/package-lock.json" | cut -c1-16)"
if [ ! -f "$asyncapi_stamp" ]; then
  need npm "the AsyncAPI parser comes from the npm registry"
  say "asyncapi parser: installing with npm (first time only)"
  rm -rf "$VAR/asyncapi" && mkdir -p "$VAR/asyncapi"
  cp "$ASYNCAPI_SRC/package.json" "$ASYNCAPI_SRC/package-lock.json" "$VAR/asyncapi/"
  npm ci --prefix "$VAR/asyncapi" --ignore-scripts --no-audit --no-fund >"$VAR/log/install-asyncapi.log" 2>&1 \
    || { echo "install: npm could not install the AsyncAPI parser; see $VAR/log/install-asyncapi.log" >&2; exit 1; }
  touch "$asyncapi_stamp"
fi
