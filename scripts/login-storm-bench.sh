#!/usr/bin/env bash
# What a burst of logins does to everyone's messages (BENCHMARKS.md "A
# twenty-seventh machine"): on a fresh SQLite server, 100 pairs send
# MSG_RATE messages a second for 15 s (`chat-bench load`) and, from about
# 2 s in, for 11 s, LOGIN_RATE logins a second arrive beside them
# (`scripts/login-storm.py`: an open loop, right passwords, 40 accounts,
# up to 200 logins outstanding).
# Each login verifies an argon2 hash: tens of milliseconds of a core.
#
#   cargo build --release --workspace
#   scripts/login-storm-bench.sh [ROUNDS]        (default 1)
#
# Prints one line per run: the login rate, chat-bench's JSON line (the
# messages' p50 / p99 / p99.9), the logins' JSON line, and the CPU time
# the hypervisor took from this machine during the run (steal, summed over
# the cores: on a shared host, more work in the guest can mean more of it,
# and every thread stalls while it lasts). Settings (env):
#   LOGIN_RATES="0 20 40 80"   MSG_RATE=2000   SERVER, LOAD as mix-bench.sh's
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS=${1:-1}
LOGIN_RATES=${LOGIN_RATES:-0 20 40 80}
MSG_RATE=${MSG_RATE:-2000}
server=$(realpath "${SERVER:-target/release/chat-server}")
LOAD=$(realpath "${LOAD:-target/release/chat-bench}")
scratch

steal() { # the machine's steal time so far, in USER_HZ ticks (10 ms)
  awk '/^cpu /{print $9}' /proc/stat
}

for round in $(seq 1 "$ROUNDS"); do
  for logins in $LOGIN_RATES; do
    port=$(free_port)
    mkdir -p "$work/$round-$logins"
    (cd "$work/$round-$logins" && exec env RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
      REGISTRATION_BURST=100000 FANOUT_PER_SECOND=10000000 RUST_LOG=warn \
      SECRET_KEY=bench-secret-key-of-at-least-32-bytes PORT="$port" "$server") &
    pid=$!
    for _ in $(seq 1 200); do
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
      sleep 0.05
    done
    before=$(steal)
    "$LOAD" load --url "http://127.0.0.1:$port" --pairs 100 --rate "$MSG_RATE" --duration 15 \
      --server-pid "$pid" 2>/dev/null | tail -n 1 > "$work/load" &
    load=$!
    storm='{}'
    if [ "$logins" != 0 ]; then
      storm=$(scripts/login-storm.py "http://127.0.0.1:$port" "$logins" 11 40 2)
    fi
    wait "$load"
    echo "logins/s $logins $(cat "$work/load") $storm steal_ms $(( ($(steal) - before) * 10 ))"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
