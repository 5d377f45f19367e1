#!/usr/bin/env bash
# End-to-end load test: Portcullis against NGINX and HAProxy on one machine,
# and against the hyper baseline (benches/baseline_proxy.rs: a minimal hyper
# proxy from the same crates, the limit of our stack).
#
# Each proxy runs with one worker pinned to one core (PROXY_CORE, default 0);
# `wrk -t1 -c64` and the upstream share the other core (LOAD_CORE, default 1),
# the same for every proxy. Runs are interleaved (B P N H B P N H ...) and each
# figure is the median over the rounds. The headline figure is the proxy's CPU
# time per request (user and kernel, from /proc/PID/stat), because on 2 cores
# req/s may be capped by wrk + upstream rather than by the proxy.
# See docs/benchmarks.md for how to read the output.
#
# Usage:
#   benches/load.sh              3 rounds of 10 s per proxy (after a 2 s warm-up each)
#   benches/load.sh --quick      1 round of 3 s (smoke test)
#   benches/load.sh --install    apt-get install wrk, nginx-light and haproxy first
#   benches/load.sh --no-build   use target/release/portcullis and the newest
#                                target/release/deps/baseline_proxy-* as they are
#
# Environment (all optional):
#   DURATION=10s   measured time per run (wrk -d syntax: 5s, 1m)
#   WARMUP=2s      unmeasured wrk run before each measured run
#   ROUNDS=3       interleaved rounds
#   CONNS=64       wrk connections
#   PROXIES="baseline portcullis nginx haproxy"   which proxies, in round order
#   UPSTREAM=nginx|backend   the upstream: NGINX `return 200` with a fixed
#                  285-byte JSON body (default when nginx is installed), or
#                  `portcullis backend` (JSON echo; its body grows with the
#                  headers the proxy adds, so sizes differ between proxies)
#   PROXY_CORE=0 LOAD_CORE=1   the cores
#   BASE_PORT=18600  first port tried; ports in use are skipped
#   PORTCULLIS_BIN=path  binary to test (implies --no-build)
#   BASELINE_BIN=path    baseline_proxy executable to use (not built then)
#   KEEP_TMP=1     keep the generated configs and logs

# The whole script is one block, so bash parses it all before running it and
# an edit to this file during a run cannot break that run.
{
set -euo pipefail

die() { echo "load.sh: $*" >&2; exit 1; }
note() { echo "load.sh: $*" >&2; }

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
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-3s}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-1s}
fi
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PROXIES=${PROXIES:-baseline portcullis nginx haproxy}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BASE_PORT=${BASE_PORT:-18600}
[[ -n ${PORTCULLIS_BIN:-} ]] && BUILD=0

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer, got '$CONNS'"
# wrk duration -> seconds, for time bounds.
secs() {
    local v=$1
    case "$v" in
        *ms) echo 1 ;;
        *s) echo "${v%s}" ;;
        *m) echo $(( ${v%m} * 60 )) ;;
        *h) echo $(( ${v%h} * 3600 )) ;;
        *) echo "$v" ;;
    esac
}
[[ $(secs "$DURATION") =~ ^[0-9]+$ ]] || die "DURATION must look like 10s or 1m, got '$DURATION'"
[[ $(secs "$WARMUP") =~ ^[0-9]+$ ]] || die "WARMUP must look like 2s, got '$WARMUP'"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------- tools
if [[ $INSTALL == 1 ]]; then
    [[ $(id -u) == 0 ]] || die "--install needs root (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light haproxy \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx haproxy
fi
command -v wrk >/dev/null || die "wrk is required: apt-get install wrk (or run with --install)"
command -v taskset >/dev/null || die "taskset is required (util-linux)"
NCPU=$(nproc)
(( PROXY_CORE < NCPU && LOAD_CORE < NCPU )) || die "cores $PROXY_CORE/$LOAD_CORE do not exist (nproc=$NCPU)"
(( NCPU >= 2 )) || note "only $NCPU core: proxy and load generator share it; numbers mean little"
CLK_TCK=$(getconf CLK_TCK)

selected=()
for p in $PROXIES; do
    case "$p" in
        portcullis|baseline) selected+=("$p") ;;
        nginx) if command -v nginx >/dev/null; then selected+=("$p")
               else note "skipping NGINX: nginx not installed (apt-get install nginx-light, or --install)"; fi ;;
        haproxy) if command -v haproxy >/dev/null; then selected+=("$p")
                 else note "skipping HAProxy: haproxy not installed (apt-get install haproxy, or --install)"; fi ;;
        *) die "unknown proxy '$p' in PROXIES (baseline, portcullis, nginx, haproxy)" ;;
    esac
done
(( ${#selected[@]} > 0 )) || die "no proxy to test"

if [[ -z ${UPSTREAM:-} ]]; then
    if command -v nginx >/dev/null; then UPSTREAM=nginx; else UPSTREAM=backend; fi
fi
case "$UPSTREAM" in
    nginx) command -v nginx >/dev/null || die "UPSTREAM=nginx needs nginx installed" ;;
    backend) ;;
    *) die "UPSTREAM must be nginx or backend, got '$UPSTREAM'" ;;
esac

# ---------------------------------------------------------------- build
if [[ -n ${PORTCULLIS_BIN:-} ]]; then
    SRC_BIN=$PORTCULLIS_BIN
else
    SRC_BIN=$REPO/target/release/portcullis
    if [[ $BUILD == 1 ]]; then
        note "cargo build --release"
        (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
fi
[[ -x $SRC_BIN ]] || die "no binary at $SRC_BIN (build it, or set PORTCULLIS_BIN)"

# The hyper baseline is a bench target: `cargo bench --no-run` builds it into
# target/release/deps/baseline_proxy-HASH. Built after Portcullis so that
# target/release/portcullis is left as `cargo build --release` made it.
BL_SRC=""
if [[ " ${selected[*]} " == *" baseline "* ]]; then
    if [[ -n ${BASELINE_BIN:-} ]]; then
        BL_SRC=$BASELINE_BIN
        [[ -x $BL_SRC ]] || die "BASELINE_BIN=$BL_SRC is not an executable"
    elif [[ $BUILD == 1 ]]; then
        note "cargo bench --no-run --bench baseline_proxy"
        bl_json=$(cd "$REPO" && cargo bench --no-run --quiet --bench baseline_proxy --message-format=json-render-diagnostics) \
            || die "cargo bench --no-run --bench baseline_proxy failed"
        BL_SRC=$(grep '"reason":"compiler-artifact"' <<<"$bl_json" \
            | sed -n 's|.*"executable":"\([^"]*/baseline_proxy-[0-9a-f]*\)".*|\1|p' | tail -1 || true)
        [[ -n $BL_SRC && -x $BL_SRC ]] || die "cargo bench --no-run did not report a baseline_proxy executable"
    else
        for f in "$REPO"/target/release/deps/baseline_proxy-*; do
            [[ -f $f && -x $f && ${f##*/} != *.* ]] || continue  # not the .d files
            [[ -z $BL_SRC || $f -nt $BL_SRC ]] && BL_SRC=$f
        done
    fi
    if [[ -z $BL_SRC ]]; then
        note "skipping the hyper baseline: no target/release/deps/baseline_proxy-* (build it with cargo bench --no-run --bench baseline_proxy, or drop --no-build)"
        keep=()
        for p in "${selected[@]}"; do [[ $p == baseline ]] || keep+=("$p"); done
        selected=("${keep[@]}")
        (( ${#selected[@]} > 0 )) || die "no proxy to test"
    fi
fi

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-load.XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # called through the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    [[ -n ${WRK_PID:-} ]] && { kill -TERM "$WRK_PID" 2>/dev/null || true; }
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then note "configs and logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A copy, so a concurrent `cargo build` cannot swap the binary mid-run.
mkdir -p "$TMP/bin"
BIN=$TMP/bin/portcullis
cp "$SRC_BIN" "$BIN"
BL_BIN=$TMP/bin/baseline_proxy
[[ -n $BL_SRC ]] && cp "$BL_SRC" "$BL_BIN"

# ---------------------------------------------------------------- ports
NEXT_PORT=$BASE_PORT
port_free() { ! ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .; }
take_port() {  # take_port VAR: the next free port, into VAR
    local p=$NEXT_PORT
    while ! port_free "$p"; do
        p=$((p + 1))
        (( p < BASE_PORT + 500 )) || die "no free port in $BASE_PORT..$((BASE_PORT + 500))"
    done
    NEXT_PORT=$((p + 1))
    printf -v "$1" '%s' "$p"
}
command -v ss >/dev/null || die "ss is required (iproute2) to check ports"
take_port UP_PORT
take_port PC_PORT
take_port PC_ADMIN
take_port NG_PORT
take_port HA_PORT
take_port BL_PORT

# ---------------------------------------------------------------- helpers
# First line of the HTTP status of GET path, or empty (pure bash, no curl).
http_status() (
    port=$1 path=$2 line=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 0
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
    IFS= read -r -t 2 line <&3 || true
    exec 3<&-
    echo "${line%$'\r'}"
) 2>/dev/null
# Waits until GET / on port answers 200; pid is the process that must stay alive.
wait_ready() {
    local name=$1 port=$2 pid=$3 log=$4 st=""
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { note "$name exited at start; its log:"; tail -20 "$log" >&2; exit 1; }
        st=$(http_status "$port" /)
        [[ $st == "HTTP/1."?" 200"* ]] && return 0
        sleep 0.1
    done
    note "$name not answering 200 on 127.0.0.1:$port after 10 s (last status: '${st:-none}'); its log:"
    tail -20 "$log" >&2
    exit 1
}
# All pids of a proxy: the main process and its direct children (NGINX workers).
proxy_pids() {
    local main=$1
    echo "$main"
    # ppid is the 2nd field after "pid (comm) "; comm may hold spaces.
    awk -v m="$main" '{ line = $0; sub(/^.*\) /, "", line); split(line, f, " ");
        if (f[2] == m) { split(FILENAME, d, "/"); print d[3] } }' /proc/[0-9]*/stat 2>/dev/null || true
}
# "utime stime" in clock ticks, summed over a proxy's processes (each
# process's /proc/PID/stat already covers all its threads, live and exited).
cpu_ticks() {
    local u=0 s=0 pid f
    for pid in $(proxy_pids "$1"); do
        f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        # After "pid (comm) ": field 1 is state, utime is 12th, stime 13th.
        read -r -a a <<<"$f"
        u=$((u + a[11])); s=$((s + a[12]))
    done
    echo "$u $s"
}
rss_kib() {
    local t=0 pid v
    for pid in $(proxy_pids "$1"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# Busy ticks and total ticks of one CPU, from /proc/stat.
core_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
# wrk latency like 812.00us, 2.73ms, 1.02s -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

# ---------------------------------------------------------------- configs
BODY="{\"backend\":\"up\",\"ok\":true,\"pad\":\"$(printf '%*s' 250 '' | tr ' ' x)\"}"
NGINX_COMMON="
pid PREFIX/nginx.pid;
error_log PREFIX/error.log warn;
events { worker_connections 4096; }
"
NGINX_HTTP_COMMON="
  access_log off;
  client_body_temp_path PREFIX/body;
  proxy_temp_path PREFIX/proxy;
  fastcgi_temp_path PREFIX/fastcgi;
  uwsgi_temp_path PREFIX/uwsgi;
  scgi_temp_path PREFIX/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
"

mkdir -p "$TMP/upstream" "$TMP/nginx" "$TMP/haproxy" "$TMP/portcullis" "$TMP/baseline"

if [[ $UPSTREAM == nginx ]]; then
    cat >"$TMP/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
${NGINX_COMMON//PREFIX/$TMP/upstream}
http {
${NGINX_HTTP_COMMON//PREFIX/$TMP/upstream}
  server {
    listen 127.0.0.1:$UP_PORT;
    default_type application/json;
    location / { return 200 '$BODY'; }
  }
}
EOF
fi

cat >"$TMP/portcullis/gateway.yaml" <<EOF
listeners:
  - name: http
    bind: 127.0.0.1:$PC_PORT
admin:
  bind: 127.0.0.1:$PC_ADMIN
server:
  workers: 1
  max_connections: 10000
  access_log: false
upstreams:
  - name: up
    endpoints: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match:
      path_prefix: /
    upstream: up
EOF

# NGINX and HAProxy add X-Forwarded-For/-Proto/-Host like Portcullis does, so
# the upstream request is comparable (Portcullis also adds x-request-id on the
# response and a traceparent on the request).
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
${NGINX_COMMON//PREFIX/$TMP/nginx}
http {
${NGINX_HTTP_COMMON//PREFIX/$TMP/nginx}
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NG_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
EOF

cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$HA_PORT
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
EOF

# ---------------------------------------------------------------- start
start() {  # start NAME CORE LOG CMD...
    local name=$1 core=$2 log=$3; shift 3
    taskset -c "$core" "$@" >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    STARTED_PID=$pid
}

if [[ $UPSTREAM == nginx ]]; then
    start upstream "$LOAD_CORE" "$TMP/upstream/out.log" nginx -e "$TMP/upstream/error.log" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf"
    UP_DESC="NGINX return 200, fixed ${#BODY}-byte JSON body"
else
    start upstream "$LOAD_CORE" "$TMP/upstream/out.log" "$BIN" backend --bind "127.0.0.1:$UP_PORT" --name up --workers 1
    UP_DESC="portcullis backend --workers 1 (JSON echo of the request)"
fi
UP_PID=$STARTED_PID
wait_ready upstream "$UP_PORT" "$UP_PID" "$TMP/upstream/out.log"

declare -A PID PORT LABEL
LABEL[portcullis]=Portcullis; LABEL[nginx]=NGINX; LABEL[haproxy]=HAProxy; LABEL[baseline]="hyper baseline"
for p in "${selected[@]}"; do
    case "$p" in
        baseline)
            # One upstream, HTTP/1.1, one current-thread runtime: no config.
            start "$p" "$PROXY_CORE" "$TMP/baseline/out.log" "$BL_BIN" "127.0.0.1:$BL_PORT" "127.0.0.1:$UP_PORT"
            PORT[$p]=$BL_PORT ;;
        portcullis)
            start "$p" "$PROXY_CORE" "$TMP/portcullis/out.log" "$BIN" run --config "$TMP/portcullis/gateway.yaml"
            PORT[$p]=$PC_PORT ;;
        nginx)
            start "$p" "$PROXY_CORE" "$TMP/nginx/out.log" nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
            PORT[$p]=$NG_PORT ;;
        haproxy)
            start "$p" "$PROXY_CORE" "$TMP/haproxy/out.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
            PORT[$p]=$HA_PORT ;;
    esac
    PID[$p]=$STARTED_PID
    wait_ready "${LABEL[$p]}" "${PORT[$p]}" "${PID[$p]}" "$TMP/$p/out.log"
done

# ---------------------------------------------------------------- header
ver_nginx=$(command -v nginx >/dev/null && nginx -v 2>&1 | sed 's|^nginx version: nginx/||' || echo "-")
ver_haproxy=$(command -v haproxy >/dev/null && haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}' || echo "-")
ver_pc=$("$BIN" --version 2>/dev/null || echo portcullis)
# The baseline is built from the locked crates: report the hyper it uses.
ver_hyper=""
if [[ " ${selected[*]} " == *" baseline "* ]]; then
    ver_hyper=$(awk '$1 == "name" && $3 == "\"hyper\"" { getline; gsub(/"/, "", $3); print $3; exit }' "$REPO/Cargo.lock" 2>/dev/null || true)
    ver_hyper=", hyper baseline (hyper ${ver_hyper:-?})"
fi
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
echo "# Portcullis load test, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $NCPU cores, ${cpu_model:-unknown CPU}, Linux $(uname -r)"
echo "versions: $ver_pc$ver_hyper, nginx $ver_nginx, haproxy $ver_haproxy, $(wrk -v 2>&1 | awk 'NR == 1 {print "wrk", $2}' || true)"
echo "setup: proxies on core $PROXY_CORE (1 worker each); wrk -t1 -c$CONNS and upstream on core $LOAD_CORE"
echo "upstream: $UP_DESC"
# How busy the machine is with other work (all proxies idle now), over 1 s.
read -r ab at < <(awk '/^cpu /{ t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)
sleep 1
read -r bb bt < <(awk '/^cpu /{ t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)
BUSY=$(( (bb - ab) * 100 / (bt - at > 0 ? bt - at : 1) ))
if (( BUSY > 10 )); then
    echo "background load before the runs: ${BUSY}% of all cores busy (WARNING: other work is running; expect noisy numbers)"
else
    echo "background load before the runs: ${BUSY}% of all cores busy"
fi
echo "runs: $ROUNDS interleaved round(s) x ${#selected[@]} prox(ies), $DURATION each after a $WARMUP warm-up; figures are medians"
echo

# ---------------------------------------------------------------- runs
RESULTS=$TMP/results.tsv   # proxy round rps p50 p99 user sys total rss errors non2xx core0% core1% other-on-core0%
: >"$RESULTS"
WRK_BOUND=$(( $(secs "$DURATION") + 30 ))
WARM_BOUND=$(( $(secs "$WARMUP") + 30 ))
URL_PATH=/api/bench

# wrk on the load core, bounded in time; run in the background and waited
# for, so that a signal stops the script at once instead of after the run.
WRK_PID=""
run_wrk() {  # run_wrk BOUND_SECONDS OUTFILE WRK_ARGS...
    local bound=$1 out=$2; shift 2
    timeout "$bound" taskset -c "$LOAD_CORE" wrk "$@" >"$out" 2>&1 &
    WRK_PID=$!
    local rc=0
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    return "$rc"
}

# CPU time of this shell's finished children (user + sys), in ms: wrk's
# time reaches it through `timeout` when the run ends. `times` must run in
# this shell (not a subshell), so it goes through a file and a variable.
children_ms() {  # children_ms VAR
    times >"$TMP/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60000 + a[2] * 1000 } printf "%d", t }' "$TMP/times")"
}

run_one() {  # run_one proxy round
    local p=$1 r=$2 pid=${PID[$1]} port=${PORT[$1]} out=$TMP/wrk-$1-$2.txt
    kill -0 "$pid" 2>/dev/null || { note "${LABEL[$p]} died before round $r; its log:"; tail -20 "$TMP/$p/out.log" >&2; exit 1; }
    if [[ $(secs "$WARMUP") -gt 0 ]]; then
        run_wrk "$WARM_BOUND" /dev/null -t1 -c"$CONNS" -d"$WARMUP" "http://127.0.0.1:$port$URL_PATH" \
            || note "warm-up of ${LABEL[$p]} failed"
    fi
    local u0 s0 u1 s1 uu0 us0 uu1 us1 b0 t0 b0b t0b b1 t1 b1b t1b w0 w1
    read -r u0 s0 < <(cpu_ticks "$pid")
    read -r uu0 us0 < <(cpu_ticks "$UP_PID")
    read -r b0 t0 < <(core_ticks "$PROXY_CORE")
    read -r b1 t1 < <(core_ticks "$LOAD_CORE")
    children_ms w0
    run_wrk "$WRK_BOUND" "$out" -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port$URL_PATH" \
        || { note "wrk against ${LABEL[$p]} failed or timed out:"; cat "$out" >&2; exit 1; }
    children_ms w1
    read -r u1 s1 < <(cpu_ticks "$pid")
    read -r uu1 us1 < <(cpu_ticks "$UP_PID")
    read -r b0b t0b < <(core_ticks "$PROXY_CORE")
    read -r b1b t1b < <(core_ticks "$LOAD_CORE")
    kill -0 "$pid" 2>/dev/null || { note "${LABEL[$p]} died during round $r; its log:"; tail -20 "$TMP/$p/out.log" >&2; exit 1; }
    kill -0 "$UP_PID" 2>/dev/null || { note "the upstream died during round $r; its log:"; tail -20 "$TMP/upstream/out.log" >&2; exit 1; }
    local rss reqs rps p50 p99 sockerr non2xx
    rss=$(rss_kib "$pid")
    reqs=$(awk '/requests in/{print $1; exit}' "$out")
    rps=$(awk '/^Requests\/sec:/{print $2; exit}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2; exit}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out")")
    sockerr=$(awk '/Socket errors:/{gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$out")
    [[ -n $reqs && $reqs -gt 0 ]] || { note "wrk against ${LABEL[$p]} completed no request:"; cat "$out" >&2; exit 1; }
    # Columns: proxy round rps p50 p99 user sys total rss sockerr non2xx
    #   core0% core1% others-on-core0% wrk-us/req upstream-us/req others-on-core1%
    awk -v p="$p" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$reqs" -v hz="$CLK_TCK" \
        -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v dup=$((uu1 - uu0 + us1 - us0)) -v dw=$((w1 - w0)) \
        -v rss="$rss" -v se="${sockerr:-0}" -v bad="${non2xx:-0}" \
        -v db0=$((b0b - b0)) -v dt0=$((t0b - t0)) -v db1=$((b1b - b1)) -v dt1=$((t1b - t1)) 'BEGIN {
            us = 1e6 / hz / n                      # µs per request per clock tick
            if (dt0 <= 0) dt0 = 1; if (dt1 <= 0) dt1 = 1
            other0 = db0 - du - ds; if (other0 < 0) other0 = 0
            other1 = db1 - dup - dw * hz / 1000; if (other1 < 0) other1 = 0
            printf "%s\t%s\t%.0f\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.1f\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\n",
                p, r, rps, p50, p99, du * us, ds * us, (du + ds) * us, rss / 1024, se, bad,
                100 * db0 / dt0, 100 * db1 / dt1, 100 * other0 / dt0, dw * 1000 / n, dup * us, 100 * other1 / dt1
        }' >>"$RESULTS"
    tail -1 "$RESULTS" | awk -F'\t' -v l="${LABEL[$p]}" '{
        printf "round %s  %-14s %6s req/s  p50 %6.2f ms  p99 %6.2f ms  proxy %6.2f µs/req (user %.2f, sys %.2f)  rss %5.1f MiB  | wrk %.2f, upstream %.2f µs/req | others on cores: %.0f%%, %.0f%%%s\n",
            $2, l, $3, $4, $5, $8, $6, $7, $9, $15, $16, $14, $17,
            ($10 + $11 > 0 ? sprintf("  ERRORS: %d socket, %d non-2xx", $10, $11) : "")
    }'
}

for r in $(seq 1 "$ROUNDS"); do
    for p in "${selected[@]}"; do
        run_one "$p" "$r"
    done
done
echo

# ---------------------------------------------------------------- summary
median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v p="$1" -v c="$2" '$1 == p {print $c}' "$RESULTS" | median; }

declare -A M
for p in "${selected[@]}"; do
    for c in 3 4 5 6 7 8 9 12 13 14 15 16 17; do M[$p,$c]=$(col "$p" "$c"); done
    M[$p,err]=$(awk -F'\t' -v p="$p" '$1 == p {s += $10 + $11} END {print s + 0}' "$RESULTS")
done

echo "Medians over $ROUNDS round(s):"
echo
echo "| proxy | req/s | p50 ms | p99 ms | user µs/req | sys µs/req | total µs/req | RSS MiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for p in "${selected[@]}"; do
    printf "| %s | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |\n" "${LABEL[$p]}" \
        "${M[$p,3]}" "${M[$p,4]}" "${M[$p,5]}" "${M[$p,6]}" "${M[$p,7]}" "${M[$p,8]}" "${M[$p,9]}"
done
echo
echo "Where the time went (medians). The proxy is the limit when its core is ~100% busy with it;"
echo "wrk + upstream are when theirs is: 1e6 / (wrk + upstream µs/req) is the most req/s the load"
echo "core can drive. \"others\" is CPU time on a core that belongs to none of the processes under"
echo "test (a concurrent build, kernel threads): above a few % the run is noisy."
echo
echo "| proxy | core $PROXY_CORE busy % | others on core $PROXY_CORE % | core $LOAD_CORE busy % | others on core $LOAD_CORE % | wrk µs/req | upstream µs/req | errors (socket + non-2xx, all runs) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for p in "${selected[@]}"; do
    printf "| %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %d |\n" "${LABEL[$p]}" \
        "${M[$p,12]}" "${M[$p,14]}" "${M[$p,13]}" "${M[$p,17]}" "${M[$p,15]}" "${M[$p,16]}" "${M[$p,err]}"
done

if [[ " ${selected[*]} " == *" portcullis "* ]]; then
    peers=0
    for p in "${selected[@]}"; do [[ $p == portcullis ]] || peers=1; done
    if (( peers )); then
        echo
        echo "Portcullis / peer (req/s: above 1 is better; CPU µs/req: below 1 is better):"
        if [[ " ${selected[*]} " == *" baseline "* ]]; then
            echo "the hyper baseline row is the feature cost: each CPU cell is the ratio, then"
            echo "Portcullis minus the baseline in µs/req (what Portcullis adds to the bare stack)."
        fi
        echo
        echo "| peer | req/s ratio | total CPU µs/req ratio | user µs/req ratio | sys µs/req ratio |"
        echo "| --- | ---: | ---: | ---: | ---: |"
        for p in "${selected[@]}"; do
            [[ $p == portcullis ]] && continue
            awk -v l="${LABEL[$p]}" -v cost="$([[ $p == baseline ]] && echo 1 || echo 0)" \
                -v a="${M[portcullis,3]}" -v b="${M[$p,3]}" \
                -v ct="${M[portcullis,8]}" -v pt="${M[$p,8]}" \
                -v cu="${M[portcullis,6]}" -v pu="${M[$p,6]}" \
                -v cs="${M[portcullis,7]}" -v ps="${M[$p,7]}" 'function r(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" }
                # Feature cost (baseline row): the ratio, then Portcullis minus the baseline.
                function c(x, y) { return cost ? sprintf("%s (%+.2f µs)", r(x, y), x - y) : r(x, y) }
                BEGIN { if (cost) l = l " (feature cost)"
                        printf "| %s | %s | %s | %s | %s |\n", l, r(a, b), c(ct, pt), c(cu, pu), c(cs, ps) }'
        done
    fi
fi

total_err=0
for p in "${selected[@]}"; do total_err=$((total_err + M[$p,err])); done
if (( total_err > 0 )); then
    echo
    echo "WARNING: some runs had socket errors or non-2xx responses (see the per-round lines above)."
    exit 2
fi
exit 0
}
