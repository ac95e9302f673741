#!/usr/bin/env bash
# A good client's latency while a flood of fresh keys fills the memory store (docs/limits.md,
# "Memory"). Not run in CI.
#
# One server (memory store, `--memory-limit`, one hourly `detailed_metric` rule on `user_id`, and a
# `good` rule never reached). A good client sends 1,000 requests/s on 10 keys of its own (`tollgate
# bench --rate 1000`, latency from each request's scheduled send time) for DURATION in each phase:
#   alone   nothing else running
#   same    beside a flood of the same shape on 16 fixed keys: the same request load, no new key
#   fresh   beside a flood of 16 fresh keys per request (`--users 10^12`): every key is new, the
#           store fills and evicts
# The floods run at FLOOD_RATE requests/s (open loop), or as fast as they can with
# FLOOD_RATE=closed (64 in flight), at nice 19. Prints, per phase: the good client's p50/p99/p999,
# the flood's rate, the server's CPU per flood request, and after the fresh flood the store's keys,
# bytes and the server's RSS.
#
# Usage: benches/key-flood.sh                 (from anywhere)
# Env:   TOLLGATE (default: builds target/release/tollgate)   MEMORY_LIMIT=256MiB
#        FLOOD_RATE=12000 (or closed)   DURATION=15s   ROUNDS=1
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MEMORY_LIMIT=${MEMORY_LIMIT:-256MiB}
FLOOD_RATE=${FLOOD_RATE:-12000}
DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-1}

for bin in curl python3; do
    command -v "$bin" >/dev/null || { echo "needs $bin on PATH" >&2; exit 1; }
done
if [[ -z ${TOLLGATE:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin tollgate)
    TOLLGATE=${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate
fi

WORK=$(mktemp -d -t tollgate-key-flood.XXXXXX)
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() {
    local f
    read -r -a f <<<"$(sed 's/.*) //' "/proc/$SERVER_PID/stat")"
    echo $((f[11] + f[12]))
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

cat >"$WORK/rules.yaml" <<EOF
domain: api
descriptors:
  - key: user_id
    detailed_metric: true
    rate_limit: { unit: hour, requests_per_unit: 1000 }
  - key: good
    rate_limit: { unit: second, requests_per_unit: 100000 }
EOF

GRPC=127.0.0.1:$(free_port)
HTTP=127.0.0.1:$(free_port)
"$TOLLGATE" serve --config "$WORK/rules.yaml" --grpc-addr "$GRPC" --http-addr "$HTTP" \
    --memory-limit "$MEMORY_LIMIT" --log-level warn 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do curl -fs "http://$HTTP/healthcheck" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$HTTP/healthcheck" >/dev/null || { cat "$WORK/server.log" >&2; exit 1; }

summary() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print("p50 %.2f ms  p99 %.2f ms  p999 %.2f ms  errors %d" % (d["p50_us"]/1e3, d["p99_us"]/1e3, d["p999_us"]/1e3, d["errors"]))' "$1"
}
good() {
    "$TOLLGATE" bench --target "http://$GRPC" --domain api --descriptor 'good=g{user}' --users 10 \
        --rate 1000 --concurrency 32 --duration "$DURATION" --json >"$WORK/good.json"
}
# flood VALUE: 16 descriptors `user_id=f<i>-VALUE` per request, beside the good client.
flood() {
    local load=(--concurrency 64) descriptors=()
    [[ $FLOOD_RATE != closed ]] && load+=(--rate "$FLOOD_RATE")
    for i in $(seq 16); do descriptors+=(--descriptor "user_id=f$i-$1"); done
    nice -n 19 "$TOLLGATE" bench --target "http://$GRPC" --domain api "${descriptors[@]}" \
        --users 1000000000000 "${load[@]}" --duration "$DURATION" --json >"$WORK/flood.json" &
    local pid=$! before
    before=$(cpu_ticks)
    sleep 0.5
    good
    wait "$pid"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); cpu=(int(sys.argv[2])*int(sys.argv[3]))
print("  flood %.0f requests/s (x16 keys), %d errors; server CPU %.1f us per flood request" % (d["rps"], d["errors"], cpu/(d["rps"]*d["duration_s"]) if d["rps"] else 0))' \
        "$WORK/flood.json" "$(($(cpu_ticks) - before))" "$TICK_US"
}

echo "tollgate $("$TOLLGATE" --version | cut -d' ' -f2), --memory-limit $MEMORY_LIMIT, flood rate $FLOOD_RATE, $(nproc) cores"
for round in $(seq "$ROUNDS"); do
    echo "round $round"
    good
    echo "  alone: $(summary "$WORK/good.json")"
    flood same
    echo "  same:  $(summary "$WORK/good.json")"
    flood '{user}'
    echo "  fresh: $(summary "$WORK/good.json")"
done
curl -fs "http://$HTTP/metrics" | grep -E '^tollgate_memory_store_(keys|bytes|evictions_total|refusals_total)' | sed 's/^/  /'
echo "  server RSS $(awk '/VmRSS/{printf "%.0f MiB", $2/1024}' "/proc/$SERVER_PID/status")"
