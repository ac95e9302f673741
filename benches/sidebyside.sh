#!/usr/bin/env bash
# tollgate and Kuadrant/limitador side by side, same machine, same rule, runs alternating.
#
# Both servers get one rule: per user (descriptor `user_id`, limitador's `descriptors[0].user_id`),
# fixed window of one minute, never reached, so every decision is a real counter update. For each
# store (memory, and a standalone redis-server this script starts on a free loopback port without
# persistence) and each load, the two servers are started fresh one after the other, the one that
# goes first swapping every round:
#   closed  `tollgate bench`, closed loop, 64 in flight, 100,000 users
#   open    `tollgate bench --rate`, open loop at the same rate for both (memory 40,000/s, Redis
#           10,000/s), latency from each request's scheduled send time
#   h2load  h2load, one key, 8 connections x 16 streams, posting one prebuilt gRPC request
#           (benches/rls-request.py) to ShouldRateLimit; latency is h2load's own (mean, max)
# Each measurement follows a warm-up of the same load. Server CPU per decision is the server
# process's user + system time (/proc/PID/stat) over the measured interval divided by decisions.
# "CPU wait ms" is the time some task on the machine waited for a CPU (/proc/pressure/cpu, `some`)
# during the measurement: how busy the neighbours were. Before the loads, a rule of 5 an hour
# checks that each server counts with each store.
#
# Usage: benches/sidebyside.sh [--json]     (from anywhere; not run in CI)
#   --json        one JSON object (every measurement and the summary) on stdout; tables on stderr.
# Env:
#   LIMITADOR_BIN a limitador-server release build (Kuadrant/limitador, e.g. at commit 2981b2b).
#                 Without it only tollgate's half runs, and the script says so first thing.
#   TOLLGATE      a tollgate binary (default: builds target/release/tollgate)
#   RUNS=3        rounds                    STORES="memory redis"   LOADS="closed open h2load"
#   DURATION=10s  each measurement          WARMUP=2s               USERS=100000
#   CONCURRENCY=64 (closed)  OPEN_CONCURRENCY=256  MEMORY_RATE=40000  REDIS_RATE=10000
#   H2LOAD_CLIENTS=8  H2LOAD_STREAMS=16
#   TASKSET=0     runs each server and its load generator under `taskset -c 0` (one core for both,
#                 as a sidecar under a CPU quota beside its Envoy); Redis stays unpinned, standing
#                 for a store on another host.
#   OUT=file      also writes every measurement there, one JSON object a line.
set -euo pipefail

JSON=0
for arg in "$@"; do
    case $arg in
        --json) JSON=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
STORES=${STORES:-memory redis}
LOADS=${LOADS:-closed open h2load}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
USERS=${USERS:-100000}
CONCURRENCY=${CONCURRENCY:-64}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-256}
MEMORY_RATE=${MEMORY_RATE:-40000}
REDIS_RATE=${REDIS_RATE:-10000}
H2LOAD_CLIENTS=${H2LOAD_CLIENTS:-8}
H2LOAD_STREAMS=${H2LOAD_STREAMS:-16}
TASKSET=${TASKSET:-}

if [[ -z ${LIMITADOR_BIN:-} ]]; then
    echo "LIMITADOR_BIN is not set: measuring tollgate only. For the side-by-side, point LIMITADOR_BIN" >&2
    echo "at a limitador-server release build (Kuadrant/limitador, e.g. at commit 2981b2b)." >&2
    SERVERS=(tollgate)
else
    [[ -x $LIMITADOR_BIN ]] || { echo "LIMITADOR_BIN=$LIMITADOR_BIN is not an executable" >&2; exit 1; }
    SERVERS=(tollgate limitador)
fi

needs=(curl jq python3 taskset)
[[ " $STORES " == *" redis "* ]] && needs+=(redis-server redis-cli)
[[ " $LOADS " == *" h2load "* ]] && needs+=(h2load)
for bin in "${needs[@]}"; do
    command -v "$bin" >/dev/null || { echo "needs $bin on PATH (h2load: Debian's nghttp2-client)" >&2; exit 1; }
done

if [[ -z ${TOLLGATE:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet --bin tollgate)
    TOLLGATE=${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate
fi
PIN=()
[[ -n $TASKSET ]] && PIN=(taskset -c "$TASKSET")

WORK=$(mktemp -d -t tollgate-sidebyside.XXXXXX)
SERVER_PID=""
REDIS_PID=""
cleanup() {
    stop_server
    if [[ -n $REDIS_PID ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { if ((JSON)); then echo "$@" >&2; else echo "$@"; fi; }
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# CPU time (user + system, all threads) of a process so far, in clock ticks.
cpu_ticks() {
    local stat f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) ||
        { echo "the server (pid $1) exited during the run; its log:" >&2; cat "$WORK/server.log" >&2; return 1; }
    read -r -a f <<<"${stat##*) }"
    # After the command: index 11 is utime, 12 stime (man 5 proc, fields 14 and 15).
    echo $((f[11] + f[12]))
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# Microseconds during which some runnable task waited for a CPU (PSI): how busy the neighbours were.
cpu_wait_us() { sed -n 's/^some .*total=\([0-9]*\).*/\1/p' /proc/pressure/cpu 2>/dev/null || echo 0; }

# --- rules: the same limit for both servers ---------------------------------------------------------
# rules NAME MAX SECONDS UNIT: $WORK/NAME.yaml (tollgate) and $WORK/NAME.limitador.yaml.
rules() {
    cat >"$WORK/$1.yaml" <<EOF
domain: bench
descriptors:
  - key: user_id
    rate_limit: {unit: $4, requests_per_unit: $2, algorithm: fixed_window}
EOF
    cat >"$WORK/$1.limitador.yaml" <<EOF
- namespace: bench
  max_value: $2
  seconds: $3
  conditions: []
  variables:
    - descriptors[0].user_id
EOF
}
rules load 1000000000 60 minute
rules counting 5 3600 hour

REDIS_PORT=""
if [[ " $STORES " == *" redis "* ]]; then
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --dir "$WORK" --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    redis-cli -p "$REDIS_PORT" PING | grep -q PONG || { echo "redis-server did not start" >&2; exit 1; }
fi

# --- servers ---------------------------------------------------------------------------------------
GRPC_PORT=""
# start_server SERVER STORE RULES: fresh process on free ports; sets SERVER_PID and GRPC_PORT.
start_server() {
    local server=$1 store=$2 rules=$3 http health
    GRPC_PORT=$(free_port)
    http=$(free_port)
    if [[ $store == redis ]]; then redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null; fi
    case $server in
        tollgate)
            local args=(serve --config "$WORK/$rules.yaml" --store "$store" --log-level warn
                --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$http")
            [[ $store == redis ]] && args+=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
            "${PIN[@]}" "$TOLLGATE" "${args[@]}" 2>"$WORK/server.log" &
            health=/healthcheck
            ;;
        limitador)
            local args=(-b 127.0.0.1 -p "$GRPC_PORT" -B 127.0.0.1 -P "$http" "$WORK/$rules.limitador.yaml")
            if [[ $store == redis ]]; then args+=(redis "redis://127.0.0.1:$REDIS_PORT"); else args+=(memory); fi
            "${PIN[@]}" "$LIMITADOR_BIN" "${args[@]}" 2>"$WORK/server.log" &
            health=/status
            ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 200); do
        curl -fs "http://127.0.0.1:$http$health" >/dev/null 2>&1 && grpc_probe >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$server ($store) did not come up:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# The h2load body: one descriptor, one key for every request.
H2_BODY=$WORK/request.bin
python3 "$ROOT/benches/rls-request.py" encode --domain bench --descriptor user_id=h2load >"$H2_BODY"
H2_PATH=/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
H2_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')
# One call with h2load's body: prints the overall code, fails unless HTTP 200 with grpc-status 0.
grpc_probe() {
    curl -s --http2-prior-knowledge "${H2_HEADERS[@]}" --data-binary "@$H2_BODY" \
        -D "$WORK/probe.headers" -o "$WORK/probe.body" "http://127.0.0.1:$GRPC_PORT$H2_PATH" || return 1
    tr -d '\r' <"$WORK/probe.headers" | grep -q '^HTTP/2 200' || return 1
    tr -d '\r' <"$WORK/probe.headers" | grep -qi '^grpc-status: 0$' || return 1
    python3 "$ROOT/benches/rls-request.py" decode <"$WORK/probe.body"
}

bench() {
    "${PIN[@]}" "$TOLLGATE" bench --target "http://127.0.0.1:$GRPC_PORT" --domain bench --json "$@"
}

# --- does each server count? -----------------------------------------------------------------------
for store in $STORES; do
    for server in "${SERVERS[@]}"; do
        start_server "$server" "$store" counting
        got=$(bench --descriptor user_id=counting --users 1 --concurrency 1 --requests 20 |
            jq -r '"\(.allowed) \(.denied) \(.errors)"')
        stop_server
        [[ $got == "5 15 0" ]] ||
            { echo "$server ($store) does not count: 20 calls under a limit of 5 gave allowed/denied/errors $got" >&2; exit 1; }
    done
done
say "# each server counts with each store: 20 calls under a limit of 5 → 5 OK, 15 OVER_LIMIT"

# --- one measurement -------------------------------------------------------------------------------
# h2load prints latencies as 812us, 1.25ms, 2.00s.
to_us() {
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else print n * 1000000 }'
}
h2load_run() {
    "${PIN[@]}" h2load -c "$H2LOAD_CLIENTS" -m "$H2LOAD_STREAMS" -D "$1" -d "$H2_BODY" "${H2_HEADERS[@]}" \
        "http://127.0.0.1:$GRPC_PORT$H2_PATH"
}
# h2load's report as the JSON fields the bench prints (no quantiles: h2load gives min, mean, sd, max);
# a call finished without a 2xx status (failed, errored, timed out) is an error.
h2load_json() {
    local out=$1 rps finished s2xx mean max
    rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out")
    finished=$(sed -n 's/^requests: .* \([0-9]*\) done,.*/\1/p' "$out")
    s2xx=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' "$out")
    # time for request:  MIN  MAX  MEAN  SD  +/-SD
    read -r mean max < <(awk '/^time for request:/ { print $6, $5 }' "$out")
    jq -n --argjson rps "${rps:-0}" --argjson finished "${finished:-0}" --argjson s2xx "${s2xx:-0}" \
        --argjson mean "$(to_us "${mean:-0us}")" --argjson max "$(to_us "${max:-0us}")" \
        '{rps: $rps, requests: $finished, allowed: $s2xx, denied: 0, errors: ($finished - $s2xx),
          mean_us: $mean, max_us: $max, p50_us: null, p99_us: null}'
}
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
# measure ROUND STORE LOAD SERVER: one fresh server, a warm-up, the measured load; appends one record.
measure() {
    local round=$1 store=$2 load=$3 server=$4 rate=$MEMORY_RATE c0 c1 w0 w1 out=$WORK/load.out report
    [[ $store == redis ]] && rate=$REDIS_RATE
    start_server "$server" "$store" load
    case $load in
        closed | open)
            local args=(--descriptor 'user_id={user}' --users "$USERS" --concurrency "$CONCURRENCY")
            bench "${args[@]}" --duration "$WARMUP" >/dev/null
            [[ $load == open ]] && args=(--descriptor 'user_id={user}' --users "$USERS"
                --concurrency "$OPEN_CONCURRENCY" --rate "$rate")
            c0=$(cpu_ticks "$SERVER_PID") w0=$(cpu_wait_us)
            bench "${args[@]}" --duration "$DURATION" >"$out"
            c1=$(cpu_ticks "$SERVER_PID") w1=$(cpu_wait_us)
            report=$(jq -c . "$out")
            ;;
        h2load)
            h2load_run "$WARMUP" >/dev/null
            c0=$(cpu_ticks "$SERVER_PID") w0=$(cpu_wait_us)
            h2load_run "$DURATION" >"$out"
            c1=$(cpu_ticks "$SERVER_PID") w1=$(cpu_wait_us)
            report=$(h2load_json "$out")
            # h2load counts HTTP statuses only: one more call shows the answers are gRPC OK.
            [[ $(grpc_probe) == OK ]] || { echo "$server ($store): h2load's request is not answered OK" >&2; exit 1; }
            ;;
    esac
    stop_server
    jq -c --argjson round "$round" --arg store "$store" --arg load "$load" --arg server "$server" \
        --argjson cpu_us $(((c1 - c0) * TICK_US)) --argjson wait_us $((w1 - w0)) \
        --arg taskset "$TASKSET" --argjson rate "$([[ $load == open ]] && echo "$rate" || echo null)" \
        '{round: $round, store: $store, load: $load, server: $server, taskset: $taskset, target_rps: $rate,
          rps: .rps, decisions: (.allowed + .denied), p50_us: .p50_us, p99_us: .p99_us, mean_us: .mean_us,
          max_us: .max_us, errors: .errors, denied: .denied, server_cpu_us: $cpu_us,
          cpu_us_per_decision: (if .allowed + .denied > 0 then $cpu_us / (.allowed + .denied) else null end),
          cpu_wait_ms: ($wait_us / 1000 | floor)}' <<<"$report" >>"$RESULTS"
    [[ -n ${OUT:-} ]] && tail -n 1 "$RESULTS" >>"$OUT"
    return 0
}

table() {
    jq -rs 'def ms: if . == null then "-" else (. / 1000 * 100 | round / 100 | tostring) end;
        ["store", "load", "server", "decisions/s", "p50 ms", "p99 ms", "mean ms", "max ms", "CPU µs/dec", "errors", "denied", "CPU wait ms"],
        (.[] | [.store, .load + (if .target_rps then " \(.target_rps)/s" else "" end), .server,
            (.rps | round | tostring), (.p50_us | ms), (.p99_us | ms), (.mean_us | ms), (.max_us | ms),
            (if .cpu_us_per_decision then (.cpu_us_per_decision * 10 | round / 10 | tostring) else "-" end),
            (.errors | tostring), (.denied | tostring), (.cpu_wait_ms | tostring)])
        | @tsv' | column -t -s $'\t'
}

say "# $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
say "# $("$TOLLGATE" --version 2>/dev/null | head -n 1) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?"))${LIMITADOR_BIN:+; $("$LIMITADOR_BIN" --version 2>/dev/null | head -n 1)}"
say "# servers: ${SERVERS[*]}; ${TASKSET:+server and generator pinned to CPU $TASKSET; }$RUNS round(s) of $DURATION after $WARMUP warm-up"
for round in $(seq "$RUNS"); do
    order=("${SERVERS[@]}")
    ((round % 2 == 0 && ${#SERVERS[@]} == 2)) && order=("${SERVERS[1]}" "${SERVERS[0]}")
    start=$(wc -l <"$RESULTS")
    for store in $STORES; do
        for load in $LOADS; do
            for server in "${order[@]}"; do
                measure "$round" "$store" "$load" "$server"
            done
        done
    done
    say ""
    say "## round $round of $RUNS (${order[0]} first)"
    tail -n +"$((start + 1))" "$RESULTS" | table | if ((JSON)); then cat >&2; else cat; fi
done

# --- summary: ranges over the rounds, medians of CPU per decision, ratios of medians ----------------
SUMMARY=$(jq -cs 'def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
    group_by([.store, .load]) | map(
        (.[0] | {store, load, target_rps}) + {servers: (group_by(.server) | map({key: .[0].server, value: {
            rps: [(map(.rps) | min | round), (map(.rps) | max | round)],
            rps_median: (map(.rps) | median | round),
            p99_ms: (map(.p99_us) | if .[0] == null then null else [min / 1000, max / 1000] end),
            mean_ms: [(map(.mean_us) | min / 1000), (map(.mean_us) | max / 1000)],
            cpu_us_per_decision: (map(.cpu_us_per_decision) | median),
            errors: (map(.errors) | add)}}) | from_entries)}
        | if .servers.limitador and .servers.tollgate then . + {
            rps_ratio: (.servers.tollgate.rps_median / .servers.limitador.rps_median * 100 | round / 100),
            cpu_ratio: (.servers.limitador.cpu_us_per_decision / .servers.tollgate.cpu_us_per_decision * 100 | round / 100)}
          else . end)' "$RESULTS")
say ""
say "## summary over $RUNS round(s): ranges (min–max); CPU µs/decision the median; rps × and CPU ÷ are ratios of medians"
jq -r 'def r: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
    def range: if . == null then "-" else "\(.[0] | r)–\(.[1] | r)" end;
    ["store", "load", "server", "decisions/s", "p99 ms", "mean ms", "CPU µs/dec", "errors", "rps ×", "CPU ÷"],
    (.[] | . as $g | .servers | [{key: "tollgate", value: .tollgate}, {key: "limitador", value: .limitador}]
        | map(select(.value))[] | [$g.store, $g.load + (if $g.target_rps then " \($g.target_rps)/s" else "" end),
        .key, (.value.rps | range), (.value.p99_ms | range), (.value.mean_ms | range),
        (.value.cpu_us_per_decision | r), (.value.errors | tostring),
        (if .key == "tollgate" then ($g.rps_ratio | r) else "" end),
        (if .key == "tollgate" then ($g.cpu_ratio | r) else "" end)])
    | @tsv' <<<"$SUMMARY" | column -t -s $'\t' | if ((JSON)); then cat >&2; else cat; fi
if ((JSON)); then
    jq -s --argjson summary "$SUMMARY" --arg taskset "$TASKSET" --arg machine "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')" \
        '{machine: $machine, taskset: $taskset, runs: ., summary: $summary}' "$RESULTS"
fi
