#!/usr/bin/env bash
# tollgate on a Redis Cluster, through gRPC: 6 redis-server nodes (3 masters, 3 replicas, AOF on,
# as in production) on free loopback ports in a temp dir, one release `tollgate serve --store redis`,
# and `tollgate bench` open loop at 5,000/s and 10,000/s, closed loop, two descriptors per request
# (two slots, so two EVALSHAs sent concurrently), and a run where most users are over their limit
# (the over-limit cache answers them without Redis). Prints each run's JSON line and a table.
#
# Usage: benches/redis-cluster.sh            (from the repository root)
# Env:   DURATION=10s USERS=10000 CONCURRENCY=64 POOL=<--redis-pool-size, default: tollgate's>
#        TOLLGATE=path/to/tollgate (default: target/release/tollgate, built if missing)
#        LOADGEN=path/to/tollgate  (the binary whose `bench` drives the load; default: $TOLLGATE)
#        PERF=1  records `perf record -g` of tollgate and of one Redis master during the 10,000/s run
#                into $OUT/perf.data and $OUT/perf-redis.data
#        OUT=dir keeps the temp dir (logs, perf.data) instead of deleting it.
#        REPLICAS=0 builds the Cluster of 3 masters only; AOF=no turns persistence off;
#        RUNS="open-10k closed" runs only the named runs.
#        SERVE_ARGS="--grpc-threads 1" adds flags to `tollgate serve`.
set -euo pipefail

DURATION=${DURATION:-10s}
USERS=${USERS:-10000}
CONCURRENCY=${CONCURRENCY:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TOLLGATE=${TOLLGATE:-$TARGET_DIR/release/tollgate}
LOADGEN=${LOADGEN:-$TOLLGATE}

for bin in redis-server redis-cli jq curl bc /usr/bin/time; do
    command -v "$bin" >/dev/null || { echo "needs $bin on PATH" >&2; exit 1; }
done
if [[ ! -x $TOLLGATE ]]; then
    (cd "$ROOT" && cargo build --release --bin tollgate)
fi

if [[ -n ${OUT:-} ]]; then
    WORK=$OUT
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t tollgate-redis-bench.XXXXXX)
fi
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [[ -n ${OUT:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on (and not handed out earlier in this run).
USED=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ $USED == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]; then
            USED+="$p "
            echo "$p"
            return
        fi
    done
}

# CPU seconds (user + system) a process has used so far.
cpu_s() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    # Fields after the command: index 11 is utime, 12 stime (man 5 proc, fields 14 and 15).
    echo "scale=2; (${f[11]} + ${f[12]}) / $(getconf CLK_TCK)" | bc
}

# --- the Cluster -----------------------------------------------------------------------------------
REPLICAS=${REPLICAS:-1}
AOF=${AOF:-yes}
NODES=()
REDIS_PIDS=()
for i in $(seq $((3 * (REPLICAS + 1)))); do
    port=$(free_port)
    bus=$(free_port)
    dir=$WORK/redis-$port
    mkdir -p "$dir"
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --protected-mode no \
        --daemonize no --dir "$dir" --logfile "$dir/redis.log" \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
        --appendonly "$AOF" --save '' --repl-diskless-sync-delay 0 &
    PIDS+=($!)
    REDIS_PIDS+=($!)
    NODES+=("127.0.0.1:$port")
done
for node in "${NODES[@]}"; do
    for _ in $(seq 100); do
        redis-cli -p "${node#*:}" PING 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
done
redis-cli --cluster create "${NODES[@]}" --cluster-replicas "$REPLICAS" --cluster-yes >"$WORK/cluster-create.log"
for node in "${NODES[@]}"; do
    for _ in $(seq 300); do
        redis-cli -p "${node#*:}" CLUSTER INFO | grep -q 'cluster_state:ok' && break
        sleep 0.1
    done
    redis-cli -p "${node#*:}" CLUSTER INFO | grep -q 'cluster_state:ok' ||
        { echo "cluster did not reach cluster_state:ok on $node" >&2; exit 1; }
done
MASTERS=()
PORTS=("${NODES[@]#*:}")
for node in "${NODES[@]}"; do
    redis-cli -p "${node#*:}" INFO replication | grep -q 'role:master' && MASTERS+=("${node#*:}")
done
URL="redis-cluster://$(IFS=,; echo "${NODES[*]}")"

# --- tollgate --------------------------------------------------------------------------------------
cat >"$WORK/rules.yaml" <<'EOF'
domain: bench
descriptors:
  # Never reached in the load runs: every decision is a real counter update in Redis.
  - key: user_id
    rate_limit: {unit: second, requests_per_unit: 1000000}
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 1000000}
  # Five a minute: with 1,000 users at 5,000/s for 10 s, 90% of the requests are over the limit.
  - key: tight_user
    rate_limit: {unit: minute, requests_per_unit: 5}
EOF
GRPC=$(free_port)
HTTP=$(free_port)
serve_args=(serve --config "$WORK/rules.yaml" --store redis --redis-url "$URL"
    --grpc-addr "127.0.0.1:$GRPC" --http-addr "127.0.0.1:$HTTP" --log-level warn)
[[ -n ${POOL:-} ]] && serve_args+=(--redis-pool-size "$POOL")
# shellcheck disable=SC2206 # split on purpose: several flags
[[ -n ${SERVE_ARGS:-} ]] && serve_args+=($SERVE_ARGS)
"$TOLLGATE" "${serve_args[@]}" 2>"$WORK/tollgate.log" &
TG=$!
PIDS+=("$TG")
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$HTTP/healthcheck" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$HTTP/healthcheck" >/dev/null ||
    { echo "tollgate did not become healthy" >&2; cat "$WORK/tollgate.log" >&2; exit 1; }

# --- runs ------------------------------------------------------------------------------------------
metric() {
    curl -fs "http://127.0.0.1:$HTTP/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
evalsha_calls() {
    local port total=0 n
    for port in "${MASTERS[@]}"; do
        n=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' |
            sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
# CPU seconds of the masters, then of the replicas.
redis_cpu() {
    local port pid masters=0 replicas=0
    for port in "${PORTS[@]}"; do
        pid=$(redis-cli -p "$port" INFO server | tr -d '\r' | sed -n 's/^process_id://p')
        if [[ " ${MASTERS[*]} " == *" $port "* ]]; then
            masters=$(echo "$masters + $(cpu_s "$pid")" | bc)
        else
            replicas=$(echo "$replicas + $(cpu_s "$pid")" | bc)
        fi
    done
    echo "$masters $replicas"
}

# gRPC calls the server answered within 1 ms by its own clock (its latency histogram's bucket):
# from the decoded request to the encoded answer, so without the network and the wake-ups around it.
server_within_1ms() {
    curl -fs "http://127.0.0.1:$HTTP/metrics" |
        awk '$1 ~ /^tollgate_grpc_request_duration_seconds_bucket\{.*le="0.001"/ {s += $2} END {print s + 0}'
}

# Microseconds during which some runnable task waited for a CPU (PSI); 0 without /proc/pressure.
cpu_wait_us() {
    sed -n 's/^some .*total=\([0-9]*\).*/\1/p' /proc/pressure/cpu 2>/dev/null || echo 0
}

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
# run NAME DESCRIPTORS_PER_REQUEST BENCH_ARGS…
run() {
    local name=$1 per=$2
    shift 2
    [[ -z ${RUNS:-} || " $RUNS " == *" $name "* ]] || return 0
    local port
    for port in "${MASTERS[@]}"; do redis-cli -p "$port" CONFIG RESETSTAT >/dev/null; done
    local hits0 fb0 tg0 rm0 rr0 w0 t0 s0 s10 perf_pid= rperf_pid=
    hits0=$(metric tollgate_local_cache_hits_total)
    s0=$(metric tollgate_grpc_request_duration_seconds_count)
    s10=$(server_within_1ms)
    fb0=$(metric tollgate_fallback_decisions_total)
    tg0=$(cpu_s "$TG")
    read -r rm0 rr0 < <(redis_cpu)
    w0=$(cpu_wait_us)
    t0=$(date +%s%N)
    if [[ -n ${PERF:-} && $name == open-10k ]]; then
        perf record -g -F 999 -p "$TG" -o "$WORK/perf.data" 2>"$WORK/perf.log" &
        perf_pid=$!
        perf record -g -F 999 -p "$(redis-cli -p "${MASTERS[0]}" INFO server | tr -d '\r' |
            sed -n 's/^process_id://p')" -o "$WORK/perf-redis.data" 2>"$WORK/perf-redis.log" &
        rperf_pid=$!
    fi
    local json
    json=$(/usr/bin/time -f '%U %S' -o "$WORK/loadgen.time" "$LOADGEN" bench --target "http://127.0.0.1:$GRPC" --domain bench --duration "$DURATION" --json "$@")
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" "$rperf_pid"
        wait "$perf_pid" "$rperf_pid" || true
    fi
    local hits fb evals tg rm rr psi lg srv
    srv=$(echo "scale=2; 100 * ($(server_within_1ms) - $s10) / ($(metric tollgate_grpc_request_duration_seconds_count) - $s0)" | bc)
    lg=$(awk '{printf "%.2f", $1 + $2}' "$WORK/loadgen.time")
    psi=$(( ($(cpu_wait_us) - w0) * 100000 / ($(date +%s%N) - t0) ))
    hits=$(($(metric tollgate_local_cache_hits_total) - hits0))
    fb=$(($(metric tollgate_fallback_decisions_total) - fb0))
    evals=$(evalsha_calls)
    tg=$(printf '%.2f' "$(echo "$(cpu_s "$TG") - $tg0" | bc)")
    read -r rm rr < <(redis_cpu)
    rm=$(printf '%.2f' "$(echo "$rm - $rm0" | bc)")
    rr=$(printf '%.2f' "$(echo "$rr - $rr0" | bc)")
    json=$(jq -c --arg name "$name" --argjson per "$per" --argjson hits "$hits" --argjson fb "$fb" \
        --argjson evals "$evals" --argjson tg "$tg" --argjson rm "$rm" --argjson rr "$rr" --argjson psi "$psi" --argjson lg "$lg" --argjson srv "$srv" \
        '{run: $name} + . + {decisions: (.requests * $per), evalsha: $evals, cache_hits: $hits, fallback: $fb,
          tollgate_cpu_s: $tg, redis_masters_cpu_s: $rm, redis_replicas_cpu_s: $rr, loadgen_cpu_s: $lg, cpu_pressure_pct: $psi, server_within_1ms_pct: $srv}' <<<"$json")
    echo "$json"
    echo "$json" >>"$RESULTS"
}

open=(--users "$USERS" --concurrency "$CONCURRENCY")
# Warm-up, not reported: each gRPC thread opens its own connections to the masters on first use
# (fred waits 100-200 ms before a first connect; the cluster pool serves meanwhile).
"$LOADGEN" bench --target "http://127.0.0.1:$GRPC" --domain bench --duration 2s "${open[@]}" \
    --descriptor 'user_id={user}' --descriptor 'ip={user}' --rate 2000 >/dev/null
run open-5k 1 "${open[@]}" --descriptor 'user_id={user}' --rate 5000
run open-10k 1 "${open[@]}" --descriptor 'user_id={user}' --rate 10000
run closed 1 "${open[@]}" --descriptor 'user_id={user}'
run open-5k-2desc 2 "${open[@]}" --descriptor 'user_id={user}' --descriptor 'ip={user}' --rate 5000
run over-limit 1 --users 1000 --concurrency "$CONCURRENCY" --descriptor 'tight_user={user}' --rate 5000

echo
printf '%-14s %9s %9s %7s %7s %7s %7s %9s %9s %9s %8s %8s %19s %4s %7s\n' run target rps p50_us p99_us p999_us \
    max_us denied decisions evalsha cache fallback cpu_tg/m/r/lg psi% srv1ms%
jq -r '[.run, (.target_rps // "closed"), (.rps | floor), .p50_us, .p99_us, .p999_us, .max_us,
        .denied, .decisions, .evalsha, .cache_hits, .fallback,
        "\(.tollgate_cpu_s)/\(.redis_masters_cpu_s)/\(.redis_replicas_cpu_s)/\(.loadgen_cpu_s)", .cpu_pressure_pct,
        .server_within_1ms_pct] | @tsv' "$RESULTS" |
    while IFS=$'\t' read -r a b c d e f g h i j k l m n o; do
        printf '%-14s %9s %9s %7s %7s %7s %7s %9s %9s %9s %8s %8s %19s %4s %7s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$k" "$l" "$m" "$n" "$o"
    done
echo "(latencies in µs; evalsha = EVALSHA calls on the masters; cache = tollgate_local_cache_hits_total;"
echo " fallback = decisions answered by --on-store-error after a store timeout or an open breaker;"
echo " cpu_tg/m/r/lg = CPU seconds of tollgate / the 3 masters / the 3 replicas / the load generator;"
echo " psi% = share of the run during which some task waited for a CPU: above ~20%, tails are queueing;"
echo " srv1ms% = calls the server answered within 1 ms by its own clock, store round trip included)"
