#!/usr/bin/env bash
# A realistic mix (BENCHMARKS.md "A realistic mix", issue #32): a fresh,
# migrated database loaded with `chat-bench mix-fill`'s population (USERS
# users, default 10,000), the server started on it (INSTANCES of them, 1
# or 2; two share PostgreSQL and a private redis-server), then
# `chat-bench mix` at RATE messages/s for DURATION seconds. The server
# runs with its default limits: the model's users are ordinary users.
#
#   cargo build --release -p chat-server -p chat-bench
#   scripts/population-bench.sh [sqlite|postgres]     (default: postgres)
#
# Settings (env): USERS=10000 RATE=100 DURATION=30 INSTANCES=1 SEED=1;
# EXTRA="…" more arguments for chat-bench mix; SERVER_ENV="K=V …" more
# settings for the server(s). Several instances get WORKERS=cores/INSTANCES
# each. Prints chat-bench's summary and JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
SETUP=${1:-postgres}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SERVER=$(realpath "${SERVER:-target/release/chat-server}")
BENCH=$(realpath "${BENCH:-target/release/chat-bench}")
USERS=${USERS:-10000}
RATE=${RATE:-100}
DURATION=${DURATION:-30}
INSTANCES=${INSTANCES:-1}
SEED=${SEED:-1}
if [ "$INSTANCES" -gt 1 ] && [ "$SETUP" = sqlite ]; then
  echo "several instances share PostgreSQL (SQLite is one instance's file)" >&2
  exit 2
fi
work=$(mktemp -d)
db=bench_population_$$
pids=()
redis_pid=
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # The instances first: Redis gone under a stopping instance is a
  # warning in its log ("redis bridge down") that says nothing here.
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$SETUP" = postgres ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

server_env=(SECRET_KEY=bench-secret-key-of-at-least-32-bytes RUST_LOG=warn
  MAX_SOCKETS_PER_ADDRESS=100000 ATTACHMENTS_DIR="$work/attachments" ATTACHMENTS_SHARED=1)
if [ "$SETUP" = postgres ]; then
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  server_env+=("DATABASE_URL=$PG/$db")
else
  server_env+=("DB_NAME=$work/chat.db")
fi
redis_args=() database_args=()
# PostgreSQL on this machine: its processes' CPU per message.
if [ "$SETUP" = postgres ]; then database_args=(--database-process postgres); fi
if [ "$INSTANCES" -gt 1 ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  server_env+=("REDIS_URL=redis://127.0.0.1:$redis_port/")
  redis_args=(--redis "redis://127.0.0.1:$redis_port/")
fi
# Instances on this one machine share its cores: one HTTP worker per core
# in all, as a host running several would be set up (each instance's
# default is one per core, INSTANCES workers on every core; BENCHMARKS.md
# "Workers per instance"). SERVER_ENV="WORKERS=…" overrides it.
if [ "$INSTANCES" -gt 1 ]; then
  workers=$(($(nproc) / INSTANCES))
  server_env+=("WORKERS=$((workers > 0 ? workers : 1))")
fi
# shellcheck disable=SC2206
server_env+=(${SERVER_ENV:-})

env "${server_env[@]}" "$SERVER" migrate >/dev/null
echo "loading $USERS users…" >&2
if [ "$SETUP" = postgres ]; then
  "$BENCH" mix-fill --users "$USERS" --seed "$SEED" --dialect postgres | psql -q -v ON_ERROR_STOP=1 "$PG/$db" >/dev/null
  # Statistics and visibility for the bulk load now, as a database in
  # service has them, not from autovacuum in the middle of the run.
  psql -q "$PG/$db" -c "VACUUM ANALYZE"
else
  "$BENCH" mix-fill --users "$USERS" --seed "$SEED" --dialect sqlite | sqlite3 -bail "$work/chat.db" >/dev/null
fi

urls=() pid_args=()
for i in $(seq 1 "$INSTANCES"); do
  port=$(free_port)
  env "${server_env[@]}" PORT="$port" "$SERVER" &
  pids+=($!)
  pid_args+=(--server-pid "$!")
  urls+=(--url "http://127.0.0.1:$port")
  for _ in $(seq 1 400); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.05
  done
done

# shellcheck disable=SC2086
"$BENCH" mix "${urls[@]}" --users "$USERS" --seed "$SEED" --rate "$RATE" --duration "$DURATION" \
  "${pid_args[@]}" "${redis_args[@]}" "${database_args[@]}" ${EXTRA:-}
