#!/usr/bin/env bash
# Two instances on one PostgreSQL database, over one Redis and then over a
# six-node Redis Cluster (three masters, one replica each, started here on
# loopback ports), each measured with the same chat-bench runs
# (BENCHMARKS.md "Redis Cluster"): full throughput, then latency at a fixed
# rate.
#
#   cargo build --release --workspace
#   PG=postgres://postgres@127.0.0.1:5432 REDIS=redis://127.0.0.1:6379/ scripts/cluster-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379/}
DURATION=${DURATION:-10}
BIN=${SERVER:-target/release/chat-server}
LOAD=${LOAD:-target/release/chat-bench}
work=$(mktemp -d)
pids=()
nodes=(18511 18512 18513 18514 18515 18516)
read -r -a ports <<<"$(free_ports 2)"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for port in "${nodes[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  sleep 1
  for db in "${dbs[@]:-}"; do
    [ -n "$db" ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
dbs=()

# The cluster: six nodes, created, every replica synchronised.
for port in "${nodes[@]}"; do
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 1000 \
    --save "" --appendonly no --dir "$work" --daemonize yes --logfile "$work/redis-$port.log"
done
sleep 0.5
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 1 300); do
  synced=0
  for port in "${nodes[@]}"; do
    info=$(redis-cli -p "$port" info replication)
    state=$(redis-cli -p "$port" cluster info | grep -c 'cluster_state:ok' || true)
    if [ "$state" = 1 ] && { grep -q 'role:master' <<<"$info" || grep -q 'master_link_status:up' <<<"$info"; }; then
      synced=$((synced + 1))
    fi
  done
  [ "$synced" = 6 ] && break
  sleep 0.1
done
[ "$synced" = 6 ] || { echo "the cluster did not settle" >&2; exit 1; }

run() { # run NAME VAR VALUE: two instances with VAR=VALUE, then the load
  local name=$1 var=$2 value=$3 db=bench_cluster_$1_$$
  dbs+=("$db")
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  pids=()
  for i in 0 1; do
    env "$var=$value" DATABASE_URL="$PG/$db" REDIS_PREFIX="$db" \
      ATTACHMENTS_DIR="$work/$name-attachments" ATTACHMENTS_SHARED=1 \
      SECRET_KEY=cluster-bench-key-of-at-least-32-bytes PORT=${ports[$i]} WORKERS=1 RUST_LOG=warn \
      RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 REGISTRATION_BURST=100000 FANOUT_PER_SECOND=10000000 \
      "$BIN" >>"$work/$name$i.log" 2>&1 &
    pids+=($!)
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 200); do
      curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.05
    done
  done
  local urls="--url http://127.0.0.1:${ports[0]} --url http://127.0.0.1:${ports[1]}"
  echo "== $name: as fast as possible (100 pairs, window 32, ${DURATION} s)"
  $LOAD load $urls --pairs 100 --duration "$DURATION" --window 32
  echo "== $name: 1,000 msg/s (100 pairs, window 64, ${DURATION} s)"
  $LOAD load $urls --pairs 100 --duration "$DURATION" --rate 1000 --window 64
  for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
  pids=()
}

run single REDIS_URL "$REDIS"
run cluster REDIS_CLUSTER_URLS "$(printf 'redis://127.0.0.1:%s ' "${nodes[@]:0:3}")"
