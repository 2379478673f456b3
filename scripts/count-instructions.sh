#!/usr/bin/env bash
# Instructions per stored message, counted by callgrind: for comparing two
# builds on a machine whose timings vary more between runs than the change
# does (every 2-vCPU machine so far: BENCHMARKS.md "A tenth machine").
#
#   cargo build --release -p chat-server -p chat-bench
#   scripts/count-instructions.sh 'chat_server::chat::log::message_frames*' '*parse_request*'
#   SERVER=/tmp/other/chat-server scripts/count-instructions.sh '*parse_request*'
#   scripts/count-instructions.sh          # the whole server, every thread
#
# For each pattern, a fresh server runs under `valgrind --tool=callgrind`, collecting only
# inside the functions the pattern names and what they call
# (`--toggle-collect`; a Rust function's name is its full path, so start a
# pattern with `*`). chat-bench sends PAIRS pairs' messages at RATE a
# second for DURATION seconds; the counters are zeroed once WARMUP messages
# are stored (statements prepared, caches filled) and read at the end. It
# prints the instructions and calls per message of each pattern.
#
# Whole-server counts (no pattern) are not repeatable on SQLite: the search
# index merges its segments in some runs' window and not in others (one
# build: 383,000 to 428,000 instructions a message over four runs). A
# pattern's count repeats within a few per cent when the work it names does
# not depend on timing; at a low RATE each batch holds one message, so
# per-batch work counts as per-message work.
#
# Settings (env): SERVER=target/release/chat-server LOAD=target/release/chat-bench
#   PAIRS=10 RATE=100 DURATION=20 WARMUP=300 PORT=(a free one); DATABASE_URL is passed
#   through (a fresh database each run; without it, SQLite in a fresh directory)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v valgrind >/dev/null || { echo "needs valgrind (Debian: apt-get install valgrind)" >&2; exit 2; }
SERVER=$(realpath "${SERVER:-target/release/chat-server}")
LOAD=$(realpath "${LOAD:-target/release/chat-bench}")
PAIRS=${PAIRS:-10} RATE=${RATE:-100} DURATION=${DURATION:-20} WARMUP=${WARMUP:-300}
PORT=${PORT:-$(free_port)}
url=http://127.0.0.1:$PORT

scratch

stored() { { curl -sf "$url/metrics" || true; } | awk '/^chat_messages_stored_total /{n = $2} END {print n + 0}'; }

count() { # count [PATTERN]: one run; prints PATTERN, instructions and calls per message
  local pattern=${1:-} run=$work/run$RANDOM options=()
  mkdir -p "$run"
  if [ -n "$pattern" ]; then
    options=(--collect-atstart=no "--toggle-collect=$pattern")
  fi
  (cd "$run" && exec env RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
    REGISTRATION_BURST=100000 FANOUT_PER_SECOND=10000000 RUST_LOG=warn WORKERS=1 \
    SECRET_KEY=bench-secret-key-of-at-least-32-bytes PORT="$PORT" \
    valgrind --tool=callgrind "${options[@]}" --callgrind-out-file="$run/out" "$SERVER" \
    > "$run/server.log" 2>&1) &
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf "$url/readyz" >/dev/null && break
    sleep 0.2
  done
  "$LOAD" load --url "$url" --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" \
    --window 64 --history-pages 0 > "$run/load.json" 2> "$run/load.log" &
  local load=$! first=0
  while :; do
    first=$(stored)
    [ "$first" -ge "$WARMUP" ] && break
    kill -0 "$load" 2>/dev/null || { echo "the load ended before $WARMUP messages were stored" >&2; return 1; }
    sleep 0.1
  done
  callgrind_control -z "$pid" >/dev/null 2>&1
  first=$(stored)
  wait "$load"
  local last
  last=$(stored)
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  grep -q '"lost":0,' "$run/load.json" || { echo "messages were lost: $(cat "$run/load.json")" >&2; return 1; }
  local messages=$((last - first)) instructions calls=0
  instructions=$(callgrind_annotate "$run/out.1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  if [ -n "$pattern" ]; then
    # Calls into the pattern's functions from outside them, from the dump's
    # call records (`calls=N` lines under a `cfn=` naming a match).
    calls=$(awk -v pattern="$pattern" '
      BEGIN { gsub(/[.[\]()+?^$|]/, "\\\\&", pattern); gsub(/\*/, ".*", pattern); pattern = "^" pattern "$" }
      /^fn=\(/ { caller = names[id($0)] }
      /^cfn=\(/ { callee = names[id($0)] }
      /^calls=/ && callee ~ pattern && caller !~ pattern { split($0, f, /[= ]/); calls += f[2] }
      function id(line,   m, name) {
        match(line, /\([0-9]+\)/); m = substr(line, RSTART, RLENGTH)
        name = substr(line, RSTART + RLENGTH + 1)
        if (name != "") names[m] = name
        return m
      }
      END { print calls + 0 }' "$run/out.1")
  fi
  awk -v p="${pattern:-(the whole server)}" -v m="$messages" -v i="$instructions" -v c="$calls" \
    'BEGIN { printf "%-50s %6d messages %10.0f instructions/message %7.2f calls/message\n", p, m, i / m, c / m }'
}

if [ $# = 0 ]; then
  count
else
  for pattern in "$@"; do count "$pattern"; done
fi
