#!/usr/bin/env bash
# Soak test (issue 10, front-door hardening): a bounded, moderate, mixed load
# for SOAK_SECONDS (default 600) against one Portcullis on 127.0.0.1, sampling
# the gateway every SOAK_INTERVAL seconds, to find leaks (memory, file
# descriptors, threads) and stuck connections, not throughput. The load is
# moderate on purpose (about 1,070 requests/s in all by default, 15-20% of
# one core for the gateway), so a 2-core machine is not just saturated.
#
# Running at the same time, each for the whole SOAK_SECONDS:
#   keep-alive  wrk -c$KA_CONNS, HTTP/1.1 keep-alive, each connection waiting
#               KA_DELAY_MS between requests; cycles GETs, 2 KiB POSTs and a
#               path no route matches (404) to the `app` upstream
#   new-conn    wrk -c$CLOSE_CONNS -H 'Connection: close' (CLOSE_DELAY_MS
#               between requests): a new TCP connection per request
#   h2          h2load -c$H2_CLIENTS -m$H2_STREAMS --rps $H2_RPS per client,
#               h2c with prior knowledge, round robin over four `app` paths
#               and the fault upstream's `flaky` path
#   invalid     BAD_RPS raw-socket requests a second (python3), each kind in
#               turn on its own connection: a non-numeric Content-Length,
#               Content-Length with Transfer-Encoding, a 32 KiB header (431),
#               a huge Content-Length (413), a garbage request line, an
#               unknown HTTP version, a bad chunk size, an HTTP/2 preface with
#               an undecodable HEADERS frame, a body cut short by the client,
#               20 pipelined requests whose answers are never read, a request
#               head abandoned half-way, a head that stalls (the gateway must
#               close it at header_read_timeout, 5 s here) and a connection
#               that sends nothing (closed at idle_timeout, 30 s here)
#   faults      FAULT_RPS requests a second (python3, one connection each) to
#               a route whose upstream is two endpoints of a small python3
#               http.server written into the temp dir, with fault paths:
#               500, 503, a reset (RST) or a close (FIN) instead of an
#               answer, a 3 s answer (the route's timeout is 1 s: 504), a
#               body cut after 100 of 4096 bytes, a non-HTTP answer, a slow
#               chunked stream, a 256 KiB body, and `flaky`, which answers
#               from a fixed cycle of those (mostly 200); plus clients that
#               give up while their request waits upstream or mid-body.
#               The upstream has health checks, outlier detection, a
#               circuit breaker and retries (on connect_error, reset, 502,
#               503), so their state machines run too. Deterministic: every
#               client cycles through its list in order.
#
# Each sample (a CSV row; one line printed as it is taken) has the gateway's
# RSS (VmRSS), open fds (/proc/PID/fd), threads, the open-connections gauge
# (portcullis_open_connections, all listeners), requests in flight
# (portcullis_in_flight_requests), the established client and upstream
# sockets (ss), requests per second (portcullis_requests_total) and CPU.
# Before the load: an idle baseline. After it: the load is stopped, and the
# script waits (5 s at least, up to SOAK_SETTLE) for the gauge, the client
# sockets and the fds to get back to the baseline. Pooled upstream
# connections close 30 s after their last use, found by a reaper that runs
# every 30 s: up to a minute, hence SOAK_SETTLE's 90 s default.
#
# How to read the verdict (every check is printed with its threshold):
#   alive        the gateway never exited, and /health/live answers 200
#   no panic     no "panicked" in the gateway's log
#   connections  portcullis_open_connections back to the idle baseline, no
#                established client socket, 0 requests in flight (the gauge
#                and every endpoint's in_flight in /status)
#   fds          back to the baseline (+ FD_SLACK: health checks open and
#                close a connection every 2 s) within SOAK_SETTLE
#   RSS trend    mean RSS of the first third of the samples after the
#                warm-up (SOAK_WARMUP: the first 60 s, or 10% of shorter
#                runs) against the last third, and the least-squares slope
#                (KiB/min) over the same samples: both the growth between
#                thirds and the slope times the window must stay under
#                max(RSS_MAX_GROWTH_KIB, RSS_MAX_GROWTH_PCT% of the first
#                third), 2 MiB or 5% by default
#   fd trend     the same thirds for fds: at most FD_MAX_GROWTH more
#   load         every load generator ran its whole time and exited 0
# PASS exits 0, FAIL 1. A missing tool exits 2 (with the reason), a set-up
# failure (build, start) 3. On FAIL the temp dir is kept for a look.
#
# Usage:
#   benches/soak.sh                  600 s (about 11 min with the build and checks)
#   SOAK_SECONDS=60 benches/soak.sh  a one-minute smoke run
#   benches/soak.sh --install        apt-get install wrk, nghttp2-client (h2load),
#                                    curl and python3 first, where missing
#   benches/soak.sh --no-build       use target/release/portcullis as it is
#
# Environment (all optional):
#   SOAK_SECONDS=600  load duration (whole seconds, at least 30)
#   SOAK_INTERVAL=5   seconds between samples
#   SOAK_WARMUP=      seconds of samples left out of the trend (default
#                     min(60, SOAK_SECONDS / 10))
#   SOAK_SETTLE=90    seconds to wait at most after the load for the baseline
#   SOAK_OUT=dir      also copy the CSV, the report and the logs there
#   KA_CONNS=16 KA_DELAY_MS=20         keep-alive wrk (at most ~800 req/s)
#   CLOSE_CONNS=4 CLOSE_DELAY_MS=40    new-connection wrk (at most ~100 conn/s)
#   H2_CLIENTS=4 H2_STREAMS=8 H2_RPS=50   h2load (200 req/s in all)
#   BAD_RPS=5 FAULT_RPS=10             the python3 trickles
#   WORKERS=auto      the gateway's server.workers
#   RSS_MAX_GROWTH_KIB=2048 RSS_MAX_GROWTH_PCT=5 FD_MAX_GROWTH=16 FD_SLACK=2
#   BASE_PORT=19700   first port tried; ports in use are skipped
#   PORTCULLIS_BIN=path  binary to test (implies --no-build)
#   KEEP_TMP=1        keep the temp dir (configs, logs, CSV) after a PASS too
# Only 127.0.0.1 is used; every process started is stopped on exit
# (EXIT, INT, TERM).

# The whole script is one block, so bash parses it all before running it and
# an edit to this file during a run cannot break that run.
{
set -euo pipefail
die() { echo "soak.sh: $*" >&2; exit 3; }
note() { echo "soak.sh: $*" >&2; }
missing() { echo "soak.sh: $*" >&2; exit 2; }

# ---------------------------------------------------------------- options
INSTALL=0 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --install) INSTALL=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_INTERVAL=${SOAK_INTERVAL:-5}
SOAK_SETTLE=${SOAK_SETTLE:-90}
KA_CONNS=${KA_CONNS:-16}
KA_DELAY_MS=${KA_DELAY_MS:-20}
CLOSE_CONNS=${CLOSE_CONNS:-4}
CLOSE_DELAY_MS=${CLOSE_DELAY_MS:-40}
H2_CLIENTS=${H2_CLIENTS:-4}
H2_STREAMS=${H2_STREAMS:-8}
H2_RPS=${H2_RPS:-50}
BAD_RPS=${BAD_RPS:-5}
FAULT_RPS=${FAULT_RPS:-10}
WORKERS=${WORKERS:-auto}
RSS_MAX_GROWTH_KIB=${RSS_MAX_GROWTH_KIB:-2048}
RSS_MAX_GROWTH_PCT=${RSS_MAX_GROWTH_PCT:-5}
FD_MAX_GROWTH=${FD_MAX_GROWTH:-16}
FD_SLACK=${FD_SLACK:-2}
BASE_PORT=${BASE_PORT:-19700}
[[ -n ${PORTCULLIS_BIN:-} ]] && BUILD=0

for v in SOAK_SECONDS SOAK_INTERVAL SOAK_SETTLE KA_CONNS KA_DELAY_MS CLOSE_CONNS CLOSE_DELAY_MS \
    H2_CLIENTS H2_STREAMS H2_RPS BAD_RPS FAULT_RPS RSS_MAX_GROWTH_KIB RSS_MAX_GROWTH_PCT \
    FD_MAX_GROWTH FD_SLACK BASE_PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
(( SOAK_SECONDS >= 30 )) || die "SOAK_SECONDS must be at least 30"
(( SOAK_INTERVAL >= 1 && SOAK_INTERVAL * 6 <= SOAK_SECONDS )) \
    || die "SOAK_INTERVAL must be at least 1 and leave 6 samples in SOAK_SECONDS"
(( SOAK_SETTLE >= 5 )) || die "SOAK_SETTLE must be at least 5"
(( BAD_RPS >= 1 && FAULT_RPS >= 1 && KA_CONNS >= 1 && CLOSE_CONNS >= 1 && H2_CLIENTS >= 1 && H2_RPS >= 1 )) \
    || die "the connection counts and rates must be at least 1"
if [[ -z ${SOAK_WARMUP:-} ]]; then
    SOAK_WARMUP=$(( SOAK_SECONDS / 10 < 60 ? SOAK_SECONDS / 10 : 60 ))
fi
if ! [[ $SOAK_WARMUP =~ ^[0-9]+$ ]] || (( SOAK_WARMUP * 2 >= SOAK_SECONDS )); then
    die "SOAK_WARMUP must be whole seconds under half of SOAK_SECONDS, got '$SOAK_WARMUP'"
fi
[[ $WORKERS == auto || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be auto or a positive integer"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------- tools
if [[ $INSTALL == 1 ]]; then
    [[ $(id -u) == 0 ]] || die "--install needs root (apt-get)"
    want=()
    command -v wrk >/dev/null || want+=(wrk)
    command -v h2load >/dev/null || want+=(nghttp2-client)
    command -v curl >/dev/null || want+=(curl)
    command -v python3 >/dev/null || want+=(python3)
    if (( ${#want[@]} > 0 )); then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${want[@]}"
    fi
fi
command -v wrk >/dev/null || missing "wrk is required for the HTTP/1.1 load: apt-get install wrk (or run with --install)"
command -v h2load >/dev/null || missing "h2load is required for the HTTP/2 load: apt-get install nghttp2-client (or run with --install)"
command -v curl >/dev/null || missing "curl is required to read /metrics: apt-get install curl (or run with --install)"
command -v python3 >/dev/null || missing "python3 is required for the fault upstream and the invalid requests: apt-get install python3 (or run with --install)"
command -v ss >/dev/null || missing "ss is required (iproute2) to check ports and count sockets"
[[ -d /proc/self/fd ]] || missing "/proc is required to sample the gateway"
# (The help text in a variable first: `h2load --help | grep -q` can fail
# under pipefail when grep exits before h2load has written everything.)
h2help=$(h2load --help 2>&1 || true)
[[ $h2help == *--rps* ]] || missing "this h2load has no --rps (nghttp2 1.44 or later is needed for a bounded rate)"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- build
SRC_BIN=${PORTCULLIS_BIN:-$REPO/target/release/portcullis}
if [[ $BUILD == 1 ]]; then
    note "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet --bin portcullis) || die "cargo build --release failed"
fi
[[ -x $SRC_BIN ]] || die "no binary at $SRC_BIN (build with cargo build --release, or set PORTCULLIS_BIN)"

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-soak.XXXXXX")
KEEP=${KEEP_TMP:-0}
# Every process started, in the order started; the gateway last to stop.
PIDS=()
GW_PID=""
# shellcheck disable=SC2317  # called through the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid pids=("${PIDS[@]}")
    [[ -n $GW_PID ]] && pids+=("$GW_PID")
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 25); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then note "configs, logs and samples kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A copy, so a concurrent `cargo build` cannot swap the binary mid-run.
BIN=$TMP/portcullis
cp "$SRC_BIN" "$BIN"

# ---------------------------------------------------------------- ports
port_free() { [[ -z $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]; }
next_port=$BASE_PORT
take_port() {
    while ! port_free "$next_port"; do
        next_port=$((next_port + 1))
        (( next_port < BASE_PORT + 500 )) || die "no free port in $BASE_PORT..$((BASE_PORT + 500))"
    done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + 1))
}
take_port GW; take_port ADMIN; take_port UP_APP; take_port UP_F1; take_port UP_F2

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {  # wait_listening PORT WHAT PID: up to 10 s
    for _ in $(seq 100); do
        listening "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at start; see its log in $TMP"
        sleep 0.1
    done
    die "$2 is not listening on 127.0.0.1:$1 after 10 s"
}
metrics() { curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" || true; }
# The sum of the series whose name and labels start with $1, in file $2.
series() { awk -v k="$1" 'index($0, k) == 1 { v += $NF } END { printf "%.0f", v }' "$2"; }
fd_count() { find "/proc/$GW_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
status_field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$GW_PID/status" 2>/dev/null || true; }
# utime + stime of the gateway, in clock ticks (fields 14 and 15 of stat;
# the comm field may hold spaces, so count after its closing parenthesis).
cpu_ticks() { sed 's/^.*) //' "/proc/$GW_PID/stat" 2>/dev/null | awk '{ print $12 + $13 }' || echo 0; }
# Established sockets: client connections the gateway holds (local port
# GW) and connections it holds to the upstreams (remote port an upstream's).
client_socks() { ss -Htn state established "( sport = :$GW )" 2>/dev/null | wc -l; }
upstream_socks() {
    ss -Htn state established "( dport = :$UP_APP or dport = :$UP_F1 or dport = :$UP_F2 )" 2>/dev/null | wc -l
}
# Requests in flight per endpoint, summed over /status.
status_in_flight() {
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN/status" \
        | grep -o '"in_flight": *[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }' || echo "?"
}

CSV=$TMP/soak.csv
echo "phase,t_s,rss_kib,fds,threads,open_conns,in_flight,client_socks,upstream_socks,requests_total,req_per_s,cpu_pct" >"$CSV"
LAST_T="" LAST_REQ="" LAST_TICKS=""
# sample PHASE T: one CSV row; sets S_* for the caller.
sample() {
    local phase=$1 t=$2 m=$TMP/metrics-last.txt ticks rps cpu
    S_RSS=$(status_field VmRSS); S_THR=$(status_field Threads); S_FDS=$(fd_count)
    ticks=$(cpu_ticks)
    metrics >"$m"
    S_OPEN=$(series portcullis_open_connections "$m")
    S_INFL=$(series portcullis_in_flight_requests "$m")
    S_REQ=$(series portcullis_requests_total "$m")
    S_CS=$(client_socks); S_US=$(upstream_socks)
    if [[ -n $LAST_T ]]; then
        rps=$(awk -v a="$S_REQ" -v b="$LAST_REQ" -v t="$t" -v u="$LAST_T" 'BEGIN { printf "%.0f", (t > u ? (a - b) / (t - u) : 0) }')
        cpu=$(awk -v a="$ticks" -v b="$LAST_TICKS" -v t="$t" -v u="$LAST_T" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (t > u ? 100 * (a - b) / hz / (t - u) : 0) }')
    else
        rps=0 cpu=0.0
    fi
    LAST_T=$t LAST_REQ=$S_REQ LAST_TICKS=$ticks
    S_RPS=$rps S_CPU=$cpu
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$phase" "$(printf '%.0f' "$t")" "${S_RSS:-0}" "$S_FDS" "${S_THR:-0}" \
        "$S_OPEN" "$S_INFL" "$S_CS" "$S_US" "$S_REQ" "$rps" "$cpu" >>"$CSV"
}
ROW_FMT='%-7s %6s %9s %6s %7s %6s %9s %7s %9s %7s %6s\n'
print_header() {
    # shellcheck disable=SC2059  # the format is ours
    printf "$ROW_FMT" phase t_s rss_kib fds threads conns in_flight c_socks up_socks "req/s" "cpu%"
}
print_row() {
    # shellcheck disable=SC2059
    printf "$ROW_FMT" "$1" "$(printf '%.0f' "$2")" "${S_RSS:-?}" "$S_FDS" "${S_THR:-?}" "$S_OPEN" "$S_INFL" \
        "$S_CS" "$S_US" "$S_RPS" "$S_CPU"
}

# ---------------------------------------------------------------- python3 helper
# One file, three roles: `upstream PORT NAME` (the fault upstream),
# `invalid PORT RATE DEADLINE` and `faults PORT RATE DEADLINE` (the
# trickles; DEADLINE is a Unix time). A trickle starts one request every
# 1/RATE s, each in its own thread (at most 64 at once; past that the turn
# is counted as "skipped"), and prints one line per kind at the end:
# kind, count, outcomes ("400:120 closed:3").
cat >"$TMP/soak_helper.py" <<'EOF'
import collections, itertools, socket, struct, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def upstream(port, name):
    flaky = ["ok", "ok", "ok", "err", "ok", "ok", "reset", "ok", "ok", "slow",
             "ok", "unavail", "ok", "ok", "close", "ok", "garbage", "ok", "partial", "ok"]
    turn = itertools.count()
    ok_body = ('{"backend":"%s","ok":true}\n' % name).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args):
            pass
        def drain_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return
                    self.rfile.read(size + 2)
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def serve(self):
            try:
                self.drain_body()
                what = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                if what == "flaky":
                    what = flaky[next(turn) % len(flaky)]
                if what == "err":
                    self.answer(500, b'{"error":"boom"}\n')
                elif what == "unavail":
                    self.answer(503, b'{"error":"unavailable"}\n')
                elif what == "reset":
                    # RST, no answer: linger 0, closed once the handler's files are.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                elif what == "close":
                    self.close_connection = True  # FIN, no answer
                elif what == "slow":
                    time.sleep(3)
                    self.answer(200, ok_body)
                elif what == "partial":
                    self.send_response(200)
                    self.send_header("Content-Length", "4096")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    self.close_connection = True
                elif what == "garbage":
                    self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
                    self.close_connection = True
                elif what == "stream":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for _ in range(10):
                        self.wfile.write(b"400\r\n" + b"s" * 1024 + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.05)
                    self.wfile.write(b"0\r\n\r\n")
                elif what == "big":
                    self.answer(200, b"b" * 262144)
                else:
                    self.answer(200, ok_body)
            except (OSError, ValueError):
                self.close_connection = True
        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = serve

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True
    Server(("127.0.0.1", port), Handler).serve_forever()

HEAD = b"Host: soak\r\nUser-Agent: soak-invalid\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# HEADERS on stream 1 (END_STREAM | END_HEADERS) holding the HPACK index 0:
# a COMPRESSION_ERROR, answered with GOAWAY.
H2_BAD_HEADERS = b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x80"
INVALID = [
    ("bad_content_length", b"POST /app/bad HTTP/1.1\r\n" + HEAD + b"Content-Length: abc\r\n\r\n"),
    ("cl_and_te", b"POST /app/bad HTTP/1.1\r\n" + HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("oversized_head", b"GET /app/bad HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 32768 + b"\r\n\r\n"),
    ("huge_content_length", b"POST /app/bad HTTP/1.1\r\n" + HEAD + b"Content-Length: 99999999999\r\n\r\n"),
    ("garbage_line", b"\x00\x01\x02NOT-HTTP AT ALL\r\n\r\n"),
    ("bad_version", b"GET /app/bad HTTP/7.1\r\n" + HEAD + b"\r\n"),
    ("bad_chunk", b"POST /app/bad HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("h2_bad_headers", H2_PREFACE + H2_SETTINGS + H2_BAD_HEADERS),
    ("body_cut_short", None),
    ("pipelined_unread", None),
    ("head_abandoned", None),
    ("head_stalled", None),
    ("silent", None),
]
FAULTS = [
    ("GET", "/fault/ok"), ("GET", "/fault/err"), ("GET", "/fault/unavail"),
    ("GET", "/fault/reset"), ("GET", "/fault/close"), ("GET", "/fault/slow"),
    ("GET", "/fault/partial"), ("GET", "/fault/garbage"), ("GET", "/fault/stream"),
    ("GET", "/fault/big"), ("POST", "/fault/reset"), ("GET", "/fault/flaky"),
    ("GET", "/fault/flaky"), ("GET", "/fault/flaky"),
    ("ABANDON_WAITING", "/fault/slow"), ("ABANDON_BODY", "/fault/stream"),
]
stop = threading.Event()

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def read_answer(s, limit=5.0):
    """The status of the first answer ("400"), "goaway" for an HTTP/2 GOAWAY,
    "closed" (EOF before any answer), "reset" or "timeout"."""
    data, end = b"", time.monotonic() + limit
    try:
        while time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"HTTP/") and b"\r\n" in data:
                return data.split(b" ", 2)[1].decode(errors="replace")
            if not data.startswith(b"HTTP/") and len(data) >= 9:
                # HTTP/2 frames: look for a GOAWAY (type 7).
                off = 0
                while off + 9 <= len(data):
                    length = int.from_bytes(data[off:off + 3], "big")
                    if data[off + 3] == 7:
                        return "goaway"
                    off += 9 + length
        else:
            return "timeout"
    except socket.timeout:
        return "timeout"
    except ConnectionResetError:
        return "reset" if not data else ("goaway" if b"\x07" in data else "reset")
    if data.startswith(b"HTTP/"):
        return data.split(b" ", 2)[1].decode(errors="replace") if b" " in data else "partial"
    return "closed" if not data else "junk"

def closes(s, limit=1.0):
    """After an answer: does the gateway close the connection within limit?"""
    end = time.monotonic() + limit
    try:
        while time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            if not s.recv(65536):
                return "closed"
    except socket.timeout:
        pass
    except ConnectionResetError:
        return "reset"
    return "kept-open"

def hold(s, cap):
    """Waits until the gateway closes the connection: "closed@Ns", or
    "open@stop" if the run ends first, or "NOT-CLOSED>Ns" past cap."""
    start = time.monotonic()
    s.settimeout(0.5)
    while not stop.is_set():
        try:
            chunk = s.recv(65536)
            if not chunk:
                return "closed@%ds" % round(time.monotonic() - start)
        except socket.timeout:
            pass
        except ConnectionResetError:
            return "reset@%ds" % round(time.monotonic() - start)
        if time.monotonic() - start > cap:
            return "NOT-CLOSED>%ds" % cap
    return "open@stop"

def invalid_one(port, kind, payload):
    s = connect(port)
    try:
        if payload is not None:
            s.sendall(payload)
            status = read_answer(s)
            return status + "/" + closes(s) if status.isdigit() else status
        if kind == "body_cut_short":
            s.sendall(b"POST /app/cut HTTP/1.1\r\n" + HEAD + b"Content-Length: 10000\r\n\r\n" + b"c" * 100)
            time.sleep(0.2)
            return "sent"
        if kind == "pipelined_unread":
            s.sendall((b"GET /app/pipe HTTP/1.1\r\n" + HEAD + b"\r\n") * 20)
            return "sent"
        if kind == "head_abandoned":
            s.sendall(b"GET /app/abandoned HTTP/1.1\r\n" + HEAD + b"X-Partial: ")
            time.sleep(0.2)
            return "sent"
        if kind == "head_stalled":
            s.sendall(b"GET /app/stalled HTTP/1.1\r\n" + HEAD)
            return hold(s, 15)
        if kind == "silent":
            return hold(s, 45)
        return "?"
    finally:
        s.close()

def fault_one(port, kind):
    method, path = kind
    s = connect(port)
    try:
        if method == "ABANDON_WAITING":
            s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n")
            time.sleep(0.3)
            return "abandoned"
        if method == "ABANDON_BODY":
            s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n")
            status = read_answer(s)
            return status + "+abandoned"
        body = b"p" * 512 if method == "POST" else b""
        s.sendall(method.encode() + b" " + path.encode() + b" HTTP/1.1\r\n" + HEAD +
                  b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        status = read_answer(s)
        # Read to the end, to see bodies cut short.
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass
        return status
    finally:
        s.close()

def trickle(role, port, rate, deadline):
    kinds = INVALID if role == "invalid" else FAULTS
    counts = collections.OrderedDict()
    for k in kinds:
        counts.setdefault(k[0] if role == "invalid" else "%s %s" % k, collections.Counter())
    lock = threading.Lock()
    live = threading.Semaphore(64)
    threads = []

    def run(kind):
        label = kind[0] if role == "invalid" else "%s %s" % kind
        try:
            if role == "invalid":
                outcome = invalid_one(port, kind[0], kind[1])
            else:
                outcome = fault_one(port, kind)
        except ConnectionRefusedError:
            outcome = "refused"
        except ConnectionResetError:
            outcome = "reset"
        except OSError as e:
            outcome = type(e).__name__
        finally:
            live.release()
        with lock:
            counts[label][outcome] += 1

    nxt = time.monotonic()
    i = 0
    while time.time() < deadline:
        kind = kinds[i % len(kinds)]
        i += 1
        if live.acquire(blocking=False):
            t = threading.Thread(target=run, args=(kind,), daemon=True)
            t.start()
            threads.append(t)
        else:
            with lock:
                counts[kind[0] if role == "invalid" else "%s %s" % kind]["skipped"] += 1
        threads = [t for t in threads if t.is_alive()]
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
    stop.set()
    end = time.monotonic() + 10
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    with lock:
        for label, c in counts.items():
            print("%s\t%d\t%s" % (label, sum(c.values()),
                                  " ".join("%s:%d" % kv for kv in sorted(c.items())) or "-"))
    sys.stdout.flush()

if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        upstream(int(sys.argv[2]), sys.argv[3])
    else:
        trickle(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
EOF
PY=$(command -v python3)

# ---------------------------------------------------------------- upstreams and gateway
"$BIN" backend --bind "127.0.0.1:$UP_APP" --name app >"$TMP/backend-app.log" 2>&1 &
PIDS+=("$!"); wait_listening "$UP_APP" "backend app" "$!"
"$PY" "$TMP/soak_helper.py" upstream "$UP_F1" f1 >"$TMP/upstream-f1.log" 2>&1 &
PIDS+=("$!"); wait_listening "$UP_F1" "fault upstream f1" "$!"
"$PY" "$TMP/soak_helper.py" upstream "$UP_F2" f2 >"$TMP/upstream-f2.log" 2>&1 &
PIDS+=("$!"); wait_listening "$UP_F2" "fault upstream f2" "$!"

CONFIG=$TMP/gateway.yaml
cat >"$CONFIG" <<EOF
listeners:
  - { name: http, bind: '127.0.0.1:$GW' }
admin: { bind: '127.0.0.1:$ADMIN' }
server:
  workers: $WORKERS
  access_log: false
  header_read_timeout: 5s
  idle_timeout: 30s
  max_header_bytes: 16KiB
  max_body_bytes: 1MiB
upstreams:
  - name: app
    endpoints: ['127.0.0.1:$UP_APP']
  - name: faulty
    endpoints: ['127.0.0.1:$UP_F1', '127.0.0.1:$UP_F2']
    connect_timeout: 500ms
    health_check: { path: /health, interval: 2s, timeout: 500ms }
    outlier_detection: { consecutive_failures: 5, eject_for: 2s, max_eject_for: 10s }
    circuit_breaker: { consecutive_failures: 10, failure_ratio: 0.8, min_requests: 40, open_for: 2s }
    retry: { attempts: 1, on: [connect_error, reset, 502, 503] }
routes:
  - { name: app, match: { path_prefix: /app }, upstream: app }
  - { name: fault, match: { path_prefix: /fault }, strip_prefix: /fault, upstream: faulty, timeout: 1s }
EOF
"$BIN" check "$CONFIG" >"$TMP/check.txt" 2>&1 || die "the generated config does not check: $(cat "$TMP/check.txt")"
"$BIN" run --no-watch --config "$CONFIG" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do
    curl -sf --max-time 1 "http://127.0.0.1:$ADMIN/health/ready" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited at start: $(tail -5 "$TMP/gateway.log")"
    sleep 0.1
done
curl -sf --max-time 2 "http://127.0.0.1:$ADMIN/health/ready" >/dev/null || die "gateway not ready; log: $TMP/gateway.log"
curl -sf --max-time 2 "http://127.0.0.1:$GW/app/x" >/dev/null || die "gateway does not proxy to app; log: $TMP/gateway.log"
curl -sf --max-time 2 "http://127.0.0.1:$GW/fault/ok" >/dev/null || die "gateway does not proxy to the fault upstream; log: $TMP/gateway.log"

# wrk's request cycle: GETs, 2 KiB POSTs and one path without a route.
cat >"$TMP/mix.lua" <<EOF
local reqs, i = {}, 0
function init(args)
  local body = string.rep("w", 2048)
  reqs = {
    wrk.format("GET", "/app/users/1"),
    wrk.format("GET", "/app/users/2?x=1"),
    wrk.format("POST", "/app/orders", { ["Content-Type"] = "application/octet-stream" }, body),
    wrk.format("GET", "/app/items"),
    wrk.format("GET", "/app/users/3"),
    wrk.format("POST", "/app/orders", { ["Content-Type"] = "application/octet-stream" }, body),
    wrk.format("GET", "/app/health-ish"),
    wrk.format("GET", "/app/users/4"),
    wrk.format("GET", "/app/users/5"),
    wrk.format("GET", "/no-such-route"),
  }
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
EOF
cp "$TMP/mix.lua" "$TMP/mix-close.lua"
echo "function delay() return $KA_DELAY_MS end" >>"$TMP/mix.lua"
echo "function delay() return $CLOSE_DELAY_MS end" >>"$TMP/mix-close.lua"

# ---------------------------------------------------------------- idle baseline
# A few seconds idle first: health checks have run, their connections are
# in the pool. The baseline is the largest of three samples for fds and
# RSS (what idle looks like), the last for the gauges.
sleep 3
BASE_T0=$(now)
print_header
B_FDS=0
for k in 1 2 3; do
    t=$(now)
    sample idle "$(awk -v a="$t" -v b="$BASE_T0" 'BEGIN { print a - b - 3 }')"
    print_row idle "$(awk -v a="$t" -v b="$BASE_T0" 'BEGIN { print a - b - 3 }')"
    (( S_FDS > B_FDS )) && B_FDS=$S_FDS
    [[ $k == 3 ]] || sleep 1
done
B_OPEN=$S_OPEN B_RSS=$S_RSS B_THR=$S_THR B_US=$S_US
metrics >"$TMP/metrics-start.txt"

# ---------------------------------------------------------------- load
T0=$(now)
DEADLINE=$(awk -v t="$T0" -v d="$SOAK_SECONDS" 'BEGIN { printf "%.3f", t + d }')
declare -A GEN_PID GEN_OUT
start_gen() {  # start_gen NAME CMD...: runs CMD in the background, output to a file
    local name=$1; shift
    GEN_OUT[$name]=$TMP/load-$name.txt
    "$@" >"${GEN_OUT[$name]}" 2>&1 &
    GEN_PID[$name]=$!
    PIDS+=("$!")
}
BOUND=$((SOAK_SECONDS + 30))  # hard stop for each generator
start_gen keepalive timeout "$BOUND" wrk -t1 -c"$KA_CONNS" -d"${SOAK_SECONDS}s" --timeout 5s \
    -s "$TMP/mix.lua" "http://127.0.0.1:$GW"
start_gen newconn timeout "$BOUND" wrk -t1 -c"$CLOSE_CONNS" -d"${SOAK_SECONDS}s" --timeout 5s \
    -H 'Connection: close' -s "$TMP/mix-close.lua" "http://127.0.0.1:$GW"
start_gen h2 timeout "$BOUND" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" --rps="$H2_RPS" -D "$SOAK_SECONDS" \
    "http://127.0.0.1:$GW/app/h2/a" "http://127.0.0.1:$GW/app/h2/b" "http://127.0.0.1:$GW/app/h2/c" \
    "http://127.0.0.1:$GW/app/h2/d" "http://127.0.0.1:$GW/fault/flaky"
start_gen invalid timeout "$BOUND" "$PY" "$TMP/soak_helper.py" invalid "$GW" "$BAD_RPS" "$DEADLINE"
start_gen faults timeout "$BOUND" "$PY" "$TMP/soak_helper.py" faults "$GW" "$FAULT_RPS" "$DEADLINE"
GENS=(keepalive newconn h2 invalid faults)

REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
DIRTY=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
(( DIRTY == 0 )) || REV="$REV + $DIRTY uncommitted file(s) in src/ or Cargo.*"
[[ -n ${PORTCULLIS_BIN:-} ]] && REV="$PORTCULLIS_BIN"
echo
echo "Portcullis $("$BIN" --version 2>/dev/null | awk '{ print $2 }') ($REV; binary built $(date -u -r "$SRC_BIN" '+%F %H:%M UTC'))" \
    "(workers: $WORKERS) on 127.0.0.1:$GW, admin :$ADMIN;" \
    "soak ${SOAK_SECONDS}s, a sample every ${SOAK_INTERVAL}s, trend after ${SOAK_WARMUP}s"
echo "load: wrk keep-alive -c$KA_CONNS (${KA_DELAY_MS} ms apart), wrk Connection: close -c$CLOSE_CONNS (${CLOSE_DELAY_MS} ms apart)," \
    "h2load -c$H2_CLIENTS -m$H2_STREAMS --rps $H2_RPS, invalid $BAD_RPS/s, upstream faults $FAULT_RPS/s"
print_header
CRASHED=0
n_samples=$((SOAK_SECONDS / SOAK_INTERVAL))
for k in $(seq 0 "$n_samples"); do
    target=$(awk -v t="$T0" -v k="$k" -v i="$SOAK_INTERVAL" 'BEGIN { printf "%.3f", t + k * i }')
    wait_s=$(awk -v a="$target" -v b="$(now)" 'BEGIN { d = a - b; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$wait_s"
    if ! kill -0 "$GW_PID" 2>/dev/null; then CRASHED=1; note "the gateway is gone at t=$((k * SOAK_INTERVAL))s"; break; fi
    t=$(awk -v a="$(now)" -v b="$T0" 'BEGIN { print a - b }')
    sample load "$t"
    print_row load "$t"
done

# ---------------------------------------------------------------- stop the load
# The generators stop by themselves at SOAK_SECONDS; give them a little
# longer (the trickles join their threads), then stop whatever is left.
declare -A GEN_RC
for _ in $(seq 60); do
    left=0
    for g in "${GENS[@]}"; do kill -0 "${GEN_PID[$g]}" 2>/dev/null && left=1; done
    (( left )) || break
    sleep 0.5
done
for g in "${GENS[@]}"; do
    if kill -0 "${GEN_PID[$g]}" 2>/dev/null; then
        kill -TERM "${GEN_PID[$g]}" 2>/dev/null || true
        GEN_RC[$g]="stopped (still running 30 s after the end)"
    fi
    rc=0
    wait "${GEN_PID[$g]}" 2>/dev/null || rc=$?
    [[ -n ${GEN_RC[$g]:-} ]] || GEN_RC[$g]=$rc
done
T_END=$(now)

# ---------------------------------------------------------------- settle
# At least 5 s, then until the gauge, the client sockets, in-flight and the
# fds are back to the idle baseline (or SOAK_SETTLE).
# CONNS_BACK_AT: when the client side was (gauge, client sockets, in
# flight); FDS_BACK_AT: when the fds were too (the upstream pool empties).
CONNS_BACK_AT="" FDS_BACK_AT=""
if (( ! CRASHED )); then
    for s in $(seq 1 "$SOAK_SETTLE"); do
        sleep "$(awk -v a="$T_END" -v s="$s" -v b="$(now)" 'BEGIN { d = a + s - b; printf "%.3f", (d > 0 ? d : 0) }')"
        kill -0 "$GW_PID" 2>/dev/null || { CRASHED=1; break; }
        t=$(awk -v a="$(now)" -v b="$T0" 'BEGIN { print a - b }')
        sample settle "$t"
        if (( s % 5 == 0 )); then print_row settle "$t"; fi
        (( s >= 5 )) || continue
        if [[ -z $CONNS_BACK_AT ]] && (( S_OPEN <= B_OPEN && S_INFL == 0 && S_CS == 0 )); then CONNS_BACK_AT=$s; fi
        if [[ -z $FDS_BACK_AT ]] && (( S_FDS <= B_FDS + FD_SLACK )); then FDS_BACK_AT=$s; fi
        if [[ -n $CONNS_BACK_AT && -n $FDS_BACK_AT ]] && (( S_OPEN <= B_OPEN && S_INFL == 0 && S_CS == 0 && S_FDS <= B_FDS + FD_SLACK )); then
            (( s % 5 == 0 )) || print_row settle "$t"
            break
        fi
    done
fi
metrics >"$TMP/metrics-end.txt"
E_OPEN=${S_OPEN:-?} E_INFL=${S_INFL:-?} E_CS=${S_CS:-?} E_FDS=${S_FDS:-?} E_US=${S_US:-?} E_THR=${S_THR:-?}
E_STATUS_INFL="?" LIVE="no"
if (( ! CRASHED )); then
    E_STATUS_INFL=$(status_in_flight)
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$ADMIN/health/live" || true) == 200 ]] && LIVE=yes
fi

# ---------------------------------------------------------------- report
REPORT=$TMP/report.md
{
echo
echo "## Load"
echo
echo "| generator | what it saw |"
echo "| --- | --- |"
for g in keepalive newconn; do
    f=${GEN_OUT[$g]}
    reqs=$(awk '/requests in/ { print $1 }' "$f"); rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$f")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$f")
    sock=$(awk '/Socket errors:/ { sub(/^ *Socket errors: */, ""); print }' "$f")
    printf '| wrk %s | %s requests, %s req/s, %s non-2xx (10%% are the 404 path), socket errors: %s; exit %s |\n' \
        "$([[ $g == keepalive ]] && echo "keep-alive -c$KA_CONNS" || echo "Connection: close -c$CLOSE_CONNS")" \
        "${reqs:-?}" "${rps:-?}" "${non2xx:-0}" "${sock:-none}" "${GEN_RC[$g]}"
done
f=${GEN_OUT[h2]}
printf '| h2load -c%s -m%s --rps %s | %s; %s; exit %s |\n' "$H2_CLIENTS" "$H2_STREAMS" "$H2_RPS" \
    "$(awk '/^requests:/ { sub(/^requests: */, ""); print }' "$f")" \
    "$(awk '/^status codes:/ { sub(/^status codes: */, ""); print }' "$f")" "${GEN_RC[h2]}"
echo
for g in invalid faults; do
    if [[ $g == invalid ]]; then
        echo "| invalid: kind | sent | outcomes (status/what the gateway did with the connection within 1 s after answering; or goaway, closed@Ns, open@stop, sent) |"
    else
        echo "| faults: request | sent | outcomes (status seen by the client; +abandoned: the client left mid-body) |"
    fi
    echo "| --- | ---: | --- |"
    awk -F'\t' 'NF == 3 { printf "| %s | %s | %s |\n", $1, $2, $3 }' "${GEN_OUT[$g]}"
    echo "exit ${GEN_RC[$g]}"
    echo
done
echo "Gateway counters over the run (from /metrics):"
echo
awk '
    FNR == 1 { f++ }
    /^portcullis_requests_total\{/ { s = $0; sub(/.*status="/, "", s); sub(/".*/, "", s); st[f, s] += $NF; ss[s] = 1 }
    /^portcullis_rejections_total\{/ { s = $0; sub(/.*reason="/, "", s); sub(/".*/, "", s); rj[f, s] += $NF; rr[s] = 1 }
    /^portcullis_upstream_requests_total\{/ { s = $0; sub(/.*upstream="/, "", s); u = s; sub(/".*/, "", u)
        o = $0; sub(/.*outcome="/, "", o); sub(/".*/, "", o); up[f, u "/" o] += $NF; uu[u "/" o] = 1 }
    /^portcullis_upstream_retries_total\{/ { s = $0; sub(/.*result="/, "", s); sub(/".*/, "", s); rt[f, s] += $NF; rtt[s] = 1 }
    /^portcullis_circuit_transitions_total\{/ { s = $0; sub(/.*to="/, "", s); sub(/".*/, "", s); ct[f, s] += $NF; cc[s] = 1 }
    /^portcullis_connections_total\{/ { cn[f] += $NF }
    /^portcullis_connections_rejected_total\{/ { cr[f] += $NF }
    function line(title, arr, keys,   k, out) {
        out = ""
        for (k in keys) if (arr[2, k] - arr[1, k] > 0) out = out sprintf(" %s:%d", k, arr[2, k] - arr[1, k])
        printf "- %s:%s\n", title, (out == "" ? " none" : out)
    }
    END {
        line("answers by status", st, ss)
        line("rejections by reason", rj, rr)
        line("upstream tries (upstream/outcome)", up, uu)
        line("retries", rt, rtt)
        line("circuit transitions", ct, cc)
        printf "- client connections: %d accepted, %d refused at max_connections\n", cn[2] - cn[1], cr[2] - cr[1]
    }' "$TMP/metrics-start.txt" "$TMP/metrics-end.txt"
} >"$REPORT"
cat "$REPORT"

# Condensed table: the idle baseline, one load row every STEP seconds, the
# last load row, the settle rows at 15 s steps and the final one.
STEP=$(( SOAK_SECONDS / 10 / SOAK_INTERVAL * SOAK_INTERVAL ))
(( STEP >= SOAK_INTERVAL )) || STEP=$SOAK_INTERVAL
{
echo
echo "## Samples (condensed: one load row every ${STEP} s; all of them in the CSV)"
echo
echo "| phase | t s | RSS KiB | fds | threads | open conns | in flight | client sockets | upstream sockets | req/s | CPU % |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -F, -v step="$STEP" -v soak="$SOAK_SECONDS" -v te="$(awk -v a="$T_END" -v b="$T0" 'BEGIN { printf "%.0f", a - b }')" '
    NR == 1 { next }
    { row = sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", $1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $12) }
    $1 == "idle" { last_idle = row; next }
    $1 == "load" { if (last_idle != "") { print last_idle; last_idle = "" }
                   if ($2 % step == 0 || $2 >= soak) print row; next }
    $1 == "settle" { s = $2 - te; if (s % 15 == 0) { print row; printed = NR } last = row; lastnr = NR }
    END { if (lastnr && printed != lastnr) print last }' "$CSV"
} >>"$REPORT"
echo
sed -n '/^## Samples/,$p' "$REPORT"

# ---------------------------------------------------------------- verdict
FAIL=0
checks=()
check() {  # check OK(0/1) TEXT
    if [[ $1 == 1 ]]; then checks+=("PASS  $2"); else checks+=("FAIL  $2"); FAIL=1; fi
}
# Trend over the load samples after the warm-up: thirds and slope.
read -r TN R1 R3 RSLOPE F1 F3 TH1 TH3 TMAX WIN <<<"$(awk -F, -v w="$SOAK_WARMUP" '
    $1 == "load" && $2 >= w { n++; t[n] = $2; r[n] = $3; f[n] = $4; th[n] = $5 }
    END {
        if (n < 6) { print n, 0, 0, 0, 0, 0, 0, 0, 0, 0; exit }
        k = int(n / 3)
        for (i = 1; i <= k; i++) { r1 += r[i]; f1 += f[i]; h1 += th[i] }
        for (i = n - k + 1; i <= n; i++) { r3 += r[i]; f3 += f[i]; h3 += th[i] }
        for (i = 1; i <= n; i++) { x = t[i] / 60; sx += x; sy += r[i]; sxx += x * x; sxy += x * r[i]; if (th[i] > tm) tm = th[i] }
        d = n * sxx - sx * sx
        slope = d > 0 ? (n * sxy - sx * sy) / d : 0
        printf "%d %.0f %.0f %.1f %.1f %.1f %.1f %.1f %d %.2f\n", n, r1 / k, r3 / k, slope, f1 / k, f3 / k, h1 / k, h3 / k, tm, (t[n] - t[1]) / 60
    }' "$CSV")"
ALLOW=$(awk -v a="$RSS_MAX_GROWTH_KIB" -v p="$RSS_MAX_GROWTH_PCT" -v r="$R1" 'BEGIN { v = r * p / 100; printf "%.0f", (v > a ? v : a) }')
GROWTH=$(( R3 - R1 ))
FITTED=$(awk -v s="$RSLOPE" -v w="$WIN" 'BEGIN { printf "%.0f", s * w }')

check "$(( ! CRASHED ))" "alive: the gateway ran to the end$( (( CRASHED )) && echo " (it EXITED; log: $TMP/gateway.log)")"
check "$([[ $LIVE == yes ]] && echo 1 || echo 0)" "alive: /health/live answers 200 after the load ($LIVE)"
panics=$(grep -c 'panicked' "$TMP/gateway.log" || true)
check "$(( panics == 0 ))" "no panic in the gateway log ($panics lines with 'panicked')"
if [[ $E_OPEN =~ ^[0-9]+$ && $E_INFL =~ ^[0-9]+$ && $E_CS =~ ^[0-9]+$ && $E_FDS =~ ^[0-9]+$ ]]; then
    check "$(( E_OPEN <= B_OPEN ))" "connections: portcullis_open_connections $E_OPEN after the load, idle baseline $B_OPEN (threshold: <= baseline)$([[ -n $CONNS_BACK_AT ]] && echo "; client side back ${CONNS_BACK_AT} s after the load (checked from 5 s)")"
    check "$(( E_CS == 0 ))" "connections: $E_CS established client sockets after the load (threshold: 0)"
    check "$(( E_INFL == 0 ))" "in flight: portcullis_in_flight_requests $E_INFL after the load (threshold: 0)"
    check "$([[ $E_STATUS_INFL == 0 ]] && echo 1 || echo 0)" "in flight: sum of the endpoints' in_flight in /status $E_STATUS_INFL (threshold: 0)"
    check "$(( E_FDS <= B_FDS + FD_SLACK ))" "fds: $E_FDS after the load, idle baseline $B_FDS (threshold: <= baseline + $FD_SLACK)$([[ -n $FDS_BACK_AT ]] && echo "; back ${FDS_BACK_AT} s after the load" || echo "; NOT back after ${SOAK_SETTLE} s")"
else
    check 0 "connections and fds: no sample after the load"
fi
if (( TN >= 6 )); then
    check "$(( GROWTH <= ALLOW ))" "RSS thirds: mean $R1 KiB -> $R3 KiB = $( ((GROWTH >= 0)) && echo +)$GROWTH KiB over $TN samples after ${SOAK_WARMUP}s (threshold: <= $ALLOW KiB = max(${RSS_MAX_GROWTH_KIB} KiB, ${RSS_MAX_GROWTH_PCT}%))"
    check "$(( FITTED <= ALLOW ))" "RSS slope: $RSLOPE KiB/min, $FITTED KiB over the ${WIN} min window (threshold: <= $ALLOW KiB)"
    check "$(awk -v a="$F1" -v b="$F3" -v m="$FD_MAX_GROWTH" 'BEGIN { print (b - a <= m) ? 1 : 0 }')" "fd thirds: mean $F1 -> $F3 (threshold: at most +$FD_MAX_GROWTH)"
else
    check 0 "trend: only $TN load samples after the warm-up (6 needed)"
fi
gens_ok=1 gens_txt=""
for g in "${GENS[@]}"; do
    [[ ${GEN_RC[$g]} == 0 ]] || gens_ok=0
    gens_txt+="$g ${GEN_RC[$g]}, "
done
check "$gens_ok" "load: every generator ran its time and exited 0 (${gens_txt%, })"
stuck=$( (grep -ho 'NOT-CLOSED>[0-9]*s:[0-9]*' "${GEN_OUT[invalid]}" || true) | awk -F: '{ s += $2 } END { print s + 0 }')
check "$(( stuck == 0 ))" "slow/silent clients: $stuck connections the gateway did not close in time (stalled heads: 15 s, silent: 45 s)"

{
echo
echo "## Verdict"
echo
echo "Idle baseline: RSS $B_RSS KiB, $B_FDS fds, $B_THR threads, $B_OPEN open connections, $B_US upstream sockets."
echo "After the load: $E_FDS fds, $E_THR threads, $E_OPEN open connections, $E_INFL in flight, $E_CS client and $E_US upstream sockets."
echo "Threads: mean $TH1 (first third) -> $TH3 (last third), at most $TMAX during the load."
echo "Gateway log: $(grep -c '"level":"WARN"' "$TMP/gateway.log" || true) WARN, $(grep -c '"level":"ERROR"' "$TMP/gateway.log" || true) ERROR lines."
echo
for c in "${checks[@]}"; do echo "- $c"; done
echo
if (( FAIL )); then echo "FAIL"; else echo "PASS"; fi
} >>"$REPORT"
echo
sed -n '/^## Verdict/,$p' "$REPORT"

if [[ -n ${SOAK_OUT:-} ]]; then
    mkdir -p "$SOAK_OUT"
    cp "$CSV" "$REPORT" "$TMP/gateway.log" "$CONFIG" "$SOAK_OUT/"
    for g in "${GENS[@]}"; do cp "${GEN_OUT[$g]}" "$SOAK_OUT/"; done
    echo
    echo "CSV, report, gateway config and logs copied to $SOAK_OUT"
fi
if (( FAIL )); then
    KEEP=1
    exit 1
fi
if [[ $KEEP == 1 ]]; then echo "CSV: $CSV"; fi
exit 0
}
