#!/usr/bin/env bash
# The realistic mix of PROTOCOL.md B8 (BENCHMARKS.md "Replies, edits,
# reactions"): on one instance, SQLite then PostgreSQL, 100 pairs at
# 1,000 msg/s alone, then the same with 500 reactions/s and 50 edits/s on
# top; after each run the newest history page (50 messages, with their
# reactions) is asked for 500 times. Each run on a fresh database.
#
#   cargo build --release --workspace
#   scripts/mix-bench.sh [ROUNDS]        (default 2: alone, mix, alone, mix)
#
# Prints one line per run: setup, mode, then chat-bench's JSON line, which
# includes the server's CPU time per delivered message. Settings (env):
#   SETUPS="sqlite postgres"   RATE=1000 (messages/s in total)   DURATION=10
#   HISTORY=500 (history pages timed after each run; 0: none)
#   ALONE_ONLY=1: the runs without changes only (CPU per message, p99 at a rate)
#   CLIENT_IDS=1: every message with a client_id, as the web client sends them
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
DURATION=${DURATION:-10}
RATE=${RATE:-1000}
HISTORY=${HISTORY:-500}
SETUPS=${SETUPS:-sqlite postgres}
modes=("alone:" "mix:--reactions 500 --edits 50")
[ "${ALONE_ONLY:-0}" = 1 ] && modes=("alone:")
client_ids=()
[ "${CLIENT_IDS:-0}" = 1 ] && client_ids=(--client-ids)
ROUNDS=${1:-2}
SERVER=${SERVER:-target/release/chat-server}
LOAD=${LOAD:-target/release/chat-bench}
server=$(realpath "$SERVER")
work=$(mktemp -d)
pid=
dbs=()
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  sleep 1
  for db in "${dbs[@]:-}"; do
    [ -n "$db" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

common_env=(RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 REGISTRATION_BURST=100000
  FANOUT_PER_SECOND=10000000 SECRET_KEY=bench-secret-key-of-at-least-32-bytes RUST_LOG=warn)
port=

start() { # start SETUP RUN: a fresh server on SETUP's database, on a free port
  local setup=$1 run=$2
  port=$(free_port)
  if [ "$setup" = sqlite ]; then
    mkdir -p "$work/$run"
    (cd "$work/$run" && exec env "${common_env[@]}" PORT="$port" "$server") &
  else
    local db=bench_mix_${run}_$$
    dbs+=("$db")
    psql "$PG/postgres" -qc "CREATE DATABASE $db"
    env "${common_env[@]}" PORT="$port" DATABASE_URL="$PG/$db" "$server" &
  fi
  pid=$!
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the server exited while starting (its output is above)" >&2
      return 1
    fi
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "the server did not become ready" >&2
  return 1
}

stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
}

for setup in $SETUPS; do
  for round in $(seq 1 "$ROUNDS"); do
    for mode in "${modes[@]}"; do
      name=${mode%%:*} extra=${mode#*:}
      start "$setup" "${setup}_${name}_${round}"
      # shellcheck disable=SC2086
      line=$("$LOAD" load --url "http://127.0.0.1:$port" --pairs 100 --duration "$DURATION" \
        --rate "$RATE" --window 64 --history-pages "$HISTORY" --server-pid "$pid" "${client_ids[@]}" $extra 2>/dev/null | tail -n 1)
      echo "$setup $name $line"
      stop
    done
  done
done
