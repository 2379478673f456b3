#!/usr/bin/env bash
# A bystander's latency while one account attacks (BENCHMARKS.md "Abuse:
# what one account costs the others"): a release server on a fresh SQLite
# database with its default limits (only registration opened up for the
# generator's accounts), a group of MEMBERS connected members, and
# chat-bench attack's phases: quiet, rename, fanout, typing, reconnect, roster,
# read, history.
#
#   cargo build --release --workspace
#   scripts/attack-bench.sh    (MEMBERS=400 PHASE_SECONDS=10 RATE=1000 by default:
#                              the attacker sends RATE requests or frames a second;
#                              PATTERNS="roster fanout" runs only those, in order;
#                              GROUP_COUNT=10 gives the attacker ten groups of
#                              the members, flooded in turn; SOCKETS=8 floods
#                              from eight sockets at once; HISTORY=1000 writes
#                              that many messages first, for `history` to page)
#
# Prints chat-bench's summary and JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
MEMBERS=${MEMBERS:-400}
SECONDS_PER_PHASE=${PHASE_SECONDS:-10}
SERVER=${SERVER:-target/release/chat-server}
BENCH=${BENCH:-target/release/chat-bench}
PORT=${PORT:-$(free_port)}
server=$(realpath "$SERVER")
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Registration is the only limit raised: the generator signs up every member
# from one address. Every limit the attack meets is the default.
(cd "$work" && exec env REGISTRATION_BURST=100000 REGISTRATION_PER_MINUTE=100000 \
  MAX_GROUP_MEMBERS=$((MEMBERS + 10)) SECRET_KEY=bench-secret-key-of-at-least-32-bytes \
  RUST_LOG=warn PORT="$PORT" "$server") &
pid=$!
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.05
done
echo "machine: $(nproc) cores, $(uname -r); members $MEMBERS in ${GROUP_COUNT:-1} group(s), $SECONDS_PER_PHASE s a phase, attacker ${RATE:-1000}/s from ${SOCKETS:-1} socket(s)"
pattern_args=()
for p in ${PATTERNS:-}; do pattern_args+=(--pattern "$p"); done
"$BENCH" attack --url "http://127.0.0.1:$PORT" --members "$MEMBERS" --groups "${GROUP_COUNT:-1}" \
  --sockets "${SOCKETS:-1}" --history "${HISTORY:-0}" \
  --seconds "$SECONDS_PER_PHASE" --rate "${RATE:-1000}" "${pattern_args[@]}"
