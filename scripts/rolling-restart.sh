#!/usr/bin/env bash
# A rolling restart under load, measured (BENCHMARKS.md "Rolling restart"):
# nginx (deploy/nginx.conf) in front of two instances on one PostgreSQL
# database and one Redis; `chat-bench churn` sends through nginx while each
# instance in turn gets SIGTERM (it drains for DRAIN_SECONDS, closes its
# sessions with 1001, commits, exits) and is started again.
#
#   cargo build --release --workspace
#   PG=postgres://postgres@127.0.0.1:5432 REDIS=redis://127.0.0.1:6379/ scripts/rolling-restart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
for tool in nginx openssl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: apt-get install $tool)" >&2; exit 2; }
done
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
DURATION=${DURATION:-30}
PAIRS=${PAIRS:-50}
RATE=${RATE:-500}
BIN=${SERVER:-target/release/chat-server}
LOAD=${LOAD:-target/release/chat-bench}
work=$(mktemp -d)
db=rolling_$$
psql "$PG/postgres" -qc "CREATE DATABASE $db"
pids=()
cleanup() {
  for pid in "${pids[@]}" ${nginx:-}; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  # KEEP_LOGS=DIR keeps the instances' and nginx's logs there.
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

read -r front tls first second <<<"$(free_ports 4)"
ports=("$first" "$second")
start() { # start INDEX: one instance, in the background, until /readyz is 200
  DATABASE_URL="$PG/$db" REDIS_URL=$REDIS REDIS_PREFIX=$db SECRET_KEY=rolling-restart-key-of-32-bytes-or-more \
    ATTACHMENTS_DIR="$work/attachments" ATTACHMENTS_SHARED=1 \
    PORT=${ports[$1]} WORKERS=1 DRAIN_SECONDS=2 TRUSTED_PROXIES=127.0.0.1 RUST_LOG=warn \
    RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 REGISTRATION_BURST=100000 FANOUT_PER_SECOND=10000000 \
    "$BIN" >>"$work/server$1.log" 2>&1 &
  pids[$1]=$!
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:${ports[$1]}/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "instance $1 did not start" >&2; return 1
}
restart() { # restart INDEX: SIGTERM, wait for the exit, start again
  local t0; t0=$(date +%s%N)
  kill -TERM "${pids[$1]}"
  wait "${pids[$1]}" || true
  local stopped; stopped=$(date +%s%N)
  start "$1"
  echo "instance $1: stopped in $(((stopped - t0) / 1000000)) ms (drain included), ready again $((($(date +%s%N) - stopped) / 1000000)) ms later" >&2
}

start 0
start 1
# deploy/nginx.conf with this run's ports, a self-signed certificate and
# logs of its own (as tests/nginx.rs runs it).
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/chat.key" -out "$work/chat.crt" >/dev/null 2>&1
sed -e "s/127.0.0.1:8001/127.0.0.1:${ports[0]}/" -e "s/127.0.0.1:8002/127.0.0.1:${ports[1]}/" \
  -e "s/listen 8080;/listen 127.0.0.1:$front;/" -e "s/listen 8443 ssl;/listen 127.0.0.1:$tls ssl;/" \
  -e "s#/etc/nginx/tls/#$work/#" -e "s#/var/log/nginx/#$work/#" deploy/nginx.conf >"$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" -g "daemon off; pid $work/nginx.pid; error_log $work/nginx.log warn;" &
nginx=$!
until curl -fsS "http://127.0.0.1:$front/readyz" >/dev/null 2>&1; do
  kill -0 "$nginx" 2>/dev/null || { echo "nginx did not start (its output is above)" >&2; exit 1; }
  sleep 0.1
done

"$LOAD" churn --url "http://127.0.0.1:$front" --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" \
  2>"$work/bench.err" &
bench=$!
until grep -q "clients running" "$work/bench.err"; do
  kill -0 "$bench" 2>/dev/null || { cat "$work/bench.err" >&2; exit 1; }
  sleep 0.2
done
sleep $((DURATION / 4))
restart 0
sleep $((DURATION / 3))
restart 1
status=0; wait "$bench" || status=$?
cat "$work/bench.err" >&2
exit $status
