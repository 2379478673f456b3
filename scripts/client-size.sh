#!/usr/bin/env bash
# The web client must stay small: every file the browser loads, each
# gzip-compressed as a server or proxy would send it, under 60 KB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((60 * 1024))
total=0
for file in static/app/index.html static/app/*.js static/app/*.css static/app/vendor/*.js; do
  total=$((total + $(gzip -9c "$file" | wc -c)))
done
echo "web client: $total bytes gzip-compressed (limit $limit)"
[ "$total" -lt "$limit" ]
