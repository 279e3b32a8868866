#!/usr/bin/env bash
# Starts the suite (embedded default in a temporary data dir, a backend API
# key of program "dev"), validates the gateway's /openapi.json with
# openapi-spec-validator and fuzzes every documented route with schemathesis:
# no 5xx, every status documented, every answer matching its schema.
#   SCHEMATHESIS_EXAMPLES  examples per operation [default: 30]
#   SCHEMATHESIS_VENV      where the pinned tools are installed [default: .ci/.venv-api]
#   SCHEMATHESIS_BIN       a launcher already built (CI passes the one its
#                          test step built) [default: build it here]
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
key="lk_fuzz_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)

LOYALTY_API_KEYS="fuzz:dev:backend:$hash" LOYALTY_LOG=warn \
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

"$venv/bin/schemathesis" run "$base/openapi.json" \
  --header "x-api-key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-30}" \
  --seed 1 \
  --generation-database none \
  --workers 2 \
  --request-timeout 10 \
  --no-color
