#!/usr/bin/env bash
# Reproduces docs/performance.md's gRPC figures: a release server with the memory store on free ports, the
# load generator on the same machine, closed loop then open loop; prints each run's JSON.
#
#   benches/grpc.sh                 # 1 run of each
#   RUNS=3 DURATION=10s benches/grpc.sh
#   TOLLGATE=path/to/tollgate benches/grpc.sh   # skip the build
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1}
DURATION=${DURATION:-10s}
RATE=${RATE:-25000}
CONCURRENCY=${CONCURRENCY:-64}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-256}
USERS=${USERS:-1000}

if [[ -z "${TOLLGATE:-}" ]]; then
  cargo build --release --quiet
  TOLLGATE="${CARGO_TARGET_DIR:-target}/release/tollgate"
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1000 users at 50,000/s is 50 hits per user per second: every decision is counted, all admitted.
cat >"$work/bench.yaml" <<'YAML'
domain: bench
descriptors:
  - key: user_id
    rate_limit:
      unit: second
      requests_per_unit: 1000
YAML

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port)
http_port=$(free_port)

"$TOLLGATE" serve --config "$work/bench.yaml" --log-level warn \
  --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port" &
server_pid=$!
for _ in $(seq 100); do
  if curl -fs "http://127.0.0.1:$http_port/healthcheck" >/dev/null 2>&1; then break; fi
  sleep 0.1
done

bench() {
  "$TOLLGATE" bench --target "http://127.0.0.1:$grpc_port" --domain bench \
    --descriptor 'user_id={user}' --users "$USERS" --duration "$DURATION" --json "$@"
}
echo "# $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')" >&2
for run in $(seq "$RUNS"); do
  echo "# closed loop, run $run" >&2
  bench --concurrency "$CONCURRENCY"
done
for run in $(seq "$RUNS"); do
  echo "# open loop at $RATE/s, run $run" >&2
  bench --concurrency "$OPEN_CONCURRENCY" --rate "$RATE"
done
