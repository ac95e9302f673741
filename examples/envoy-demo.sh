#!/usr/bin/env bash
# tollgate behind a real Envoy, on this machine, in about a minute.
#
#   examples/envoy-demo.sh            # step by step (Enter between steps on a terminal); at the
#                                     # end everything stays up for your own curl until Ctrl-C
#   examples/envoy-demo.sh --short    # no pauses, stops at the end (CI; TOLLGATE_DEMO_SHORT=1)
#
# It starts three processes on free loopback ports and stops them on exit, error, Ctrl-C or SIGTERM:
#   - a small upstream app:  python3 -m http.server
#   - tollgate serve:        rules written by this script, memory store
#   - Envoy:                 envoy/front-proxy.yaml as shipped, only its ports substituted
# and then shows, with curl through Envoy: a user refused with 429 after N requests, the
# X-RateLimit-* headers Envoy adds, another user unaffected, and a rule change picked up live.
#
# Needs: curl, python3, Envoy (ENVOY_BIN, else `envoy` on PATH, else the copy tests/run.sh installs
# in ~/.cache/tollgate-tools/bin: run `tests/run.sh --install-only` once), and tollgate
# (TOLLGATE_BIN, else target/{release,debug}/tollgate, else built now with `cargo build`).
# TOLLGATE_DEMO_KEEP=1 keeps the scratch directory (rules, Envoy config, logs) after exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIMIT=5      # requests a minute per user
VIP_LIMIT=20 # alice's limit after the live rule change

SHORT="${TOLLGATE_DEMO_SHORT:-0}"
for arg in "$@"; do
    case $arg in
    --short) SHORT=1 ;;
    -h | --help)
        sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "envoy-demo.sh: unknown argument: $arg (try --help)" >&2
        exit 2
        ;;
    esac
done
# Pauses only make sense with someone at a terminal.
INTERACTIVE=0
if [[ $SHORT != 1 && -t 0 && -t 1 ]]; then INTERACTIVE=1; fi

say() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\nenvoy-demo.sh: error: %s\n' "$*" >&2
    exit 1
}
pause() {
    if ((INTERACTIVE)); then read -r -p '    [Enter] ' _ || true; fi
}

# ---------------------------------------------------------------------------------------------
# Everything started here is recorded and stopped on exit.
# ---------------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-demo.XXXXXX")"
PIDS=()
NAMES=()

started() { # name pid
    NAMES+=("$1")
    PIDS+=("$2")
}

show_logs() {
    local name
    for name in upstream tollgate envoy; do
        [[ -s $WORK/$name.log ]] || continue
        printf -- '----- last lines of %s -----\n' "$WORK/$name.log" >&2
        tail -n 20 "$WORK/$name.log" >&2
    done
}

cleanup() {
    local rc=$? i pid deadline
    trap - EXIT INT TERM
    # 130/143: stopped with Ctrl-C or SIGTERM, which is how the full demo ends.
    [[ $rc == 0 || $rc == 130 || $rc == 143 ]] || show_logs
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if ((${#PIDS[@]} > 0)); then
        printf '\n==> stopped %s (pids %s)\n' "${NAMES[*]}" "${PIDS[*]}"
    fi
    if [[ ${TOLLGATE_DEMO_KEEP:-0} == 1 ]]; then
        printf '    kept %s\n' "$WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
command -v curl >/dev/null || die "curl is not installed"
command -v python3 >/dev/null || die "python3 is not installed"

find_envoy() {
    local tools="${TOLLGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate-tools}" c
    for c in "${ENVOY_BIN:-}" "$(command -v envoy || true)" "$tools/bin/envoy"; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return
        fi
    done
}
ENVOY="$(find_envoy)"
[[ -n $ENVOY ]] || die "no Envoy: set ENVOY_BIN, put envoy on PATH, or run tests/run.sh --install-only"

find_tollgate() {
    local target="${CARGO_TARGET_DIR:-$ROOT/target}" c
    for c in "${TOLLGATE_BIN:-}" "$target/release/tollgate" "$target/debug/tollgate"; do
        if [[ -n $c && -x $c ]]; then
            printf '%s\n' "$c"
            return
        fi
    done
}
TOLLGATE="$(find_tollgate)"
if [[ -z $TOLLGATE ]]; then
    say "no tollgate binary yet: cargo build --bin tollgate"
    (cd "$ROOT" && cargo build --quiet --bin tollgate) || die "cargo build failed"
    TOLLGATE="$(find_tollgate)"
    [[ -n $TOLLGATE ]] || die "cargo build produced no tollgate binary"
fi

# Five loopback ports that are free now: Envoy admin, Envoy listener, upstream, tollgate gRPC,
# tollgate HTTP.
read -r ENVOY_ADMIN ENVOY_PORT APP_PORT GRPC_PORT HTTP_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
URL="http://127.0.0.1:$ENVOY_PORT/"
ADMIN="http://127.0.0.1:$HTTP_PORT"

# Polls `curl URL` until it answers 200; dies after 30 s or when the process is gone.
wait_ready() { # name pid url
    local name=$1 pid=$2 url=$3 deadline=$((SECONDS + 30))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) == 200 ]]; do
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
        ((SECONDS < deadline)) || die "$name not ready at $url within 30 s"
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------------
# Start
# ---------------------------------------------------------------------------------------------
say "tollgate demo: Envoy :$ENVOY_PORT -> app :$APP_PORT, asking tollgate :$GRPC_PORT (gRPC)"
note "envoy:    $ENVOY"
note "tollgate: $TOLLGATE"
note "scratch:  $WORK"

mkdir -p "$WORK/www"
echo "hello from the upstream app" >"$WORK/www/index.html"
python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$WORK/www" \
    >"$WORK/upstream.log" 2>&1 &
started upstream $!
wait_ready upstream $! "http://127.0.0.1:$APP_PORT/"

# The rules: envoyproxy/ratelimit's format. Envoy sends [user_id=<x-user-id header>] among its
# descriptors (see envoy/front-proxy.yaml); the other descriptors it sends match no rule and pass.
write_rules() { # vip_block
    cat >"$WORK/rules.yaml.tmp" <<EOF
domain: api
descriptors:
  # Every user: $LIMIT requests a minute (sliding window, tollgate's default algorithm).
  - key: user_id
    rate_limit:
      name: per_user
      unit: minute
      requests_per_unit: $LIMIT
$1
EOF
    # Write-then-rename, as a ConfigMap update does: tollgate never sees half a file.
    mv "$WORK/rules.yaml.tmp" "$WORK/rules.yaml"
}
write_rules ""
say "rules ($WORK/rules.yaml):"
sed 's/^/    | /' "$WORK/rules.yaml"

"$TOLLGATE" serve --config "$WORK/rules.yaml" \
    --grpc-addr "127.0.0.1:$GRPC_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
    >"$WORK/tollgate.log" 2>&1 &
started tollgate $!
wait_ready tollgate $! "$ADMIN/healthcheck"

# envoy/front-proxy.yaml with its four ports replaced and its public listener on loopback.
# Each replaced line must occur exactly once: if the shipped file changes, this stops loudly.
substitute() { # from to
    local n
    n=$(grep -c -- "$1" "$WORK/envoy.yaml" || true)
    [[ $n == 1 ]] || die "envoy/front-proxy.yaml: expected one '$1', found $n"
    sed -i "s|$1|$2|" "$WORK/envoy.yaml"
}
cp "$ROOT/envoy/front-proxy.yaml" "$WORK/envoy.yaml"
substitute "port_value: 9901 " "port_value: $ENVOY_ADMIN "
substitute "port_value: 10000 " "port_value: $ENVOY_PORT "
substitute "port_value: 8000 " "port_value: $APP_PORT "
substitute "port_value: 8081 " "port_value: $GRPC_PORT "
substitute "address: 0.0.0.0," "address: 127.0.0.1,"
"$ENVOY" -c "$WORK/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level warn \
    >"$WORK/envoy.log" 2>&1 &
started envoy $!
wait_ready envoy $! "http://127.0.0.1:$ENVOY_ADMIN/ready"
note "all three are up (pids ${PIDS[*]})"
pause

# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------
# One GET through Envoy as `user` (no header when empty); prints one line:
#   <user> #<n> -> <status>  limit=<X-RateLimit-Limit>  remaining=<…>  reset=<…>
declare -A COUNT=()
hit() { # user
    local user=$1 label=${1:-"(none)"} headers status
    local args=(-s -o /dev/null -D -)
    [[ -z $user ]] || args+=(-H "x-user-id: $user")
    headers="$(curl "${args[@]}" "$URL" | tr -d '\r')" || die "curl $URL failed"
    status="$(head -n1 <<<"$headers" | cut -d' ' -f2)"
    COUNT[$label]=$((${COUNT[$label]:-0} + 1))
    header() { grep -i "^$1:" <<<"$headers" | head -n1 | cut -d' ' -f2- || true; }
    local limit
    limit="$(header x-ratelimit-limit)"
    if [[ -z $limit ]]; then
        printf '    %-6s #%-2s -> %s  (no X-RateLimit headers: no rule matched)\n' \
            "$label" "${COUNT[$label]}" "$status"
        return
    fi
    printf '    %-6s #%-2s -> %s  limit=%s  remaining=%s  reset=%s%s\n' \
        "$label" "${COUNT[$label]}" "$status" "$limit" \
        "$(header x-ratelimit-remaining)" "$(header x-ratelimit-reset)" \
        "$([[ -n $(header x-envoy-ratelimited) ]] && echo '  x-envoy-ratelimited' || true)"
}

say "1. alice sends $((LIMIT + 1)) requests; every user may send $LIMIT a minute"
note "\$ curl -si -H 'x-user-id: alice' $URL"
for _ in $(seq 1 $((LIMIT + 1))); do hit alice; done
note "Envoy adds X-RateLimit-* (enable_x_ratelimit_headers) from tollgate's answer: limit"
note "'<n>, <n>;w=<window s>;name=<rule>', remaining, reset (seconds until the quota is whole"
note "again). Over the limit Envoy answers 429 itself: the app never sees that request."
pause

say "2. bob has his own counter; a request without x-user-id sends no user descriptor"
hit bob
hit bob
hit ""
pause

say "3. tollgate's admin port answers the same question for humans and scripts"
note "\$ curl -s '$ADMIN/check?domain=api&user_id=alice'"
printf '    %s\n' "$(curl -s -w '  (HTTP %{http_code})' "$ADMIN/check?domain=api&user_id=alice")"
pause

say "4. live rule change: alice gets her own limit of $VIP_LIMIT a minute (no restart)"
generation() { curl -s "$ADMIN/rlconfig" | grep -o '"generation":[0-9]*' | cut -d: -f2; }
before="$(generation)"
write_rules "  # alice: $VIP_LIMIT a minute (a key + value rule wins over the key alone).
  - key: user_id
    value: alice
    rate_limit:
      unit: minute
      requests_per_unit: $VIP_LIMIT"
sed -n '/^  # alice/,$p' "$WORK/rules.yaml" | sed 's/^/    + /'
deadline=$((SECONDS + 15))
until [[ $(generation) != "$before" ]]; do
    ((SECONDS < deadline)) || die "tollgate did not reload $WORK/rules.yaml within 15 s"
    sleep 0.1
done
note "tollgate reloaded: rules generation $before -> $(generation)"
hit alice
hit alice
note "bob's rule did not change, so his counter survived the reload:"
hit bob
pause

say "5. what tollgate counted (Prometheus, $ADMIN/metrics)"
curl -s "$ADMIN/metrics" | grep '^tollgate_rule_hits_total' | sed 's/^/    /' || true

if [[ $SHORT != 1 ]]; then
    say "everything is still running; try it yourself, then Ctrl-C to stop it all:"
    note "curl -si -H 'x-user-id: carol' $URL"
    note "curl -s $ADMIN/rlconfig"
    note "\$EDITOR $WORK/rules.yaml   # saved changes apply within a second"
    note "waiting for Ctrl-C"
    sleep infinity &
    started sleep $!
    wait $! || true
fi
say "demo done"
