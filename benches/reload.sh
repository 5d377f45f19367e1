#!/usr/bin/env bash
# Reload under load: does rewriting gateway.yaml while traffic flows cost a
# single request? Runs Portcullis (one worker, pinned to PROXY_CORE) in front
# of two `portcullis backend` upstreams, and wrk (on LOAD_CORE) in two
# variants, keep-alive and a new connection per request, each three times:
#   quiet    - no reloads (the reference)
#   harness  - the script does everything it does for a reload (write a
#              file, rename it, run curl against the admin port, sleep)
#              RELOADS times, but to a scratch file and GET /health/live: the
#              cost of the measuring itself on a 2-core machine
#   reloads  - the config is rewritten RELOADS times during the run, each a
#              real change (weights flip, a route comes and goes, a timeout
#              and a listener change), applied with POST /reload right after
#              the rename-over save so every rewrite is one reload.
# It reports non-2xx responses, socket errors, p50/p99, and the reload count
# from portcullis_config_reloads_total; the target (issue 8) is zero errors
# and p99 during reloads within 1.5x of quiet (the harness run shows how
# much of any difference is the script's own processes).
#
# Usage:
#   benches/reload.sh             10 s per run, 100 reloads per reload run
#   benches/reload.sh --quick     3 s, 20 reloads (smoke test)
#   benches/reload.sh --no-build  use target/release/portcullis as it is
#
# Environment: DURATION=10s RELOADS=100 CONNS=32 PROXY_CORE=0 LOAD_CORE=1
#   BASE_PORT=18900 PORTCULLIS_BIN=path KEEP_TMP=1
# Needs wrk and curl (apt-get install wrk curl). Only 127.0.0.1 is used;
# every process started is stopped on exit.

{
set -euo pipefail
die() { echo "reload.sh: $*" >&2; exit 1; }
note() { echo "reload.sh: $*" >&2; }

QUICK=0 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then DURATION=${DURATION:-3s}; RELOADS=${RELOADS:-20}; fi
DURATION=${DURATION:-10s}
RELOADS=${RELOADS:-100}
CONNS=${CONNS:-32}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BASE_PORT=${BASE_PORT:-18900}
[[ -n ${PORTCULLIS_BIN:-} ]] && BUILD=0
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "DURATION must be whole seconds like 10s, got '$DURATION'"
[[ $RELOADS =~ ^[1-9][0-9]*$ ]] || die "RELOADS must be a positive integer"
SECS=${DURATION%s}

command -v wrk >/dev/null || die "wrk is required: apt-get install wrk"
command -v curl >/dev/null || die "curl is required: apt-get install curl"
command -v taskset >/dev/null || die "taskset is required (util-linux)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $BUILD == 1 ]]; then
    (cd "$REPO" && cargo build --release --quiet --bin portcullis)
fi
BIN=${PORTCULLIS_BIN:-$REPO/target/release/portcullis}
[[ -x $BIN ]] || die "no binary at $BIN (build with cargo build --release)"

TMP=$(mktemp -d /tmp/portcullis-reload.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then note "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

port_free() { ! ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .; }
next_port=$BASE_PORT
take_port() {
    while ! port_free "$next_port"; do next_port=$((next_port + 1)); done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + 1))
}
take_port UP_A; take_port UP_B; take_port GW; take_port GW2; take_port ADMIN

taskset -c "$LOAD_CORE" "$BIN" backend --bind "127.0.0.1:$UP_A" --name a >/dev/null 2>&1 &
PIDS+=($!)
taskset -c "$LOAD_CORE" "$BIN" backend --bind "127.0.0.1:$UP_B" --name b >/dev/null 2>&1 &
PIDS+=($!)

CONFIG=$TMP/gateway.yaml
# Variant i of the config: every one differs from the previous in weights,
# one route, a timeout, and whether a second listener exists.
write_config() {
    local i=$1 target=${2:-$CONFIG} wa wb extra_route extra_listener
    if (( i % 2 )); then wa=3; wb=1; else wa=1; wb=3; fi
    extra_route="" extra_listener=""
    if (( i % 3 == 0 )); then
        extra_route="  - { name: extra, match: { path_prefix: /extra }, upstream: b }"
    fi
    if (( i % 4 == 0 )); then
        extra_listener="  - { name: second, bind: '127.0.0.1:$GW2' }"
    fi
    # Bash builtins, not `cat`: one process fewer per reload.
    local text
    IFS= read -r -d '' text <<EOF || true
listeners:
  - { name: http, bind: '127.0.0.1:$GW' }
$extra_listener
admin: { bind: '127.0.0.1:$ADMIN' }
server: { workers: 1, access_log: false }
upstreams:
  - { name: a, endpoints: ['127.0.0.1:$UP_A'] }
  - { name: b, endpoints: ['127.0.0.1:$UP_B'], request_timeout: $((5 + i % 7))s }
routes:
  - name: api
    match: { path_prefix: /api }
    split:
      - { upstream: a, weight: $wa }
      - { upstream: b, weight: $wb }
$extra_route
EOF
    printf '%s' "$text" >"$TMP/next.yaml"
    mv "$TMP/next.yaml" "$target"   # rename-over save, as editors do
}
write_config 0
taskset -c "$PROXY_CORE" "$BIN" run --no-watch --config "$CONFIG" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
GW_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN/health/ready" >/dev/null || die "gateway not ready; log: $TMP/gateway.log"
curl -sf "http://127.0.0.1:$GW/api/x" >/dev/null || die "gateway does not proxy; log: $TMP/gateway.log"

reload_count() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" \
        | awk '/^portcullis_config_reloads_total\{result="ok"\}/ {print $2}' | head -1
}
reload_errors() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" \
        | awk '/^portcullis_config_reloads_total\{result="error"\}/ {print $2}' | head -1
}

# One admin request without starting a process (bash's /dev/tcp), so the
# loop below disturbs the 2-core machine as little as it can.
admin_request() (  # admin_request METHOD PATH
    exec 3<>"/dev/tcp/127.0.0.1/$ADMIN" || exit 0
    printf '%s %s HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$2" >&3
    while IFS= read -r _ <&3; do :; done
) 2>/dev/null

# run_wrk NAME MODE RELOADS WRK_ARGS...: one bounded wrk run; MODE reload
# reloads meanwhile, harness does the same work without reloading.
run_wrk() {
    local name=$1 mode=$2 n=$3; shift 3
    local out=$TMP/$name.txt before after
    before=$(reload_count); before=${before:-0}
    timeout $((SECS + 20)) taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" \
        "http://127.0.0.1:$GW/api/x" >"$out" 2>&1 &
    local wrk_pid=$!
    if (( n > 0 )); then
        # Spread the reloads over the run, leaving a second at each end.
        local gap_ms=$(( (SECS * 1000 - 2000) / n )) i gap
        (( gap_ms > 0 )) || gap_ms=1
        printf -v gap '%d.%03d' $((gap_ms / 1000)) $((gap_ms % 1000))
        sleep 1
        for i in $(seq 1 "$n"); do
            if [[ $mode == reload ]]; then
                write_config "$i"
                admin_request POST /reload
            else
                write_config "$i" "$TMP/scratch.yaml"
                admin_request GET /health/live
            fi
            sleep "$gap"
        done
    fi
    wait "$wrk_pid" || die "wrk failed: $(cat "$out")"
    after=$(reload_count); after=${after:-0}
    local rps p50 p99 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out"); sockerr=${sockerr:-0}
    printf '%-22s %10s %9s %9s %8s %8s %8s\n' "$name" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" \
        "$(awk -v a="$after" -v b="$before" 'BEGIN {print a - b}')"
    echo "$name $p99" >>"$TMP/p99"
}

to_ms() { awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
    else print v }'; }

echo "Portcullis $("$BIN" --version 2>/dev/null | awk '{print $2}') on core $PROXY_CORE; wrk -t1 -c$CONNS -d$DURATION on core $LOAD_CORE; $RELOADS reloads per reload run"
printf '%-22s %10s %9s %9s %8s %8s %8s\n' run "req/s" p50 p99 non-2xx sock-err reloads
run_wrk keepalive-quiet none 0
run_wrk keepalive-harness harness "$RELOADS"
run_wrk keepalive-reloads reload "$RELOADS"
run_wrk newconn-quiet none 0 -H "Connection: close"
run_wrk newconn-harness harness "$RELOADS" -H "Connection: close"
run_wrk newconn-reloads reload "$RELOADS" -H "Connection: close"

errs=$(reload_errors); errs=${errs:-0}
(( ${errs%.*} == 0 )) || note "$errs reloads were refused; see $TMP/gateway.log"
kill -0 "$GW_PID" 2>/dev/null || die "the gateway died; log: $TMP/gateway.log"
ratio() { awk -v a="$(to_ms "$1")" -v b="$(to_ms "$2")" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
for v in keepalive newconn; do
    q=$(awk -v n="$v-quiet" '$1 == n {print $2}' "$TMP/p99")
    h=$(awk -v n="$v-harness" '$1 == n {print $2}' "$TMP/p99")
    r=$(awk -v n="$v-reloads" '$1 == n {print $2}' "$TMP/p99")
    printf 'p99 %s: quiet %s, harness only %s (%sx), during reloads %s: %sx of quiet (target <= 1.5x), %sx of harness\n' \
        "$v" "$q" "$h" "$(ratio "$h" "$q")" "$r" "$(ratio "$r" "$q")" "$(ratio "$r" "$h")"
done
}
