#!/usr/bin/env bash
# What writing the search index in the messages' transactions costs their
# batches (BENCHMARKS.md "A fourteenth machine: SQLite's search index
# written behind the messages"): `mix-bench.sh`'s pairs at RATE, alternately
# on the server as it is and on the same server with each new message's
# words left out of the index (the `search` column and its GIN index
# dropped). The second is not a way to run the server (search finds
# nothing new); it is the bound on what any other way of writing the index
# could give back. PostgreSQL only: SQLite's index is written behind the
# writer, in a file of its own (src/chat/search_index.rs), since the
# measurement this script first made there (BENCHMARKS.md "A fifteenth
# machine" compares the builds).
#
#   cargo build --release -p chat-server -p chat-bench
#   scripts/search-index-cost.sh [ROUNDS]     (default 3)
#
# Prints one line per run: the variant, msg/s, lost, p50 / p99 / p99.9 ms,
# server µs per delivered message. Settings (env): RATE=10000, DURATION=10,
# SERVER, LOAD as for mix-bench.sh. Needs psql.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
server=$(realpath "${SERVER:-target/release/chat-server}")
LOAD=$(realpath "${LOAD:-target/release/chat-bench}")
export LOAD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The server as started by mix-bench.sh (fresh directory or database, its
# PORT), migrated first on a port of its own, then without the index.
cat > "$work/without-index" <<EOF
#!/usr/bin/env bash
set -euo pipefail
. "$PWD/scripts/lib.sh"
port=\$(free_port)
PORT=\$port "$server" > "$work/migrate.log" 2>&1 & migrating=\$!
for _ in \$(seq 1 400); do
  curl -sf "http://127.0.0.1:\$port/readyz" >/dev/null && break
  sleep 0.05
done
kill \$migrating; wait \$migrating || true
psql -q "\$DATABASE_URL" -c "DROP INDEX idx_messages_chat_search; ALTER TABLE messages DROP COLUMN search"
exec "$server"
EOF
chmod +x "$work/without-index"

for round in $(seq 1 "$ROUNDS"); do
  for variant in with-index without-index; do
    binary=$server
    [ "$variant" = without-index ] && binary=$work/without-index
    # mix-bench.sh's stderr is the servers' and psql's chatter; a run that
    # fails (a server that never became ready) is said here instead.
    SERVER=$binary ALONE_ONLY=1 HISTORY=0 RATE=${RATE:-10000} DURATION=${DURATION:-10} \
      SETUPS=postgres scripts/mix-bench.sh 1 2>"$work/mix-bench.log" |
      while read -r setup _ json; do
        python3 - "$setup" "$variant" "$round" "$json" <<'PY'
import json, sys
setup, variant, round_, run = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(
    f"{setup} {variant} round {round_}: {run['msgs_per_sec']:.0f} msg/s, lost {run['lost']}, "
    f"p50 / p99 / p99.9 {run['p50_ms']} / {run['p99_ms']} / {run['p999_ms']} ms, "
    f"server {run['server_cpu_us_per_delivery']:.1f} µs a message"
)
PY
      done || {
        echo "$variant round $round failed; scripts/mix-bench.sh said:" >&2
        tail -n 20 "$work/mix-bench.log" >&2
        exit 1
      }
  done
done
