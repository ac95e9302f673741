#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation on the stable toolchain and runs each one.
#
#   fuzz/run.sh [TARGET...] [-- SECONDS [LIBFUZZER_FLAG...]]
#
# With no TARGET, runs every target under fuzz/fuzz_targets/; SECONDS defaults to 20 per target.
# Flags after SECONDS go to libFuzzer as they are (e.g. -jobs=4 -workers=4). Each target first
# replays fuzz/regressions/TARGET/ (every file must pass), then fuzzes from a temporary copy of its
# initial corpus, so a run never writes into the repository except fuzz/target and fuzz/artifacts
# (both git-ignored). Exits non-zero on any crash, out-of-memory or timeout, printing the
# reproducer's path and its base64.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ_DIR")"
TRIPLE=x86_64-unknown-linux-gnu

targets=()
seconds=20
extra=()
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        if (($#)); then seconds=$1; shift; fi
        extra=("$@")
        break
    fi
    targets+=("$1")
    shift
done
if ((${#targets[@]} == 0)); then
    for f in "$FUZZ_DIR"/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz/run.sh: SECONDS must be a whole number, not $seconds" >&2; exit 2; }
command -v g++ >/dev/null || { echo "fuzz/run.sh: g++ is needed to build libFuzzer" >&2; exit 2; }

# The initial corpus of one target, as files (an empty list is fine: libFuzzer starts from nothing).
initial_inputs() {
    case $1 in
        rules) find "$ROOT/config" "$ROOT/tests/fixtures" -type f \( -name '*.yaml' -o -name '*.yml' \) ;;
        *) [[ ! -d $FUZZ_DIR/initial/$1 ]] || find "$FUZZ_DIR/initial/$1" -type f ;;
    esac
}

# Coverage counters, comparison tracing and `cfg(fuzzing)`, for the target's code only: `--target`
# keeps RUSTFLAGS off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
export CARGO_TARGET_DIR="$FUZZ_DIR/target"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
build_start=$SECONDS
(cd "$FUZZ_DIR" && cargo build --release --locked --target "$TRIPLE" "${bins[@]}")
echo "fuzz/run.sh: built in $((SECONDS - build_start)) s" >&2

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()

# report TARGET ARTIFACT_DIR: prints every reproducer libFuzzer left, with its base64.
report() {
    local f found=0
    for f in "$2"/*; do
        [[ -f $f ]] || continue
        found=1
        echo "fuzz/run.sh: $1: reproducer $f" >&2
        echo "fuzz/run.sh: $1: base64 $(base64 -w0 "$f")" >&2
    done
    ((found)) || echo "fuzz/run.sh: $1: libFuzzer failed without leaving a reproducer" >&2
}

for t in "${targets[@]}"; do
    bin="$CARGO_TARGET_DIR/$TRIPLE/release/$t"
    artifacts="$FUZZ_DIR/artifacts/$t/$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$artifacts"
    flags=(-rss_limit_mb=2048 -timeout=5 "-artifact_prefix=$artifacts/")

    mapfile -t regressions < <([[ ! -d $FUZZ_DIR/regressions/$t ]] || find "$FUZZ_DIR/regressions/$t" -type f)
    if ((${#regressions[@]})); then
        echo "fuzz/run.sh: $t: replaying ${#regressions[@]} regression input(s)" >&2
        if ! (cd "$WORK" && "$bin" "${flags[@]}" "${regressions[@]}") >"$WORK/$t.replay.log" 2>&1; then
            tail -n 40 "$WORK/$t.replay.log" >&2
            echo "fuzz/run.sh: $t: a regression input fails again" >&2
            rmdir "$artifacts"
            failed+=("$t")
            continue
        fi
    fi

    corpus="$WORK/corpus/$t"
    mkdir -p "$corpus"
    mapfile -t inputs < <(initial_inputs "$t")
    # Numbered copies: files of the same name in different directories (two example.yaml) stay apart.
    for i in "${!inputs[@]}"; do cp -- "${inputs[$i]}" "$corpus/$i-$(basename -- "${inputs[$i]}")"; done
    echo "fuzz/run.sh: $t: fuzzing for $seconds s from ${#inputs[@]} initial input(s)" >&2
    # From $WORK: with -jobs, libFuzzer writes fuzz-N.log files to the current directory.
    if (cd "$WORK" && "$bin" "${flags[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        "${extra[@]}" "$corpus") >"$WORK/$t.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
            "$WORK/$t.log" | sed "s/^/fuzz\/run.sh: $t: /" >&2 || true
    else
        tail -n 60 "$WORK/$t.log" "$WORK"/fuzz-*.log >&2 2>/dev/null || true
        report "$t" "$artifacts"
        failed+=("$t")
    fi
    rmdir "$artifacts" 2>/dev/null || true
done

if ((${#failed[@]})); then
    echo "fuzz/run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: ${targets[*]}: no findings" >&2
