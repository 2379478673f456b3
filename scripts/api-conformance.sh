#!/usr/bin/env bash
# API conformance: schemathesis (from PyPI) against /openapi.json of a real
# server on a fresh SQLite file. Fails on any 5xx or any response that
# violates the documented schema. Bounded: EXAMPLES per operation (default 50).
#
# Every check runs except `positive_data_acceptance`: it expects a
# schema-valid body to be accepted, but a login with well-formed wrong
# credentials must answer 400 {"non_field_errors": ["User not found"]}
# (PROTOCOL.md A1), and likewise an unknown username for a contact.
#
# schemathesis still warns "Schema validation mismatch" for login, register,
# password and contacts: most generated bodies are well-formed but name no
# account, a taken username or a wrong old password. That is the API's
# meaning, which no schema can carry; every other warning is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${EXAMPLES:-50}
command -v schemathesis >/dev/null 2>&1 || {
  echo "schemathesis is not installed (.ci/run installs the pinned version)" >&2
  exit 1
}
# CHAT_SERVER: a server binary already built (CI passes the one its test
# build made); otherwise build one.
if [ -n "${CHAT_SERVER:-}" ]; then
  server_bin=$(realpath "$CHAT_SERVER")
else
  cargo build --quiet --bin chat-server
  server_bin=$PWD/target/debug/chat-server
fi

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# `exec`: $! is the server itself, not a subshell, so the trap stops it.
# The per-user budgets are lifted: schemathesis sends thousands of requests
# from one account, and an operation that only ever answers 429 is untested.
(cd "$dir" && exec env PORT="$port" RUST_LOG=warn LOGIN_MAX_ATTEMPTS=1000000 \
  REGISTRATION_BURST=1000000 GROUP_CHANGES_PER_MINUTE=1000000 \
  GROUP_CHANGES_PER_MINUTE_PER_GROUP=1000000 RATE_LIMIT_PER_SECOND=1000000 \
  RATE_LIMIT_BURST=1000000 SEARCHES_PER_MINUTE=1000000 "$server_bin" >"$dir/server.log" 2>&1) &
server=$!
finish() {
  status=$?
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  if [ "$status" != 0 ]; then
    echo "--- server log ($dir/server.log) ---" >&2
    cat "$dir/server.log" >&2 || true
  fi
  rm -rf "$dir"
  exit "$status"
}
trap finish EXIT

base=http://127.0.0.1:$port
for _ in $(seq 1 100); do curl -fs "$base/readyz" >/dev/null && break; sleep 0.1; done
token=$(curl -fs -H 'Content-Type: application/json' \
  -d '{"username":"conformance","password":"quiet river stones","first_name":"Con","last_name":"Formance"}' \
  "$base/api/register/" | python3 -c 'import sys, json; print(json.load(sys.stdin)["token"])')

# A real conversation for the {id} paths (a random id is only ever a 404):
# a second user, and the contact between them.
curl -fs -H 'Content-Type: application/json' \
  -d '{"username":"conformance2","password":"quiet river stones"}' \
  "$base/api/register/" >/dev/null
conversation=$(curl -fs -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
  -d '{"username":"conformance2"}' "$base/api/contacts/" \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)["pk"])')

# And a group of the two, for the /api/groups/{id}/ paths.
group=$(curl -fs -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
  -d '{"title":"conformance","members":[2]}' "$base/api/groups/" \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)["pk"])')

# A message in the conversation, for the /api/messages/{id}/ paths (sent
# over the WebSocket, the only way to send one).
message=$(python3 scripts/ws.py "ws://127.0.0.1:$port/chat/" "$token" \
  "{\"type\": \"message\", \"data\": {\"to\": \"$conversation\", \"content\": \"conformance\"}}" \
  | python3 -c 'import sys, json
for line in sys.stdin:
    frame = json.loads(line)
    if frame.get("type") == "message_response":
        print(frame["data"]["id"])')

# An invitation for the /api/invitations/{id}/ paths: a third user puts the
# first in a group, which asks the first's consent (C9).
token3=$(curl -fs -H 'Content-Type: application/json' \
  -d '{"username":"conformance3","password":"quiet river stones"}' \
  "$base/api/register/" | python3 -c 'import sys, json; print(json.load(sys.stdin)["token"])')
invite() {
  curl -fs -H 'Content-Type: application/json' -H "Authorization: Bearer $token3" \
    -d '{"title":"invitation","members":[1]}' "$base/api/groups/" \
    | python3 -c 'import sys, json; print(json.load(sys.stdin)["pk"])'
}
to_accept=$(invite)
to_decline=$(invite)
# A file for the /api/attachments/{id}/ paths: a small PNG (so its
# thumbnail exists too).
attachment=$(python3 -c 'import base64, sys
sys.stdout.buffer.write(base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="))' \
  | curl -fs -H "Authorization: Bearer $token" -H 'Content-Type: image/png' --data-binary @- \
    "$base/api/attachments/?name=dot.png" \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)["id"])')
echo "conversation $conversation, group $group, message $message, invitations $to_accept $to_decline, attachment $attachment"

# From the temporary directory: schemathesis keeps its cache in the working
# directory, which must not be the repository; its config names the
# conversation, the group, the message, the invitations and the file for
# their paths.
cd "$dir"
cat > schemathesis.toml <<TOML
[parameters]
"path.id" = "$conversation"

[[operations]]
include-path-regex = "^/api/groups/"
parameters = { "path.id" = "$group", "path.user_id" = 2 }

[[operations]]
include-path-regex = "^/api/messages/"
parameters = { "path.id" = $message }

[[operations]]
include-path-regex = "^/api/attachments/.+"
parameters = { "path.id" = "$attachment" }

[[operations]]
include-path-regex = "^/api/invitations/.*/accept/"
parameters = { "path.id" = "$to_accept" }

[[operations]]
include-path-regex = "^/api/invitations/.*/decline/"
parameters = { "path.id" = "$to_decline" }
TOML
# Signing out (this device or every device) revokes the token every other
# operation uses (they would all answer 401 after it and test nothing), so
# those run last, alone.
revoking=/api/logout/
revoking_all=/api/logout/everywhere/
run() {
  schemathesis run "$base/openapi.json" \
    --header "Authorization: Bearer $token" \
    --max-examples "$EXAMPLES" \
    --checks all --exclude-checks positive_data_acceptance \
    --seed 1 "$@"
}
run --exclude-path "$revoking" --exclude-path "$revoking_all"
run --include-path "$revoking"
run --include-path "$revoking_all"
