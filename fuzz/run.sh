#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints what each did.
# Not part of CI (docs/security.md, "Fuzzing").
#
#   fuzz/run.sh                      # 120 s per target
#   FUZZ_SECONDS=600 fuzz/run.sh     # longer
#   FUZZ_TARGETS="jwt_parse" fuzz/run.sh
#
# Knobs (environment):
#   FUZZ_SECONDS     seconds per target (default 120)
#   FUZZ_TARGETS     which targets (default: all five)
#   FUZZ_SANITIZER   cargo-fuzz sanitizer (default none: the crate is
#                    #![forbid(unsafe_code)], and this doubles throughput;
#                    `address` to include its dependencies' unsafe code)
#   FUZZ_FRESH=1     start each scratch corpus again from the seeds
#   FUZZ_STOP_AT_FIRST=1  stop a target at its first finding (plain
#                    libFuzzer); by default a run keeps going past findings
#                    (-fork=1 -ignore_crashes=1 -ignore_ooms=1
#                    -ignore_timeouts=1), so a known, unfixed finding does
#                    not end every run after a few executions
#
# One job per target, one target at a time: one libFuzzer worker process
# (what -jobs=1 amounts to, minus its redirecting the output to
# fuzz-0.log), so one core stays free. Each run stops by itself
# (-max_total_time, with a hard `timeout` behind it); an input that runs
# for 10 s is a finding (timeout), as is one that needs 2 GB (oom).
#
# Findings: each new crash-/oom-/timeout- file in artifacts/<target>/ is
# replayed and grouped by where it panicked; the table counts files and
# distinct places.
#
# Layout: seeds/<target>/ (committed) are copied into corpus/<target>/ (a
# git-ignored scratch corpus that grows across runs); dicts/<target>.dict
# are libFuzzer dictionaries; findings land in artifacts/<target>/;
# regressions/<target>/ holds minimised reproducers of past findings, which
# are replayed first and reported as "still crashes" until fixed in src/.
#
# Exit status: 0 when no target found anything and every regression passes.

set -uo pipefail

cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)
SECS=${FUZZ_SECONDS:-120}
TARGETS=${FUZZ_TARGETS:-"config_load route_match header_hygiene jwt_parse upstream_h1"}
SANITIZER=${FUZZ_SANITIZER:-none}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$FUZZ_DIR/target/$TRIPLE/release"

declare -A MAX_LEN=([config_load]=16384 [route_match]=1024 [header_hygiene]=2048 [jwt_parse]=4096)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "run.sh: needs cargo-fuzz and a nightly toolchain:" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

echo "== building (cargo +nightly fuzz build -s $SANITIZER)"
(cd .. && cargo +nightly fuzz build --fuzz-dir "$FUZZ_DIR" -s "$SANITIZER") || {
    echo "run.sh: build failed" >&2
    exit 2
}

status=0
rows=()
for t in $TARGETS; do
    bin="$BIN_DIR/$t"
    mkdir -p "artifacts/$t" "corpus/$t"

    # 1. Known findings.
    regress="ok"
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t" 2>/dev/null)" ]; then
        total=0 failed=0
        for f in "regressions/$t"/*; do
            total=$((total + 1))
            if ! timeout 60 "$bin" -runs=1 "$f" >"artifacts/$t/regression.log" 2>&1; then
                failed=$((failed + 1))
                echo "   regression $f still crashes:"
                grep -m1 -A1 -E "panicked at|ERROR: libFuzzer" "artifacts/$t/regression.log" | sed "s/^/     /"
            fi
        done
        regress="$((total - failed))/$total pass"
        [ "$failed" -eq 0 ] || status=1
    else
        regress="none"
    fi

    # 2. Fuzz from the seeds (plus what earlier runs found interesting).
    [ "${FUZZ_FRESH:-0}" = 1 ] && rm -rf "corpus/$t" && mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null
    touch "artifacts/$t/.run-start"
    args=(
        "-max_total_time=$SECS"
        "-timeout=10"
        "-rss_limit_mb=2048"
        "-max_len=${MAX_LEN[$t]:-4096}"
        "-dict=dicts/$t.dict"
        "-print_final_stats=1"
        "-artifact_prefix=artifacts/$t/"
    )
    if [ "${FUZZ_STOP_AT_FIRST:-0}" != 1 ]; then
        args+=("-fork=1" "-ignore_crashes=1" "-ignore_ooms=1" "-ignore_timeouts=1")
    fi
    log="artifacts/$t/run.log"
    echo "== $t: ${SECS}s (regressions: $regress)"
    timeout --kill-after=30 $((SECS + 120)) "$bin" "${args[@]}" "corpus/$t" >"$log" 2>&1
    rc=$?

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ -z "$execs" ]; then
        # Fork mode prints no final stats: the last status line's count.
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    corpus=$(ls "corpus/$t" | wc -l)

    # 3. What it found, grouped by the place that panicked.
    mapfile -t new < <(find "artifacts/$t" -maxdepth 1 -newer "artifacts/$t/.run-start" \
        \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | sort)
    declare -A where=()
    for f in "${new[@]}"; do
        case "$(basename "$f")" in
            oom-*) key="out of memory (-rss_limit_mb=2048)" ;;
            timeout-*) key="timeout (-timeout=10)" ;;
            *)
                out=$(timeout 60 "$bin" -runs=1 "$f" 2>&1)
                key=$(printf '%s\n' "$out" | grep -m1 -A1 'panicked at' |
                    sed -E 's/^thread .* panicked at //' | paste -sd' ' | cut -c1-200)
                [ -n "$key" ] || key=$(printf '%s\n' "$out" | grep -m1 'ERROR: ' | cut -c1-200)
                [ -n "$key" ] || key="(does not reproduce alone)"
                ;;
        esac
        loc=${key%%: *}
        [ -n "${where[$loc]:-}" ] || where[$loc]="$key"$'\n''       e.g. '"$f"
    done
    found=${#new[@]}
    distinct=${#where[@]}
    if [ "$found" -gt 0 ] || { [ "$rc" -ne 0 ] && [ "${FUZZ_STOP_AT_FIRST:-0}" = 1 ]; }; then
        status=1
        echo "   $found finding(s), $distinct distinct (log: $FUZZ_DIR/$log):"
        for loc in "${!where[@]}"; do echo "     - ${where[$loc]}"; done
        echo "   minimise: cargo +nightly fuzz tmin --fuzz-dir $FUZZ_DIR -s $SANITIZER $t <file>"
    fi
    unset where
    rows+=("$(printf '%-15s %7s %12s %7s %18s  %s' "$t" "$SECS" "${execs:-?}" "$corpus" "$found ($distinct distinct)" "$regress")")
done

echo
printf '%-15s %7s %12s %7s %18s  %s\n' target seconds executions corpus findings regressions
for r in "${rows[@]}"; do echo "$r"; done
exit $status
