#!/usr/bin/env bash
# Chaos under load (issue 7: health checks, outlier detection, circuit
# breaker, retries): one upstream of two `portcullis backend` endpoints, a
# and b, behind Portcullis (one worker, pinned to PROXY_CORE), and wrk
# (`wrk -t1 -c$CONNS --latency`, on LOAD_CORE with the backends) for one
# bounded run per phase while the script does something to endpoint b:
#   baseline  both endpoints up, nothing happens
#   kill      b gets SIGKILL $KILL_AT seconds into the phase: requests in
#             flight on b are cut (reset), new connections to b are refused
#             (connect error) until health checks or outlier detection take
#             it out of rotation; retries should hide all of it
#   recover   b is started again as the phase starts; health checks
#             (healthy_threshold 2, interval 1s) must bring it back
#   slow      b is restarted with `--delay $DELAY` just before the phase,
#             without load (a restart under load cuts the requests in flight
#             and gets b ejected for 5 s, which the kill phase covers
#             already), and the phase starts once the gateway counts b as
#             available: every answer but /health's waits that long, so b
#             stays healthy and the balancer keeps sending it its share
# The gateway config (written to the temp dir) has health_check (1s, 500ms,
# 2 up, 2 down), outlier_detection (3 failures, eject for 5s), the default
# circuit_breaker, and retry (2 attempts on connect_error, reset, 502, 503,
# 504; per_try_timeout 1s). wrk sends GETs, which are idempotent: every
# outcome on the list is retried.
#
# For each phase: requests, req/s, non-2xx responses and socket errors (wrk),
# the error share, p50/p99, the retries it took and the gateway's answers by
# status (portcullis_requests_total and portcullis_upstream_retries_total,
# before and after). Then a timeline of what the script did and what the
# gateway logged about endpoints and the breaker, the final
# portcullis_upstream_retries_total and portcullis_upstream_endpoint_healthy,
# and /status. The target (issue 7): killing one of two endpoints costs fewer
# than 0.1% failed requests with retries on. Exit status 2 when it is missed.
#
# Usage:
#   benches/chaos.sh              4 phases of 10 s (about a minute in all)
#   benches/chaos.sh --quick      4 phases of 4 s (smoke test; a breaker
#                                 that opens stays open 10 s, into later phases)
#   benches/chaos.sh --no-build   use target/release/portcullis as it is
#   benches/chaos.sh --install    apt-get install wrk and curl first
#
# Environment (all optional):
#   PHASE=10s      length of each phase (whole seconds, at least 3s)
#   WARMUP=2s      an unmeasured wrk run before the baseline (0s: none)
#   CONNS=32       wrk connections
#   KILL_AT=1      seconds into the kill phase when b is killed
#   DELAY=200ms    b's delay in the slow phase
#   BALANCE=round_robin   the upstream's balance (or least_requests)
#   BREAKER='{}'   the upstream's circuit_breaker, a YAML flow mapping (the
#                  default: every key at its default), or off for none
#   PROXY_CORE=0 LOAD_CORE=1   the cores (gateway; wrk and backends)
#   BASE_PORT=19300  first port tried; ports in use are skipped
#   PORTCULLIS_BIN=path  binary to test (implies --no-build)
#   KEEP_TMP=1     keep the config and logs
# Only 127.0.0.1 is used; every process started is stopped on exit.

# The whole script is one block, so bash parses it all before running it and
# an edit to this file during a run cannot break that run.
{
set -euo pipefail
die() { echo "chaos.sh: $*" >&2; exit 1; }
note() { echo "chaos.sh: $*" >&2; }

# ---------------------------------------------------------------- options
QUICK=0 INSTALL=0 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --install) INSTALL=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then PHASE=${PHASE:-4s}; WARMUP=${WARMUP:-1s}; fi
PHASE=${PHASE:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
KILL_AT=${KILL_AT:-1}
DELAY=${DELAY:-200ms}
BALANCE=${BALANCE:-round_robin}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BASE_PORT=${BASE_PORT:-19300}
[[ -n ${PORTCULLIS_BIN:-} ]] && BUILD=0
[[ $PHASE =~ ^[1-9][0-9]*s$ ]] || die "PHASE must be whole seconds like 10s, got '$PHASE'"
SECS=${PHASE%s}
[[ $WARMUP =~ ^[0-9]+s$ ]] || die "WARMUP must be whole seconds like 2s, got '$WARMUP'"
(( SECS >= 3 )) || die "PHASE must be at least 3s"
(( SECS <= 120 )) || die "PHASE is capped at 120s (the script is meant to be short)"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer, got '$CONNS'"
if ! [[ $KILL_AT =~ ^[0-9]+$ ]] || (( KILL_AT >= SECS )); then die "KILL_AT must be whole seconds below PHASE ($SECS), got '$KILL_AT'"; fi
[[ $DELAY =~ ^[0-9]+(ms|s)$ ]] || die "DELAY must look like 200ms or 1s, got '$DELAY'"
case "$BALANCE" in round_robin|least_requests) ;; *) die "BALANCE must be round_robin or least_requests" ;; esac
BREAKER=${BREAKER:-"{}"}
[[ $BREAKER == off || $BREAKER =~ ^\{.*\}$ ]] || die "BREAKER must be off or a YAML flow mapping like '{consecutive_failures: 20}', got '$BREAKER'"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------- tools
if [[ $INSTALL == 1 ]]; then
    [[ $(id -u) == 0 ]] || die "--install needs root (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk curl
fi
command -v wrk >/dev/null || die "wrk is required: apt-get install wrk (or run with --install)"
command -v curl >/dev/null || die "curl is required: apt-get install curl (or run with --install)"
command -v ss >/dev/null || die "ss is required (iproute2) to check ports"
# Pinning keeps the gateway's core its own, as in load.sh; without taskset
# everything shares every core (noted, not fatal).
# Prefixes, not functions: `"${ON_LOAD_CORE[@]}" cmd &` is one simple
# command, so $! is the pid of cmd itself (taskset execs it), the one to kill.
if command -v taskset >/dev/null; then
    NCPU=$(nproc)
    (( PROXY_CORE < NCPU && LOAD_CORE < NCPU )) || die "cores $PROXY_CORE/$LOAD_CORE do not exist (nproc=$NCPU)"
    ON_PROXY_CORE=(taskset -c "$PROXY_CORE")
    ON_LOAD_CORE=(taskset -c "$LOAD_CORE")
else
    note "no taskset: processes are not pinned"
    ON_PROXY_CORE=()
    ON_LOAD_CORE=()
fi

# ---------------------------------------------------------------- build
SRC_BIN=${PORTCULLIS_BIN:-$REPO/target/release/portcullis}
if [[ $BUILD == 1 ]]; then
    note "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet --bin portcullis) || die "cargo build --release failed"
fi
[[ -x $SRC_BIN ]] || die "no binary at $SRC_BIN (build with cargo build --release, or set PORTCULLIS_BIN)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-chaos.XXXXXX")
# The processes running now; a killed one is waited for and dropped, so a
# recycled pid is never signalled.
GW_PID="" A_PID="" B_PID="" WRK_PID=""
# shellcheck disable=SC2317  # called through the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid pids=()
    for pid in "$WRK_PID" "$GW_PID" "$A_PID" "$B_PID"; do [[ -n $pid ]] && pids+=("$pid"); done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then note "config and logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A copy, so a concurrent `cargo build` cannot swap the binary mid-run.
BIN=$TMP/portcullis
cp "$SRC_BIN" "$BIN"
"$BIN" backend --help 2>/dev/null | grep -q -- --delay \
    || die "$SRC_BIN has no \`backend --delay\` (the slow phase needs it): rebuild"

# ---------------------------------------------------------------- ports
port_free() { ! ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .; }
next_port=$BASE_PORT
take_port() {
    while ! port_free "$next_port"; do
        next_port=$((next_port + 1))
        (( next_port < BASE_PORT + 500 )) || die "no free port in $BASE_PORT..$((BASE_PORT + 500))"
    done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + 1))
}
take_port UP_A; take_port UP_B; take_port GW; take_port ADMIN

# ---------------------------------------------------------------- helpers
now_ms() { date +%s%3N; }
EVENTS=$TMP/events   # "epoch_ms text", what the script did
: >"$EVENTS"
event() { echo "$(now_ms) $*" >>"$EVENTS"; }

# Is something accepting on 127.0.0.1:PORT? (bash's /dev/tcp, no process)
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {  # wait_listening PORT WHAT: up to 5 s
    for _ in $(seq 50); do
        listening "$1" && return 0
        sleep 0.1
    done
    die "$2 is not listening on 127.0.0.1:$1 after 5 s"
}

# start_backend NAME PORT [DELAY]: sets A_PID or B_PID.
start_backend() {
    local name=$1 port=$2 delay=${3:-0}
    "${ON_LOAD_CORE[@]}" "$BIN" backend --bind "127.0.0.1:$port" --name "$name" --delay "$delay" \
        >>"$TMP/backend-$name.log" 2>&1 &
    local pid=$!
    if [[ $name == a ]]; then A_PID=$pid; else B_PID=$pid; fi
    wait_listening "$port" "backend $name"
}
# stop_b SIGNAL: stops b and reaps it.
stop_b() {
    [[ -n $B_PID ]] || return 0
    kill "-$1" "$B_PID" 2>/dev/null || true
    wait "$B_PID" 2>/dev/null || true
    B_PID=""
}

metrics() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" || true; }
# The value of the series whose name and labels start with $1 (0 if none).
series() { awk -v k="$1" 'index($0, k) == 1 { v += $NF } END { print v + 0 }' "$2"; }
# delta PHASE SERIES: how much it grew during the phase.
delta() {
    echo $(( $(series "$2" "$TMP/metrics-after-$1.txt") - $(series "$2" "$TMP/metrics-before-$1.txt") ))
}

# ---------------------------------------------------------------- gateway
CONFIG=$TMP/gateway.yaml
cat >"$CONFIG" <<EOF
listeners:
  - { name: http, bind: '127.0.0.1:$GW' }
admin: { bind: '127.0.0.1:$ADMIN' }
server: { workers: 1, access_log: false }
upstreams:
  - name: app
    endpoints: ['127.0.0.1:$UP_A', '127.0.0.1:$UP_B']
    balance: $BALANCE
    health_check:
      path: /health
      interval: 1s
      timeout: 500ms
      healthy_threshold: 2
      unhealthy_threshold: 2
    outlier_detection:
      consecutive_failures: 3
      eject_for: 5s
$([[ $BREAKER == off ]] || echo "    circuit_breaker: $BREAKER")
    retry:
      attempts: 2
      on: [connect_error, reset, 502, 503, 504]
      per_try_timeout: 1s
routes:
  - { name: api, match: { path_prefix: / }, upstream: app }
EOF
"$BIN" check "$CONFIG" >"$TMP/check.txt" 2>&1 || die "the generated config does not check: $(cat "$TMP/check.txt")"

start_backend a "$UP_A"
start_backend b "$UP_B"
"${ON_PROXY_CORE[@]}" "$BIN" run --no-watch --config "$CONFIG" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$ADMIN/health/ready" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited: $(tail -5 "$TMP/gateway.log")"
    sleep 0.1
done
curl -sf --max-time 2 "http://127.0.0.1:$ADMIN/health/ready" >/dev/null || die "gateway not ready; log: $TMP/gateway.log"
curl -sf --max-time 2 "http://127.0.0.1:$GW/api/x" >/dev/null || die "gateway does not proxy; log: $TMP/gateway.log"
# Warm-up (connections, pools, caches), which also lets every endpoint see
# a health check or two before the baseline.
if [[ $WARMUP != 0s ]]; then
    "${ON_LOAD_CORE[@]}" timeout $(( ${WARMUP%s} + 15 )) wrk -t1 -c"$CONNS" -d"$WARMUP" \
        "http://127.0.0.1:$GW/api/x" >"$TMP/wrk-warmup.txt" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk failed in the warm-up: $(cat "$TMP/wrk-warmup.txt")"
    WRK_PID=""
fi
sleep 1

# ---------------------------------------------------------------- phases
declare -A R   # R[phase,field]
PHASES=(baseline kill recover slow)
declare -A ACTION=(
    [baseline]="both endpoints up"
    [kill]="SIGKILL b at ${KILL_AT}s"
    [recover]="start b at 0s"
    [slow]="b answers after $DELAY (restarted before)"
)

run_phase() {
    local ph=$1
    local out=$TMP/wrk-$ph.txt
    if [[ $ph == slow ]]; then
        # Between phases, without load; then wait (up to 5 s) until the
        # gateway counts b as available again.
        stop_b TERM
        event "b stopped (SIGTERM), no load"
        start_backend b "$UP_B" "$DELAY"
        event "b started with --delay $DELAY (listening)"
        local k="portcullis_upstream_endpoint_healthy{upstream=\"app\",endpoint=\"127.0.0.1:$UP_B\"}"
        for _ in $(seq 25); do
            metrics >"$TMP/metrics-wait.txt"
            [[ $(series "$k" "$TMP/metrics-wait.txt") == 1 ]] && break
            sleep 0.2
        done
        [[ $(series "$k" "$TMP/metrics-wait.txt") == 1 ]] || note "b is still not available 5 s after its restart"
    fi
    metrics >"$TMP/metrics-before-$ph.txt"
    # An open breaker (open_for is 10 s by default) outlives a short phase.
    if [[ $(series 'portcullis_circuit_state{upstream="app"}' "$TMP/metrics-before-$ph.txt") != 0 ]]; then
        note "the circuit breaker is not closed as phase $ph starts (open_for outlasts a ${PHASE} phase)"
    fi
    event "phase $ph starts (wrk -c$CONNS -d$PHASE)"
    local started
    started=$(date +%s%N)
    "${ON_LOAD_CORE[@]}" timeout $((SECS + 15)) wrk -t1 -c"$CONNS" -d"$PHASE" --latency \
        "http://127.0.0.1:$GW/api/x" >"$out" 2>&1 &
    WRK_PID=$!
    case "$ph" in
        kill)
            # Sleep until KILL_AT seconds after wrk started.
            local left_ms=$(( KILL_AT * 1000 - ($(date +%s%N) - started) / 1000000 ))
            (( left_ms > 0 )) && sleep "$(awk -v m="$left_ms" 'BEGIN { printf "%.3f", m / 1000 }')"
            event "SIGKILL b"
            stop_b KILL
            ;;
        recover)
            stop_b KILL   # (b is already dead)
            start_backend b "$UP_B"
            event "b started again (listening)"
            ;;
    esac
    local rc=0
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    event "phase $ph ends"
    (( rc == 0 )) || die "wrk failed in phase $ph (exit $rc): $(cat "$out")"
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway died in phase $ph; log: $TMP/gateway.log"
    metrics >"$TMP/metrics-after-$ph.txt"

    local reqs rps p50 p99 non2xx sockerr
    reqs=$(awk '/requests in/ { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    p50=$(awk '$1 == "50%" { print $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$out")
    sockerr=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")
    R[$ph,reqs]=${reqs:-0} R[$ph,rps]=${rps:-0} R[$ph,p50]=${p50:--} R[$ph,p99]=${p99:--}
    R[$ph,non2xx]=${non2xx:-0} R[$ph,sock]=${sockerr:-0}
    R[$ph,sockdetail]=$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' "$out")
    R[$ph,errs]=$(( R[$ph,non2xx] + R[$ph,sock] ))
    R[$ph,pct]=$(awk -v e="${R[$ph,errs]}" -v n="${R[$ph,reqs]}" 'BEGIN { printf "%.3f", (n > 0 ? 100 * e / n : 0) }')
    # Deltas from the gateway's own counters.
    local b=$TMP/metrics-before-$ph.txt a=$TMP/metrics-after-$ph.txt r
    for r in success failure budget_exhausted; do
        R[$ph,retry_$r]=$(delta "$ph" "portcullis_upstream_retries_total{upstream=\"app\",result=\"$r\"}")
    done
    # Tries that failed upstream (connect error, reset, timeout), and
    # requests refused before any try (circuit open, or no endpoint available).
    R[$ph,tries_failed]=$(( $(delta "$ph" 'portcullis_upstream_requests_total{upstream="app",outcome="error"}') \
        + $(delta "$ph" 'portcullis_upstream_requests_total{upstream="app",outcome="timeout"}') ))
    R[$ph,refused]=$(delta "$ph" 'portcullis_upstream_requests_total{upstream="app",outcome="rejected"}')
    R[$ph,opened]=$(delta "$ph" 'portcullis_circuit_transitions_total{upstream="app",to="open"}')
    # Answers by status (the route's requests), "200:12345 502:3".
    R[$ph,statuses]=$(awk '
        FNR == 1 { f++ }
        /^portcullis_requests_total\{/ && /route="api"/ {
            s = $0; sub(/.*status="/, "", s); sub(/".*/, "", s)
            if (f == 1) before[s] += $NF; else after[s] += $NF
        }
        END {
            n = 0
            for (s in after) if (after[s] - before[s] > 0) keys[++n] = s
            for (i = 2; i <= n; i++) for (j = i; j > 1 && keys[j - 1] > keys[j]; j--) { t = keys[j]; keys[j] = keys[j - 1]; keys[j - 1] = t }
            out = ""
            for (i = 1; i <= n; i++) out = out (i > 1 ? " " : "") keys[i] ":" after[keys[i]] - before[keys[i]]
            print (out == "" ? "-" : out)
        }' "$b" "$a")
    printf '%-9s %9s %7s %8s %8s %8s %9s %9s  %s\n' "$ph" "${R[$ph,reqs]}" "${R[$ph,rps]}" \
        "${R[$ph,non2xx]}" "${R[$ph,sock]}" "${R[$ph,pct]}%" "${R[$ph,p50]}" "${R[$ph,p99]}" "${ACTION[$ph]}"
}

echo "Portcullis $("$BIN" --version 2>/dev/null | awk '{ print $2 }') on core $PROXY_CORE (1 worker);" \
    "wrk -t1 -c$CONNS -d$PHASE and backends a, b on core $LOAD_CORE; balance $BALANCE; circuit_breaker $BREAKER"
printf '%-9s %9s %7s %8s %8s %8s %9s %9s  %s\n' phase requests "req/s" non-2xx sock-err errors p50 p99 "what happens to b"
T0=$(now_ms)
for ph in "${PHASES[@]}"; do run_phase "$ph"; done

# ---------------------------------------------------------------- report
echo
echo "## Results"
echo
echo "| phase | what happens to b | requests | req/s | non-2xx | socket errors | errors | p50 | p99 | failed tries | retries ok / failed / no budget | refused | breaker opened | answers by status |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for ph in "${PHASES[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s%% | %s | %s | %s | %s / %s / %s | %s | %s | %s |\n' "$ph" "${ACTION[$ph]}" \
        "${R[$ph,reqs]}" "${R[$ph,rps]}" "${R[$ph,non2xx]}" "${R[$ph,sock]}" "${R[$ph,pct]}" \
        "${R[$ph,p50]}" "${R[$ph,p99]}" "${R[$ph,tries_failed]}" "${R[$ph,retry_success]}" "${R[$ph,retry_failure]}" \
        "${R[$ph,retry_budget_exhausted]}" "${R[$ph,refused]}" "${R[$ph,opened]}" "${R[$ph,statuses]}"
done
echo
echo "errors = (non-2xx + socket errors) / requests, from wrk (socket errors:"
echo "$(for ph in "${PHASES[@]}"; do printf '%s [%s] ' "$ph" "${R[$ph,sockdetail]:-none}"; done))."
echo "From the gateway's metrics, per phase: failed tries = connect errors, resets and"
echo "timeouts upstream (portcullis_upstream_requests_total outcome error + timeout);"
echo "refused = answered 503 without a try, circuit open or no endpoint available"
echo "(outcome rejected); breaker opened = portcullis_circuit_transitions_total to open;"
echo "answers by status = portcullis_requests_total of the route."

# A timeline: what the script did, and what the gateway logged about
# endpoints and the circuit breaker, in seconds from the first phase.
echo
echo "## Timeline (seconds from the baseline's start)"
echo
{
    cat "$EVENTS"
    awk '/"message":"(endpoint|circuit breaker)/' "$TMP/gateway.log" | while IFS= read -r line; do
        ts=$(sed -n 's/.*"timestamp":"\([^"]*\)".*/\1/p' <<<"$line")
        msg=$(sed -n 's/.*"message":"\([^"]*\)".*/\1/p' <<<"$line")
        ep=$(sed -n 's/.*"endpoint":"\([^"]*\)".*/\1/p' <<<"$line")
        extra=$(sed -n 's/.*"reason":"\([^"]*\)".*/ (\1)/p' <<<"$line")$(sed -n 's/.*"\(eject_for_ms\|open_for_ms\)":\([0-9]*\).*/ \1=\2/p' <<<"$line")
        [[ -n $ts ]] || continue
        ms=$(date -d "$ts" +%s%3N 2>/dev/null) || continue
        case "$ep" in
            "127.0.0.1:$UP_A") ep=a ;;
            "127.0.0.1:$UP_B") ep=b ;;
        esac
        echo "$ms   gateway: ${msg}${ep:+ [$ep]}${extra}"
    done
} | sort -n -s -k1,1 | awk -v t0="$T0" '{ ms = $1; $1 = ""; printf "%+8.2f %s\n", (ms - t0) / 1000, $0 }'

echo
echo "## Metrics at the end"
echo
metrics >"$TMP/metrics-end.txt"
grep -E '^portcullis_upstream_(retries_total|endpoint_healthy)' "$TMP/metrics-end.txt" \
    | sed -e "s/127\.0\.0\.1:$UP_A/&(a)/" -e "s/127\.0\.0\.1:$UP_B/&(b)/" || echo "(no such series)"
grep -E '^portcullis_(circuit_state|circuit_transitions_total)' "$TMP/metrics-end.txt" || true
echo
echo "## /status (upstreams)"
echo
status=$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN/status" || true)
if command -v jq >/dev/null && jq -e . >/dev/null 2>&1 <<<"$status"; then
    jq '.upstreams // .' <<<"$status"
else
    echo "$status"
fi

# ---------------------------------------------------------------- summary
echo
echo "## Summary"
echo
for ph in "${PHASES[@]}"; do
    printf '%-8s %s: %s requests, %s failed (%s%%), p50 %s, p99 %s, %s retries (%s succeeded)\n' "$ph" \
        "(${ACTION[$ph]})" "${R[$ph,reqs]}" "${R[$ph,errs]}" "${R[$ph,pct]}" "${R[$ph,p50]}" "${R[$ph,p99]}" \
        "$(( R[$ph,retry_success] + R[$ph,retry_failure] ))" "${R[$ph,retry_success]}"
done
met=$(awk -v p="${R[kill,pct]}" 'BEGIN { print (p < 0.1) ? 1 : 0 }')
echo
printf 'Target (issue 7): killing one of two endpoints costs < 0.1%% failed requests with retries on:\n'
printf '  kill phase %s of %s failed = %s%%: %s\n' "${R[kill,errs]}" "${R[kill,reqs]}" "${R[kill,pct]}" \
    "$( (( met )) && echo met || echo "NOT met")"
printf '  in that phase: %s tries failed upstream, %s retries succeeded, %s failed again, %s found no budget;\n' \
    "${R[kill,tries_failed]}" "${R[kill,retry_success]}" "${R[kill,retry_failure]}" "${R[kill,retry_budget_exhausted]}"
printf '  %s requests were refused without a try (circuit open or no endpoint); the breaker opened %s time(s)\n' \
    "${R[kill,refused]}" "${R[kill,opened]}"
(( met )) || exit 2
exit 0
}
