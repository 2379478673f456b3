#!/usr/bin/env bash
# The same chat-bench runs against one or more builds of chat-server, each in
# turn on the same machine (BENCHMARKS.md "Conversation log"): one instance
# on SQLite, one on PostgreSQL, two on PostgreSQL + Redis; in each, full
# throughput (100 pairs, window 32) and latency at 1,000 msg/s.
#
#   cargo build --release --workspace
#   scripts/log-bench.sh NAME=path/to/chat-server [NAME=path/to/chat-server ...]
#
# Prints one line per run: build, setup, mode, then chat-bench's JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
DURATION=${DURATION:-10}
LOAD=${LOAD:-target/release/chat-bench}
[ "$#" -gt 0 ] || { echo "usage: $0 NAME=path/to/chat-server ..." >&2; exit 2; }
work=$(mktemp -d)
pids=()
dbs=()
cleanup() {
  for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  sleep 1
  for db in "${dbs[@]:-}"; do
    [ -n "$db" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

common_env=(RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 REGISTRATION_BURST=100000 FANOUT_PER_SECOND=10000000
  SECRET_KEY=bench-secret-key-of-at-least-32-bytes RUST_LOG=warn)

wait_ready() {
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "the server on $1 did not become ready" >&2
  return 1
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

measure() { # measure BUILD SETUP URL...: the two runs against running servers
  local build=$1 setup=$2
  shift 2
  local urls=()
  for url in "$@"; do urls+=(--url "$url"); done
  for mode in "throughput:--window 32" "rate1000:--rate 1000 --window 64"; do
    local name=${mode%%:*} args=${mode#*:}
    # shellcheck disable=SC2086
    line=$("$LOAD" load "${urls[@]}" --pairs 100 --duration "$DURATION" $args 2>/dev/null | tail -n 1)
    echo "$build $setup $name $line"
  done
}

for spec in "$@"; do
  build=${spec%%=*}
  bin=$(realpath "${spec#*=}")

  dir="$work/$build-sqlite"
  mkdir -p "$dir"
  port=$(free_port)
  (cd "$dir" && exec env "${common_env[@]}" PORT="$port" "$bin") &
  pids+=($!)
  wait_ready "$port"
  measure "$build" sqlite-1 "http://127.0.0.1:$port"
  stop_all

  db=bench_log_${build//[^a-z0-9]/_}_$$
  dbs+=("$db")
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  port=$(free_port)
  env "${common_env[@]}" DATABASE_URL="$PG/$db" PORT="$port" "$bin" &
  pids+=($!)
  wait_ready "$port"
  measure "$build" postgres-1 "http://127.0.0.1:$port"
  stop_all

  db=bench_log2_${build//[^a-z0-9]/_}_$$
  dbs+=("$db")
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  read -r first second <<<"$(free_ports 2)"
  for port in "$first" "$second"; do
    env "${common_env[@]}" DATABASE_URL="$PG/$db" REDIS_URL="$REDIS" REDIS_PREFIX="$db" \
      ATTACHMENTS_DIR="$work/$db-attachments" ATTACHMENTS_SHARED=1 WORKERS=1 PORT="$port" "$bin" &
    pids+=($!)
  done
  wait_ready "$first"
  wait_ready "$second"
  measure "$build" postgres+redis-2 "http://127.0.0.1:$first" "http://127.0.0.1:$second"
  stop_all
done
