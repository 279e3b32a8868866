#!/usr/bin/env bash
# Gateway benchmarks (docs/benchmarks/gateway.md): one unary read through the
# gateway (REST over HTTP/1.1 and h2c, gRPC pass-through) against the same
# call straight to the services over gRPC and a bare tonic hello-world, all
# in one run, with h2load at a fixed concurrency. Release builds.
#   N (requests per case, default 20000), C (concurrent connections, default 16)
#   PATH_REST, RPC: the read to measure (default: rewards GetServiceInfo)
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
N="${N:-20000}"; C="${C:-16}"
PATH_REST="${PATH_REST:-/v1/rewards/info}"
RPC="${RPC:-/loyalty.rewards.v1.RewardsService/GetServiceInfo}"
BODY_HEX="${BODY_HEX:-0000000000}"   # the gRPC request frame (empty message)
cargo build --quiet --release --locked -p loyalty --bin loyalty
cargo build --quiet --release --locked -p loyalty-gateway --example bench_hello
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
key="lk_bench_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
LOYALTY_API_KEYS="bench:dev:backend:$hash" LOYALTY_LOG=warn LOYALTY_GATEWAY_RATE_LIMIT=0 \
  "$bin/loyalty" --data-dir "$work" --listen 127.0.0.1:50081 --http-listen 127.0.0.1:8081 >"$work/suite.log" 2>&1 &
suite=$!
"$bin/examples/bench_hello" 127.0.0.1:50090 >"$work/hello.log" 2>&1 &
hello=$!
trap 'kill $suite $hello 2>/dev/null; wait $suite $hello 2>/dev/null; rm -rf "$work"; true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:8081/readyz >/dev/null && break; sleep 0.2; done
printf '%s' "$BODY_HEX" | xxd -r -p >"$work/frame"
# every measured call must succeed: check the gRPC status once per target
for target in "127.0.0.1:50081" "127.0.0.1:8081"; do
  st=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_code}' -D "$work/h" --data-binary @"$work/frame" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: $key" "http://$target$RPC"; \
    grep -i '^grpc-status' "$work/h" | tr -d '\r')
  case "$st" in *"grpc-status: 0"*|200) ;; *) echo "gRPC check at $target failed: $st" >&2; exit 1 ;; esac
done
test "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://127.0.0.1:8081$PATH_REST")" = 200
printf '\0\0\0\0\0' >"$work/hello_frame"
run() { # name, h2load args…
  local name=$1; shift
  h2load -n "$N" -c "$C" -m 1 --log-file="$work/$name.log" "$@" >"$work/$name.out" 2>&1
  local rps; rps=$(grep -Eo 'finished in [^,]+, [0-9.]+ req/s' "$work/$name.out" | grep -Eo '[0-9.]+ req/s')
  printf '%-28s %14s  %s\n' "$name" "$rps" "$(python3 services/gateway/bench/percentiles.py "$work/$name.log")"
}
grpc=(-H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: $key")
echo "uptime: $(uptime)"
run hello-world-tonic -d "$work/hello_frame" -H 'content-type: application/grpc' -H 'te: trailers' \
  http://127.0.0.1:50090/grpc.health.v1.Health/Check
run grpc-direct -d "$work/frame" "${grpc[@]}" "http://127.0.0.1:50081$RPC"
run grpc-via-gateway -d "$work/frame" "${grpc[@]}" "http://127.0.0.1:8081$RPC"
run rest-gateway-h2c -H "x-api-key: $key" "http://127.0.0.1:8081$PATH_REST"
run rest-gateway-http1 --h1 -H "x-api-key: $key" "http://127.0.0.1:8081$PATH_REST"
echo "uptime: $(uptime)"
