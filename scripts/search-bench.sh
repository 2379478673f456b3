#!/usr/bin/env bash
# Search at scale (PROTOCOL.md B10; BENCHMARKS.md "Search"). For each
# database named (default: sqlite postgres): a fresh database, migrated;
# `chat-bench search-fill` fills it (10,000 users, 50,000 conversations,
# 1,000,000 messages unless USERS, CONVERSATIONS, MESSAGES say otherwise);
# the server starts on it and `chat-bench search` times searches of one and
# two words while 1,000 msg/s are written (WRITE_RATE). Then the index's
# size beside the messages table's, and the write cost: `chat-bench load`
# (100 pairs, as fast as they go) on a fresh database with the index and on
# one with it dropped, alternately, twice. SQLite's index is a file the
# server writes behind its writer (src/chat/search_index.rs) and builds on
# start when it is missing: its build is timed there, and the load runs
# with it only.
#
#   cargo build --release -p chat-server -p chat-bench
#   scripts/search-bench.sh [sqlite] [postgres] [mysql]
#
# mysql is MariaDB (or MySQL) at MY (root, no password, 127.0.0.1:3306).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
MY=${MY:-mysql://root@127.0.0.1:3306}
SERVER=$(realpath "${SERVER:-target/release/chat-server}")
BENCH=$(realpath "${BENCH:-target/release/chat-bench}")
model=(--users "${USERS:-10000}" --conversations "${CONVERSATIONS:-50000}" --messages "${MESSAGES:-1000000}")
QUERIES=${QUERIES:-1000}
WRITE_RATE=${WRITE_RATE:-1000}
LOAD_SECONDS=${LOAD_SECONDS:-10}
PORT=$(free_port)
work=$(mktemp -d)
pid=
dbs=()
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  for db in "${dbs[@]:-}"; do
    case "$db" in
      *_postgres*) psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true ;;
      *_mysql*) mariadb -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $db" || true ;;
    esac
  done
  rm -rf "$work"
}
trap cleanup EXIT

env_for() { # env_for SETUP NAME: the server's settings on that database
  # Searchers are asked one at a time, so on a slow database (MariaDB: a
  # common word takes seconds) a searcher's socket goes unread for longer
  # than a client may be silent: the heartbeat is made long enough.
  echo HEARTBEAT_SECONDS=600 CLIENT_TIMEOUT_SECONDS=3600 \
    RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 FANOUT_PER_SECOND=10000000 SEARCHES_PER_MINUTE=100000000 \
    REGISTRATION_BURST=100000 SECRET_KEY=bench-secret-key-of-at-least-32-bytes RUST_LOG=warn PORT=$PORT
  case "$1" in
    postgres) echo "DATABASE_URL=$PG/$2" ;;
    mysql) echo "DATABASE_URL=$MY/$2" ;;
    *) echo "DB_NAME=$work/$2.db" ;;
  esac
}

fresh() { # fresh SETUP NAME: a new, migrated database
  dbs+=("$2")
  case "$1" in
    postgres) psql "$PG/postgres" -qc "CREATE DATABASE $2" ;;
    mysql) mariadb -h127.0.0.1 -uroot -e "CREATE DATABASE $2" ;;
  esac
  # shellcheck disable=SC2046
  env $(env_for "$1" "$2") "$SERVER" migrate >/dev/null
}

sql() { # sql SETUP NAME: runs stdin's SQL on that database
  case "$1" in
    postgres) psql -q -v ON_ERROR_STOP=1 "$PG/$2" >/dev/null ;;
    mysql) mariadb -h127.0.0.1 -uroot "$2" >/dev/null ;;
    *) sqlite3 -bail "$work/$2.db" >/dev/null ;;
  esac
}

start() { # start SETUP NAME
  # shellcheck disable=SC2046
  env $(env_for "$1" "$2") "$SERVER" &
  pid=$!
  for _ in $(seq 1 400); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
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

drop_index() { # drop_index SETUP NAME: the same database without the search index
  if [ "$1" = postgres ]; then
    echo "DROP INDEX idx_messages_chat_search; ALTER TABLE messages DROP COLUMN search;" | sql "$@"
  elif [ "$1" = mysql ]; then
    echo "ALTER TABLE messages DROP INDEX ft_messages_content;" | sql "$@"
  fi
}

sizes() { # sizes SETUP NAME: the index beside the messages table, in MiB
  if [ "$1" = postgres ]; then
    psql -At "$PG/$2" -c "SELECT 'messages table (without search column): ' || round((pg_table_size('messages') - sum(pg_column_size(search)))/1048576.0, 1)
      || ' MiB; search column: ' || round(sum(pg_column_size(search))/1048576.0, 1)
      || ' MiB; GIN index: ' || round(pg_relation_size('idx_messages_chat_search')/1048576.0, 1) || ' MiB' FROM messages"
  elif [ "$1" = mysql ]; then
    # InnoDB keeps a FULLTEXT index in tables of its own (FTS_…), whose
    # sizes the global tablespace view lists.
    mariadb -h127.0.0.1 -uroot -N "$2" -e "SELECT CONCAT('messages table: ', ROUND(data_length / 1048576, 1),
      ' MiB; FULLTEXT index: ', (SELECT ROUND(SUM(file_size) / 1048576, 1) FROM information_schema.innodb_sys_tablespaces
        WHERE name LIKE '$2/FTS%'), ' MiB') FROM information_schema.tables WHERE table_schema = '$2' AND table_name = 'messages'"
  else
    # The FTS5 index is a file of its own (src/chat/search_index.rs).
    sqlite3 "$work/$2.db" "SELECT 'messages table: ' || round(sum(CASE WHEN name = 'messages' THEN pgsize END)/1048576.0, 1)
      || ' MiB; FTS5 index file: ' || round($(stat -c %s "$work/$2.db-search")/1048576.0, 1) || ' MiB' FROM dbstat"
  fi
}

for setup in "${@:-sqlite postgres}"; do
  for s in $setup; do
    name=bench_search_$$_$s
    fresh "$s" "$name"
    echo "$(date +%T) $s: filling"
    printf 'bench password 123\n' | env $(env_for "$s" "$name") "$SERVER" user create seed \
      --first-name Seed --last-name Bench --email seed@example.com --password-stdin >/dev/null
    started=$SECONDS
    "$BENCH" search-fill "${model[@]}" --dialect "$s" | sql "$s" "$name"
    echo "$(date +%T) $s: filled in $((SECONDS - started)) s"
    if [ "$s" = mysql ]; then # the fill left the index to the migration (see search-fill)
      started=$SECONDS
      env $(env_for "$s" "$name") "$SERVER" migrate >/dev/null
      echo "$(date +%T) $s: index built by the migration in $((SECONDS - started)) s"
    fi
    start "$s" "$name"
    if [ "$s" = sqlite ]; then # the server builds its index file on start
      started=$SECONDS
      last=$(sqlite3 "$work/$name.db" "SELECT max(id) FROM messages")
      until [ "$(sqlite3 "$work/$name.db-search" "SELECT message_id FROM search_progress" 2>/dev/null)" = "$last" ]; do
        kill -0 "$pid" 2>/dev/null || { echo "the server stopped while building its index" >&2; exit 1; }
        sleep 1
      done
      echo "$(date +%T) $s: index built by the server in about $((SECONDS - started)) s"
    fi
    echo "$s sizes: $(sizes "$s" "$name")"
    "$BENCH" search --url "http://127.0.0.1:$PORT" "${model[@]}" --queries "$QUERIES" --write-rate "$WRITE_RATE" | sed "s/^/$s search: /"
    stop
    # SQLite's index is written behind the writer, always: its cost is
    # measured build against build (BENCHMARKS.md, "A fifteenth machine").
    variants="with without"
    [ "$s" = sqlite ] && variants=with
    for round in 1 2; do
      for index in $variants; do
        load=bench_load_$$_${s}_${index}_$round
        fresh "$s" "$load"
        [ "$index" = without ] && drop_index "$s" "$load"
        start "$s" "$load"
        line=$("$BENCH" load --url "http://127.0.0.1:$PORT" --pairs 100 --duration "$LOAD_SECONDS" --window 32 --words "${WORDS:-8}" | tail -n 1)
        echo "$s load $index index: $line"
        stop
      done
    done
  done
done
