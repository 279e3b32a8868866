#!/usr/bin/env bash
# Starts the suite (embedded default in a temporary data dir, a program_admin
# and a backend API key of program "dev"), validates the gateway's
# /openapi.json with openapi-spec-validator, creates program "dev" and one
# member through the gateway, and fuzzes every documented route with
# schemathesis: no 5xx, every status documented, every answer matching its
# schema. scripts/schemathesis.toml pins every program id (path, query and
# body) to "dev" and member ids to that member, so that the calls pass the
# edge's checks and reach the services instead of ending in 401/403.
#   SCHEMATHESIS_EXAMPLES  examples per operation [default: 30]
#   SCHEMATHESIS_VENV      where the pinned tools are installed [default: .ci/.venv-api]
#   SCHEMATHESIS_BIN       a launcher already built (CI passes the one its
#                          test step built) [default: build it here]
# Further arguments go to `schemathesis run`, e.g.
#   scripts/schemathesis.sh --include-path-regex purchases --report har
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${SCHEMATHESIS_VENV:-.ci/.venv-api}"
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    schemathesis==4.32.5 openapi-spec-validator==0.9.0
fi

bin="${SCHEMATHESIS_BIN:-}"
if [ -z "$bin" ]; then
  # SCHEMATHESIS_CARGO_ARGS: extra cargo arguments (e.g. --config for a shared target dir)
  # shellcheck disable=SC2086
  cargo build --quiet --locked -p loyalty ${SCHEMATHESIS_CARGO_ARGS:-}
  bin="$CARGO_TARGET_DIR/debug/loyalty"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
grpc_port=$(free_port)
data=$(mktemp -d)
new_key() { echo "lk_$1_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"; }
hash_of() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
# most routes want a program_admin; redeeming coupons and partner exchanges
# want a backend (point of sale) key: schemathesis.toml picks per operation
export LOYALTY_FUZZ_ADMIN_KEY LOYALTY_FUZZ_BACKEND_KEY LOYALTY_FUZZ_MEMBER_ID
LOYALTY_FUZZ_ADMIN_KEY=$(new_key fuzz)
LOYALTY_FUZZ_BACKEND_KEY=$(new_key fuzzpos)

LOYALTY_API_KEYS="fuzz:dev:program_admin:$(hash_of "$LOYALTY_FUZZ_ADMIN_KEY"),fuzzpos:dev:backend:$(hash_of "$LOYALTY_FUZZ_BACKEND_KEY")" \
  LOYALTY_LOG=warn \
  LOYALTY_GATEWAY_RATE_LIMIT=0 \
  "$bin" --data-dir "$data" --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
  >"$data/suite.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

base="http://127.0.0.1:$http_port"
for _ in $(seq 150); do
  curl -sf "$base/readyz" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/suite.log" >&2; exit 1; }
  sleep 0.2
done
curl -sf "$base/readyz" >/dev/null || { echo "the suite did not become ready" >&2; cat "$data/suite.log" >&2; exit 1; }

curl -sf "$base/openapi.json" >"$data/openapi.json"
"$venv/bin/openapi-spec-validator" "$data/openapi.json"
config=scripts/schemathesis.toml
# every program id and member id the document has must be pinned
python3 scripts/schemathesis_pins.py "$data/openapi.json" "$config"

# program "dev" (idempotent)
call() { # method path body
  curl -sS -X "$1" "$base$2" -H "x-api-key: $LOYALTY_FUZZ_ADMIN_KEY" \
    -H 'content-type: application/json' --data "$3" -o "$data/answer.json" -w '%{http_code}'
}
status=$(call POST /v1/programs '{"program": {"programId": "dev", "name": "Fuzzing", "currency": "CNY",
  "timeZone": "Asia/Shanghai", "tiers": [{"code": "GREEN", "name": "Green", "threshold": "0"},
  {"code": "GOLD", "name": "Gold", "threshold": "100000"}], "qualifyingMetric": "QUALIFYING_METRIC_SPEND",
  "qualifyingWindow": {"rollingMonths": 12}, "evaluationPolicy": {"anniversaryMonths": 12}}}')
[ "$status" = 200 ] || { echo "creating program dev: $status $(cat "$data/answer.json")" >&2; exit 1; }
# one of each resource other operations address, so that they find it
# instead of answering 404 (ids pinned in schemathesis.toml)
make() { # what method path body [json path of the id]
  local what=$1 status
  status=$(call "$2" "$3" "$4")
  [ "$status" = 200 ] || { echo "creating the $what: $status $(cat "$data/answer.json")" >&2; exit 1; }
  [ -z "${5:-}" ] || python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$data/answer.json" "$5"
}
export LOYALTY_FUZZ_ITEM_ID LOYALTY_FUZZ_POOL_ID LOYALTY_FUZZ_REDEMPTION_ID LOYALTY_FUZZ_RULE_ID
LOYALTY_FUZZ_MEMBER_ID=$(make member POST /v1/programs/dev/members \
  '{"externalId": "fuzz-member", "enrolmentChannel": "app"}' member.memberId)
make points POST "/v1/programs/dev/members/$LOYALTY_FUZZ_MEMBER_ID:adjust" \
  '{"points": "100000", "reason": "fuzzing", "idempotencyKey": "fuzz-points"}'
LOYALTY_FUZZ_ITEM_ID=$(make "catalog item" POST /v1/programs/dev/catalog/items \
  '{"item": {"kind": "CATALOG_ITEM_KIND_GOODS", "name": "Tea cup", "pointsCost": "100",
  "unlimitedStock": true, "active": true}, "idempotencyKey": "fuzz-item"}' item.itemId)
LOYALTY_FUZZ_REDEMPTION_ID=$(make redemption POST "/v1/programs/dev/members/$LOYALTY_FUZZ_MEMBER_ID/redemptions" \
  "{\"itemId\": \"$LOYALTY_FUZZ_ITEM_ID\", \"quantity\": \"1\", \"idempotencyKey\": \"fuzz-redeem\"}" redemption.redemptionId)
LOYALTY_FUZZ_POOL_ID=$(make "coupon pool" POST /v1/programs/dev/coupon-pools \
  '{"pool": {"name": "Welcome", "description": "5 off", "discount": {"minorUnits": "500", "currency": "CNY"},
  "validDays": 30, "maxIssued": "1000"}, "idempotencyKey": "fuzz-pool"}' pool.poolId)
LOYALTY_FUZZ_RULE_ID=$(make "earning rule" POST /v1/programs/dev/earning-rules \
  '{"name": "Fuzz bonus", "enabled": true, "purchase": {"condition": {}, "fixedPoints": "10"}}' rule.ruleId)
make group POST /v1/programs/dev/groups '{"groupId": "fuzz-group", "name": "Fuzzing"}'
make segment POST /v1/programs/dev/segments '{"segmentId": "fuzz-segment", "name": "Green",
  "rule": {"condition": {"field": "SEGMENT_FIELD_TIER", "operator": "SEGMENT_OPERATOR_EQ", "text": "GREEN"}}}'

"$venv/bin/schemathesis" --config-file "$config" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
  --seed 1 \
  --generation-database none \
  --workers 2 \
  --request-timeout 10 \
  --no-color \
  "$@"
