#!/usr/bin/env bash
# The tests that rest on timing, a Redis Cluster or a fault, RUNS times in a
# row (default 20) while LOAD busy processes (default 2, one per core here)
# compete for the CPU: a test that passes only on a quiet machine fails here.
# Stops at the first failing run and prints its output; prints each run's
# time and the total otherwise.
#
#   scripts/stress-tests.sh                      # 20 runs, 2 busy processes
#   RUNS=5 FILTER='test(/^cluster::/)' scripts/stress-tests.sh
#
# Needs what the full test run needs (README, "Test"): TEST_POSTGRES_URL,
# TEST_MYSQL_URL, TEST_REDIS_URL, redis-server, redis-cli and nginx,
# cargo-nextest, and e2e's npm packages for the S3 test's s3rver
# (`(cd e2e && npm ci)`).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-20}
LOAD=${LOAD:-2}
# The timing tests (timeouts, heartbeats, sweeps, rate limits, drains, the
# command line's start-up and shutdown bounds), the
# cluster and multi-instance tests, the faults (restarts, kills, outages,
# full queues, failed batches), the randomized conversation-log runs, and
# Web Push (a sender polling every second) and group changes.
FILTER=${FILTER:-'test(/^(cli|cluster|faults|reliability|scaling|edges|chat_features|bad_input|login|conversation_log|message_changes|security|notifications|groups|attachments)::/)'}

for var in TEST_POSTGRES_URL TEST_MYSQL_URL TEST_REDIS_URL; do
  [ -n "${!var:-}" ] || { echo "$var is not set (README, \"Test\")" >&2; exit 1; }
done
# The S3 test (attachments::files_in_an_s3_bucket) runs a private s3rver.
case $FILTER in
  *attachments*)
    [ -x e2e/node_modules/.bin/s3rver ] ||
      { echo "s3rver is not installed: (cd e2e && npm ci)" >&2; exit 1; } ;;
esac

cargo nextest run --workspace --no-run

busy=()
stop_load() { [ ${#busy[@]} -eq 0 ] || kill "${busy[@]}" 2>/dev/null || true; }
trap stop_load EXIT
for _ in $(seq 1 "$LOAD"); do
  sh -c 'while :; do :; done' &
  busy+=("$!")
done

log=$(mktemp)
started=$SECONDS
for run in $(seq 1 "$RUNS"); do
  run_started=$SECONDS
  if ! cargo nextest run --workspace --run-ignored all -E "$FILTER" \
      --status-level fail --final-status-level fail >"$log" 2>&1; then
    cat "$log"
    echo "run $run of $RUNS FAILED under $LOAD busy processes (output above)" >&2
    exit 1
  fi
  summary=$(grep -E '^ +Summary' "$log" | sed 's/^ *//')
  echo "run $run/$RUNS: $((SECONDS - run_started)) s, $summary"
done
rm -f "$log"
echo "$RUNS runs passed under $LOAD busy processes in $((SECONDS - started)) s"
