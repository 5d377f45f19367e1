#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a
# figure this noisy 2-core VM cannot blur, for A/B-ing a change to the hot
# path when wall-clock runs (load.sh) disagree with themselves by 10-20%.
#
#   benches/instructions.sh BIN [BIN...]      e.g. an old and a new build
#
# Each binary runs the plain-proxy config (one worker, one route, access log
# off) under callgrind, in front of `portcullis backend` (from the first
# BIN). After a 3 s warm-up with counting off, `wrk -t1 -c16` runs for
# DURATION (6s) with counting on; requests are read from the gateway's
# /metrics before and after. Prints instructions per request (Ir/req) and
# keeps each profile for `callgrind_annotate --inclusive=yes FILE`.
#
# REQUESTS=refused prices a refusal instead: the route goes through a
# policy keyed on `route` at 1/s with a burst of 1, so every request but
# the first each second is answered 429 (its problem document, headers and
# metrics), and requests are read from portcullis_rejections_total.
#
# REQUESTS=limited prices a rate-limit check that never refuses (issue 5's
# "a policy that never trips"): the route goes through a policy keyed on
# `header:x-api-key` at 1e8/s with a burst of 1e8, and wrk sends
# `x-api-key: bench-client`. Its baseline is the same request without the
# policy: `REQUESTS=proxied WRK_HEADER="x-api-key: bench-client"`.
#
# Instructions are not time (a cache miss or a syscall's kernel work is
# invisible here), so use this beside load.sh, not instead of it. The
# gateway runs ~50x slower under valgrind; everything is bounded by
# timeouts and killed on exit. Needs valgrind and wrk (apt-get install
# valgrind wrk); skips with a message without them.
set -euo pipefail

DURATION=${DURATION:-6s}
REQUESTS=${REQUESTS:-proxied}
case $REQUESTS in
    proxied) COUNTER=portcullis_requests_total POLICY="" ROUTE_POLICY="" ;;
    refused)
        COUNTER=portcullis_rejections_total
        POLICY="
rate_limits:
  - name: refuse-all
    key: [route]
    rate: 1/s
    burst: 1"
        ROUTE_POLICY="
    rate_limit: refuse-all" ;;
    limited)
        COUNTER=portcullis_requests_total
        WRK_HEADER=${WRK_HEADER:-"x-api-key: bench-client"}
        POLICY="
rate_limits:
  - name: never-trips
    key: header:x-api-key
    rate: 100000000/s
    burst: 100000000"
        ROUTE_POLICY="
    rate_limit: never-trips" ;;
    *) echo "instructions.sh: REQUESTS must be proxied, refused or limited, got '$REQUESTS'" >&2; exit 2 ;;
esac
WRK_HEADER=${WRK_HEADER:-}
WRK_ARGS=()
[[ -n $WRK_HEADER ]] && WRK_ARGS=(-H "$WRK_HEADER")
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "instructions.sh: skipped: $tool is not installed (apt-get install valgrind wrk curl)"
        exit 0
    fi
done

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP=$(free_port)
GW=$(free_port)
ADMIN=$(free_port)
"$1" backend --bind "127.0.0.1:$UP" --name bench >/dev/null 2>&1 &
PIDS+=($!)

cat >"$TMP/gateway.yaml" <<EOF
listeners:
  - name: http
    bind: 127.0.0.1:$GW
admin:
  bind: 127.0.0.1:$ADMIN
server:
  workers: 1
  access_log: false
upstreams:
  - name: up
    endpoints: [127.0.0.1:$UP]$POLICY
routes:
  - name: all
    match: { path_prefix: / }
    upstream: up$ROUTE_POLICY
EOF

requests() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" |
        awk -v c="$COUNTER" 'index($0, c) == 1 {s += $2} END {printf "%d\n", s}'
}

n=0
for bin in "$@"; do
    n=$((n + 1))
    out="$TMP/callgrind.$n"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" run --config "$TMP/gateway.yaml" >"$TMP/gateway.$n.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 120); do
        curl -s -o /dev/null "http://127.0.0.1:$GW/" && break
        sleep 0.5
    done
    timeout 30 wrk -t1 -c16 -d3s "${WRK_ARGS[@]}" "http://127.0.0.1:$GW/" >/dev/null
    before=$(requests)
    callgrind_control -i on "$pid" >/dev/null
    timeout 60 wrk -t1 -c16 -d"$DURATION" "${WRK_ARGS[@]}" "http://127.0.0.1:$GW/" >/dev/null
    callgrind_control -i off "$pid" >/dev/null
    after=$(requests)
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    profile=$(ls -t "$out".* | head -1)
    ir=$(callgrind_annotate "$profile" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}')
    reqs=$((after - before))
    echo "$bin: $reqs $REQUESTS requests, $ir instructions, $((ir / reqs)) per request (profile: $profile)"
done
trap - EXIT
cleanup
echo "profiles kept in $TMP"
