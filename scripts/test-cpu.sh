#!/usr/bin/env bash
# Each test's CPU time: the README's test command with every test process run
# under /usr/bin/time (a nextest wrapper script), then the tests sorted by
# CPU-seconds, the heaviest first, and the sum.
#
#   scripts/test-cpu.sh                  # every test, TEST_* as for the tests
#   scripts/test-cpu.sh -E 'test(/mysql/)'   # extra arguments go to nextest
#   TOP=50 scripts/test-cpu.sh
#
# A test's figure is its own process and the children it waited for (the
# servers it starts in-process or as a child); PostgreSQL, MariaDB and Redis
# are not in it. CI's test step is CPU-bound on two cores, so the sum is
# what the step's length follows (docs/CI.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
times="$work/times"
{
  echo 'experimental = ["wrapper-scripts"]'
  cat .config/nextest.toml
  cat <<EOF

[scripts.wrapper.cpu]
command = { command-line = "/usr/bin/time -a -o $times -f '%U %S %e %C'", relative-to = "none" }

[[profile.default.scripts]]
filter = 'all()'
run-wrapper = 'cpu'
EOF
} > "$work/nextest.toml"

status=0
cargo nextest run --workspace --run-ignored all --config-file "$work/nextest.toml" "$@" || status=$?

# /usr/bin/time's line: user, system, elapsed, then the command: the test
# binary, --exact, the test's name (a failing test adds a line of its own,
# "Command exited with non-zero status N", which is left out).
awk 'NF >= 6 && $1 ~ /^[0-9.]+$/ { printf "%7.2f %7.2f  %s\n", $1 + $2, $3, $6 }' "$times" | sort -rn > "$work/sorted"
echo
echo "CPU s  wall s  test (the ${TOP:-25} heaviest)"
head -n "${TOP:-25}" "$work/sorted"
awk '{ cpu += $1 } END { printf "%d tests, %.1f CPU-seconds in all\n", NR, cpu }' "$work/sorted"
exit "$status"
