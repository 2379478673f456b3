#!/usr/bin/env bash
# Attachments on loopback (BENCHMARKS.md "Attachments"): with the files in
# a directory, then in an S3 bucket (s3rver from npm, on loopback), one
# 100 MiB upload and its download, then 20 uploads of 25 MiB at once with
# the server's RSS sampled every 10 ms. SQLite, one instance.
#
#   cargo build --release -p chat-server -p chat-bench
#   (cd e2e && npm ci)                   # s3rver
#   scripts/files-bench.sh
#
# Prints one summary per store, then chat-bench's JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
SERVER=${SERVER:-target/release/chat-server}
BENCH=${BENCH:-target/release/chat-bench}
S3RVER=${S3RVER:-e2e/node_modules/.bin/s3rver}
read -r PORT S3_PORT <<<"$(free_ports 2)"
server=$(realpath "$SERVER")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The single upload is 100 MiB: the limit and the quota let it through.
common_env=(${EXTRA_ENV:-} MAX_ATTACHMENT_BYTES=$((100 << 20)) ATTACHMENT_QUOTA_BYTES=$((100 << 20))
  REGISTRATION_BURST=100000 SECRET_KEY=bench-secret-key-of-at-least-32-bytes RUST_LOG=warn PORT=$PORT)

run() { # run NAME [VAR=value…]: a fresh server with the extra settings, measured
  local name=$1
  shift
  mkdir -p "$work/$name"
  (cd "$work/$name" && exec env "${common_env[@]}" "$@" "$server") &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 0.05
  done
  echo "== $name"
  "$BENCH" files --url "http://127.0.0.1:$PORT" --pid "$pid"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

run directory

mkdir -p "$work/s3"
"$S3RVER" -d "$work/s3" -a 127.0.0.1 -p "$S3_PORT" --silent --configure-bucket chat &
pids+=("$!")
for _ in $(seq 1 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && break
  sleep 0.05
done
run s3 S3_BUCKET=chat S3_ENDPOINT="http://127.0.0.1:$S3_PORT" S3_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
