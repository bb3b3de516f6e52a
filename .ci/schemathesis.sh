#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI document with schemathesis.
#
# Run from anywhere as `bash .ci/schemathesis.sh` (CI runs it after `cargo test`). It:
#   1. makes (or reuses) a Python venv under target/ with a pinned schemathesis;
#   2. builds `shipgate` and creates a fresh database on the local Postgres
#      (127.0.0.1:5432, trust auth, role postgres);
#   3. starts `shipgate serve` on a free port with a random admin token and high rate limits;
#   4. applies a small simulated app and makes a release and a rollout, so reads find data;
#   5. runs `schemathesis run` on /api/v1/openapi.json with the admin token and a bounded
#      number of examples per operation, failing on any 5xx or response that breaks the schema;
#   6. always stops the server and drops the database.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 25), SCHEMATHESIS_SEED (default fixed, so CI
# repeats itself; `random` draws one, printed so a failure can be replayed), PG_HOST/PG_PORT
# (default 127.0.0.1:5432).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-25}
SEED=${SCHEMATHESIS_SEED:-20261201}
if [[ "$SEED" == random ]]; then SEED=$RANDOM$RANDOM; fi
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
VENV="$ROOT/target/schemathesis-venv"
WORK=$(mktemp -d "$ROOT/target/schemathesis-run.XXXXXX")
DATABASE="shipgate_schemathesis_$$"
SERVER_PID=""
DATABASE_CREATED=0

cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if ((rc != 0)) && [[ -f "$WORK/server.log" ]]; then
        echo "--- last 40 lines of the server's log" >&2
        tail -n 40 "$WORK/server.log" >&2 || true
    fi
    if ((DATABASE_CREATED)); then
        dropdb --if-exists -h "$PG_HOST" -p "$PG_PORT" -U postgres "$DATABASE" || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. schemathesis -------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/schemathesis" ]] \
    || [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != *"$SCHEMATHESIS_VERSION"* ]]; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/schemathesis" --version

# --- 2. binary and database ------------------------------------------------------------------
cargo build --quiet -p shipgate --bin shipgate
createdb -h "$PG_HOST" -p "$PG_PORT" -U postgres "$DATABASE"
DATABASE_CREATED=1

# --- 3. server -------------------------------------------------------------------------------
TOKEN=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
(( ${#TOKEN} == 32 )) || { echo "could not make a token" >&2; exit 1; }
# A port picked by the kernel (`:0`), read back from the line the server prints.
: >"$WORK/server.out"
DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT/$DATABASE" \
SHIPGATE_LISTEN=127.0.0.1:0 \
SHIPGATE_ADMIN_TOKEN=$TOKEN \
SHIPGATE_MASTER_KEY=$(head -c 32 /dev/urandom | base64) \
SHIPGATE_DATA_DIR="$WORK/data" \
SHIPGATE_RATE_LIMIT_PER_CLIENT=1000000 \
SHIPGATE_RATE_LIMIT_PER_TOKEN=1000000 \
SHIPGATE_STEP_POLL_INTERVAL=1s \
RUST_LOG=${RUST_LOG:-warn} \
    "$ROOT/target/debug/shipgate" serve >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 150); do
    BASE=$(sed -n 's/^shipgate listening on \(http:\/\/[^ ]*\)$/\1/p' "$WORK/server.out" | head -n 1)
    [[ -n "$BASE" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited before listening" >&2; exit 1; }
    sleep 0.2
done
[[ -n "$BASE" ]] || { echo "the server did not say where it listens within 30s" >&2; exit 1; }
echo "server at $BASE (database $DATABASE)"

# --- 4. data ---------------------------------------------------------------------------------
api() {
    local method=$1 path=$2 content_type=$3 body=$4
    curl --silent --show-error --fail-with-body --max-time 30 -X "$method" \
        -H "Authorization: Bearer $TOKEN" -H "Content-Type: $content_type" \
        --data-binary "$body" "$BASE$path"
    echo
}
api PUT /api/v1/apps/shop application/yaml '
app: shop
repository: acme/shop
webhook_secret: schemathesis-webhook-secret
components: [web, api]
environments:
  - name: staging
    targets:
      web: { provider: simulated, latency: 100ms }
      api: { provider: simulated, latency: 100ms }
    plan:
      - name: all
        deploy: [api, web]
        gates:
          - health: { components: [api, web], interval: 1s, timeout: 1s, failures: 2, successes: 1 }
        on_failure: rollback
  - name: production
    targets:
      web: { provider: simulated, latency: 100ms }
      api: { provider: simulated, latency: 100ms }
    plan:
      - name: all
        deploy: [api, web]
        gates: [ { approval: {} } ]
        on_failure: pause
'
api POST /api/v1/apps/shop/releases application/json \
    '{"version": "1.0.0", "artifacts": {"web": "web:1.0.0", "api": "api:1.0.0"}, "notes": "first"}'
ROLLOUT=$(api POST /api/v1/apps/shop/environments/staging/rollouts application/json '{"release": "1.0.0"}' \
    | sed -n 's/^{"id":"\([0-9a-f-]*\)".*/\1/p')
[[ -n "$ROLLOUT" ]] || { echo "could not start a rollout" >&2; exit 1; }
# Let it finish, so a fuzzed `?wait=` on it answers at once instead of long-polling.
for _ in $(seq 1 6); do
    api GET "/api/v1/rollouts/$ROLLOUT?wait=10s" application/json '' | grep -q '"finished":true' && break
done
TOKEN_ID=$(api POST /api/v1/tokens application/json '{"name": "fuzzed", "scopes": ["read"]}' \
    | sed -n 's/.*"id":"\([0-9a-f-]*\)".*/\1/p')
api POST /api/v1/users application/json \
    '{"username": "fuzzed", "password": "a long enough password", "role": "viewer"}'

# Path parameters name the data above most of the time, and are fuzzed the rest of it.
cat >"$WORK/schemathesis.toml" <<EOF
[dictionaries.apps]
values = ["shop"]
[dictionaries.environments]
values = ["staging", "production"]
[dictionaries.versions]
values = ["1.0.0"]
[dictionaries.ids]
values = ["$ROLLOUT", "$TOKEN_ID"]
[dictionaries.usernames]
values = ["fuzzed"]

[parameters]
"path.app" = { dictionary = "apps", probability = 0.7 }
"path.environment" = { dictionary = "environments", probability = 0.7 }
"path.version" = { dictionary = "versions", probability = 0.5 }
"path.id" = { dictionary = "ids", probability = 0.5 }
"path.username" = { dictionary = "usernames", probability = 0.3 }
EOF

# --- 5. schemathesis -------------------------------------------------------------------------
# Excluded, with reasons:
# - GET /api/v1/rollouts/{id}/events is a server-sent event stream that stays open until the
#   rollout ends; a fuzzer's request would hang until its timeout. Its 404 and auth paths are
#   the same code as GET /api/v1/rollouts/{id}, which is fuzzed.
# Every other route is fuzzed, the webhook receivers included (they must answer 4xx, not 5xx).
echo "schemathesis: seed $SEED, at most $MAX_EXAMPLES examples per operation"
cd "$WORK"
"$VENV/bin/schemathesis" --no-color --config-file "$WORK/schemathesis.toml" run "$BASE/api/v1/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth \
    --exclude-path '/api/v1/rollouts/{id}/events' \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 20 \
    --suppress-health-check all \
    --generation-database none
