#!/usr/bin/env bash
# End-to-end load test: Portcullis against NGINX and HAProxy on one machine,
# and against the hyper baseline (benches/baseline_proxy.rs: a minimal hyper
# proxy from the same crates, the limit of our stack).
#
# Each proxy runs with one worker pinned to one core (PROXY_CORE, default 0);
# `wrk -t1 -c64` and the upstream share the other core (LOAD_CORE, default 1),
# the same for every proxy (the handshake and resume scenarios: the
# handshake_load client instead of wrk, see HS_CLIENT). Runs are interleaved
# (B P N H B P N H ...) and each figure is the median over the rounds. The
# headline figure is the proxy's CPU time per request (user and kernel, from
# /proc/PID/stat), because on 2 cores req/s may be capped by wrk + upstream
# rather than by the proxy.
# See docs/benchmarks.md for how to read the output.
#
# Scenarios (SCENARIOS, run one after the other, each with its own tables):
#   http       plain HTTP/1.1 keep-alive: wrk -c$CONNS to the proxy, which
#              forwards over keep-alive HTTP/1.1 to the upstream.
#   https      the same over TLS: wrk -c$CONNS to https://, each proxy
#              terminating TLS, plain HTTP to the same upstream.
#   handshake  a full TLS handshake per request: $CONNS_HANDSHAKE closed
#              loops of connect, handshake, one GET with `Connection: close`,
#              read to EOF; req/s = handshakes/s, and the CPU figure is per
#              handshake (handshake + one proxied request). The client is
#              HS_CLIENT (below): by default benches/handshake_load.rs, a
#              rustls client with resumption disabled. wrk + OpenSSL 3.0
#              costs ~0.9 ms of CPU per full handshake, so on 2 cores it
#              cannot drive more than ~1,000/s and the proxy core sits half
#              idle: it measures wrk, not the proxy. With HS_CLIENT=wrk: wrk
#              keeps its session across reconnects (SSL_clear) and so would
#              resume it: a 10-line LD_PRELOAD shim, built with cc into the
#              temp dir, drops that session before each SSL_connect (no cc:
#              skipped).
#   resume     (not in the default) the same, but the client resumes its
#              session: TLS 1.3 PSK with a fresh X25519 exchange, no
#              certificate and no signature (handshake_load --resume, or wrk).
#   jwt        plain HTTP keep-alive to a route with `auth: { jwt, scopes }`,
#              Portcullis only (the peers have no JWT validation): wrk's Lua
#              script cycles through 100 ES256 tokens (100 clients), so this
#              is the cached-verification path. Issue 4's target: at least
#              0.9x Portcullis's own `http` req/s in the same run.
#   ratelimit  (not in the default) plain HTTP keep-alive with a fixed
#              `x-api-key` header to a route whose `rate_limit` policy
#              (key header:x-api-key, rate 1e8/s, burst 1e8) never refuses,
#              Portcullis only. Its rounds alternate with the same requests
#              to the policy-free route ("Portcullis, no policy"), so the
#              ratio table is the policy's cost. Issue 5's target, judged
#              on those interleaved rounds: at least 0.97x the policy-free
#              route's req/s. The ratio to the `http` scenario's Portcullis
#              is printed as well (minutes apart, and without the header:
#              noisier).
#   flood      (not in the default) a route limited to 100/s, burst 100 per
#              `x-api-key`, on Portcullis, NGINX and HAProxy (not the hyper
#              baseline): wrk's Lua script sends one hot key on FLOOD_PCT%
#              (90) of the requests (refused: 429) and 1000 other keys in
#              turn on the rest (each far under its limit: proxied).
#              NGINX: `limit_req_zone $http_x_api_key rate=100r/s` and, on
#              location /flood, `limit_req burst=100 nodelay`, status 429,
#              refusals logged at info (under error_log warn: not written,
#              as Portcullis writes none). HAProxy: a stick table keyed on
#              the header storing http_req_rate(1s), tracked (track-sc0)
#              and denied with 429 when above 100, for paths beginning with
#              /flood only; not a token bucket: the refused requests count
#              in the rate too, so once the hot key is over 100/s nearly
#              all of its requests are refused (the others let ~100/s of it
#              through). Both peers keep the connection open after a 429.
#              Portcullis's 200s and 429s come from the gateway's /metrics
#              (read before and after each measured run); the peers' from
#              wrk: 429s = its non-2xx count, 200s = requests - non-2xx
#              (wrk cannot tell statuses apart: non-2xx beyond what the hot
#              key's share can account for are counted as other statuses,
#              and as errors). Before the runs, a 1 s wrk with one key
#              checks that each proxy answers both 200 and 429. The CPU of
#              a refused request is solved from the run's total:
#              cpu = n_200 x c_200 + n_429 x c_429, with c_200 the proxied
#              cost of the same proxy measured in the same run: each
#              proxy's `http` one (list http before flood), so the three
#              ratios are priced alike; Portcullis falls back to its
#              `ratelimit` one when http did not run (the `ratelimit`
#              rounds may run at another speed than `http`'s: on
#              2026-11-24 41.6k against 52.9k req/s, with or without the
#              policy). Each proxy's refused/proxied ratio is its own.
#              FLOOD_PCT=100 measures
#              refusals (almost) alone.
#   canary     (not in the default) plain HTTP keep-alive to a route that
#              splits 95/5 between two upstreams (both the same backend)
#              with `sticky: header:x-user`, Portcullis only: wrk's Lua
#              script sends 1000 x-user keys in turn. Its rounds alternate
#              with the same requests to the single-upstream route
#              ("Portcullis, no split"), so the ratio table is the sticky
#              split's cost. Issue 6's target: at least 0.97x.
#   redis      (not in the default) shared rate limits (issue 9): one
#              Portcullis process with three routes, each with one policy
#              that never refuses (key header:x-api-key, rate 1e8/s, burst
#              1e8; the fixed `x-api-key` of `ratelimit`): /rl-local on the
#              in-process store, /rl-exact on Redis `sync: exact` (one
#              EVALSHA per request) and /rl-batched on Redis `sync: batched`
#              with `lease: 100`. Lease 100 and not the default (burst/10
#              clamped to 1000, so 1000 here): 100 is a size a real fleet
#              would pick (its overshoot bound is instances x lease, 10
#              instances x 100 = 1000 tokens over a window), and at this
#              rate it still means hundreds of script calls a second, so
#              the run measures the lease refills rather than a mode that
#              almost never talks to Redis. Rounds alternate local / exact
#              / batched, so the ratios come from one run. A private
#              redis-server (no persistence) runs on a free port on
#              LOAD_CORE with wrk and the upstream: Redis is part of the
#              load side, the proxy keeps its core. Per route: req/s, p50,
#              p99, the gateway's CPU per request, Redis commands per
#              request from INFO commandstats (the script's own INFO calls
#              left out): those the gateway sends (script calls, PING and
#              connection set-up), and all of them, with the calls a Lua
#              script makes inside Redis (commandstats counts those too:
#              TIME, GET, SET... per EVALSHA), the gateway's store calls per
#              request
#              (portcullis_rate_limit_store_calls_total) and Redis's CPU
#              per request (INFO cpu). The runs start when every Redis
#              policy is `up` in the admin /status; checks that fell back
#              to the local store during a run (portcullis_rate_limit_
#              store_errors_total) are printed, and more than 5% of the
#              run's requests aborts the script. store_timeout is
#              REDIS_STORE_TIMEOUT (default 5ms, the product's default):
#              the gateway times a check on its own event loop, so at full
#              load its queueing counts too and a few answers arrive late
#              (each such check falls back alone; 10 in a row mark the
#              store down). Issue 9's target:
#              batched at least 0.9x the local store's req/s. Needs
#              redis-server and redis-cli (apt-get install redis-server, or
#              --install); without them the scenario is skipped.
#   The hyper baseline has no TLS: it runs in `http` only. The TLS scenarios
#   use one self-signed ECDSA P-256 certificate (SAN localhost, 127.0.0.1),
#   made with openssl in the temp dir, for every proxy: TLS 1.2 and 1.3,
#   ALPN h2 + http/1.1 offered, session cache and tickets on. wrk goes to
#   https://localhost (SNI localhost), or to https://127.0.0.1 where
#   localhost does not resolve to 127.0.0.1 first.
#
# Usage:
#   benches/load.sh              3 rounds of 10 s per proxy and scenario (after a 2 s warm-up each)
#   benches/load.sh --quick      1 round of 3 s (smoke test)
#   benches/load.sh --install    apt-get install wrk, nginx-light, haproxy, openssl and redis-server first
#   benches/load.sh --no-build   use target/release/portcullis and the newest
#                                target/release/deps/baseline_proxy-* and
#                                handshake_load-* as they are
#   SCENARIOS=handshake benches/load.sh --quick   one scenario only
#   SCENARIOS="http ratelimit flood" benches/load.sh --no-build   rate limits (issue 5)
#   SCENARIOS=canary PROXIES=portcullis benches/load.sh --no-build   sticky canary split (issue 6)
#   SCENARIOS="http redis" PROXIES=portcullis benches/load.sh --no-build   rate limits on Redis (issue 9)
#
# Environment (all optional):
#   DURATION=10s   measured time per run (wrk -d syntax: 5s, 1m)
#   WARMUP=2s      unmeasured wrk run before each measured run
#   ROUNDS=3       interleaved rounds
#   CONNS=64       wrk connections (http, https)
#   CONNS_HANDSHAKE=16   wrk connections in the handshake scenario
#   SCENARIOS="http https handshake jwt"   which scenarios, in this order
#                  (also: resume, ratelimit, flood, canary, redis)
#   FLOOD_PCT=90   flood: percent of requests with the hot (refused) key
#   REDIS_STORE_TIMEOUT=5ms   redis: store_timeout of the two Redis policies
#   PROXIES="baseline portcullis nginx haproxy"   which proxies, in round order
#   UPSTREAM=nginx|backend   the upstream: NGINX `return 200` with a fixed
#                  285-byte JSON body (default when nginx is installed), or
#                  `portcullis backend` (JSON echo; its body grows with the
#                  headers the proxy adds, so sizes differ between proxies)
#   PROXY_CORE=0 LOAD_CORE=1   the cores
#   BASE_PORT=18600  first port tried; ports in use are skipped
#   PORTCULLIS_BIN=path  binary to test (implies --no-build)
#   BASELINE_BIN=path    baseline_proxy executable to use (not built then)
#   HS_CLIENT=rustls|wrk  the client of the handshake and resume scenarios:
#                  rustls (default) is benches/handshake_load.rs, built with
#                  `cargo bench --no-run --bench handshake_load` (X25519 key
#                  share, TLS_AES_256_GCM_SHA384 first, as wrk's OpenSSL 3.0;
#                  ALPN http/1.1; full handshakes unless resume); it prints
#                  its own CPU per handshake. Without it (--no-build and none
#                  built) the script falls back to wrk with a message, or
#                  stops when HS_CLIENT=rustls was given.
#                  wrk: wrk + OpenSSL, ~1,000 full handshakes/s at most here.
#   HS_CLIENT_BIN=path   handshake_load executable to use (not built then)
#   HS_VERIFY=0    handshake_load checks neither the certificate nor the
#                  handshake signature (--no-verify): the proxy does the same
#                  work either way, and the client saves an ECDSA P-256
#                  verification per full handshake (OpenSSL 3.0 `speed` here:
#                  82 µs to verify, 30 to sign). A rustls client costs about
#                  what a rustls server does per handshake, so that is the
#                  headroom that leaves Portcullis's core the limit on 2 cores.
#                  1: it pins the bench certificate and checks the signature
#                  (as wrk checks the signature)
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
CONNS_HANDSHAKE=${CONNS_HANDSHAKE:-16}
SCENARIOS=${SCENARIOS:-http https handshake jwt}
FLOOD_PCT=${FLOOD_PCT:-90}
REDIS_STORE_TIMEOUT=${REDIS_STORE_TIMEOUT:-5ms}
PROXIES=${PROXIES:-baseline portcullis nginx haproxy}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BASE_PORT=${BASE_PORT:-18600}
# HS_CLIENT_SET: given by the user (then a missing handshake_load is fatal,
# not a fallback to wrk).
HS_CLIENT_SET=${HS_CLIENT:+1}
HS_CLIENT=${HS_CLIENT:-rustls}
HS_VERIFY=${HS_VERIFY:-0}
[[ -n ${PORTCULLIS_BIN:-} ]] && BUILD=0

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer, got '$CONNS'"
[[ $CONNS_HANDSHAKE =~ ^[1-9][0-9]*$ ]] || die "CONNS_HANDSHAKE must be a positive integer, got '$CONNS_HANDSHAKE'"
if [[ ! $FLOOD_PCT =~ ^[0-9]+$ ]] || (( FLOOD_PCT > 100 )); then die "FLOOD_PCT must be an integer 0-100, got '$FLOOD_PCT'"; fi
[[ $REDIS_STORE_TIMEOUT =~ ^[0-9]+(ms|s)$ ]] || die "REDIS_STORE_TIMEOUT must look like 5ms or 1s, got '$REDIS_STORE_TIMEOUT'"
[[ $HS_CLIENT == rustls || $HS_CLIENT == wrk ]] || die "HS_CLIENT must be rustls or wrk, got '$HS_CLIENT'"
[[ $HS_VERIFY == 0 || $HS_VERIFY == 1 ]] || die "HS_VERIFY must be 0 or 1, got '$HS_VERIFY'"
scenarios=()
for sc in $SCENARIOS; do
    case "$sc" in
        http|https|handshake|resume|jwt|ratelimit|flood|canary|redis) [[ " ${scenarios[*]} " == *" $sc "* ]] || scenarios+=("$sc") ;;
        *) die "unknown scenario '$sc' in SCENARIOS (http, https, handshake, resume, jwt, ratelimit, flood, canary, redis)" ;;
    esac
done
(( ${#scenarios[@]} > 0 )) || die "SCENARIOS is empty (http, https, handshake, resume, jwt, ratelimit, flood, canary, redis)"
# TLS=1 when a scenario needs the proxies' TLS listeners.
TLS=0 HAS_HTTP=0
JWT=0 RL=0 FLOOD=0 CANARY=0 REDIS=0
# HS=1 when handshake or resume runs (their client is HS_CLIENT); ONLY_HS=1
# when nothing else does (wrk is then needed only with HS_CLIENT=wrk).
HS=0 ONLY_HS=1
for sc in "${scenarios[@]}"; do
    case "$sc" in http) HAS_HTTP=1 ;; jwt) JWT=1 ;; ratelimit) RL=1 ;; flood) RL=1 FLOOD=1 ;; canary) CANARY=1 ;; redis) REDIS=1 ;; *) TLS=1 ;; esac
    case "$sc" in handshake|resume) HS=1 ;; *) ONLY_HS=0 ;; esac
done
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
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx-light haproxy openssl redis-server \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk nginx haproxy openssl redis-server
fi
if (( ! ONLY_HS )) || [[ $HS_CLIENT == wrk ]]; then
    command -v wrk >/dev/null || die "wrk is required: apt-get install wrk (or run with --install)"
fi
if (( TLS )); then
    command -v openssl >/dev/null || die "the TLS scenarios need openssl (apt-get install openssl), or set SCENARIOS=http"
fi
command -v taskset >/dev/null || die "taskset is required (util-linux)"
# redis: a private redis-server, and redis-cli (redis-tools, which the
# Debian redis-server package pulls in) to read its INFO.
if (( REDIS )); then
    missing=""
    for t in redis-server redis-cli; do command -v "$t" >/dev/null || missing+=" $t"; done
    if [[ -n $missing ]]; then
        note "skipping the redis scenario: not installed:$missing (apt-get install redis-server, or --install)"
        REDIS=0
        keep=()
        for sc in "${scenarios[@]}"; do [[ $sc == redis ]] || keep+=("$sc"); done
        scenarios=("${keep[@]}")
        (( ${#scenarios[@]} > 0 )) || die "no scenario left to run"
    fi
fi
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
# The hyper baseline speaks plain HTTP only: without the http scenario it
# has nothing to run.
if (( ! HAS_HTTP )) && [[ " ${selected[*]} " == *" baseline "* ]]; then
    note "skipping the hyper baseline: it has no TLS, and SCENARIOS has no http"
    keep=()
    for p in "${selected[@]}"; do [[ $p == baseline ]] || keep+=("$p"); done
    selected=("${keep[@]}")
    (( ${#selected[@]} > 0 )) || die "no proxy to test"
fi

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

# The handshake client (HS_CLIENT=rustls): a bench target too, built and
# found like the baseline. Without one the handshake and resume scenarios
# fall back to wrk, unless HS_CLIENT=rustls was asked for.
HS_SRC=""
if (( HS )) && [[ $HS_CLIENT == rustls ]]; then
    if [[ -n ${HS_CLIENT_BIN:-} ]]; then
        HS_SRC=$HS_CLIENT_BIN
        [[ -x $HS_SRC ]] || die "HS_CLIENT_BIN=$HS_SRC is not an executable"
    elif [[ $BUILD == 1 ]]; then
        note "cargo bench --no-run --bench handshake_load"
        hs_json=$(cd "$REPO" && cargo bench --no-run --quiet --bench handshake_load --message-format=json-render-diagnostics) \
            || die "cargo bench --no-run --bench handshake_load failed"
        HS_SRC=$(grep '"reason":"compiler-artifact"' <<<"$hs_json" \
            | sed -n 's|.*"executable":"\([^"]*/handshake_load-[0-9a-f]*\)".*|\1|p' | tail -1 || true)
        [[ -n $HS_SRC && -x $HS_SRC ]] || die "cargo bench --no-run did not report a handshake_load executable"
    else
        for f in "$REPO"/target/release/deps/handshake_load-*; do
            [[ -f $f && -x $f && ${f##*/} != *.* ]] || continue  # not the .d files
            [[ -z $HS_SRC || $f -nt $HS_SRC ]] && HS_SRC=$f
        done
    fi
    if [[ -z $HS_SRC ]]; then
        [[ -z $HS_CLIENT_SET ]] || die "HS_CLIENT=rustls: no target/release/deps/handshake_load-* (build it with cargo bench --no-run --bench handshake_load, or drop --no-build)"
        note "the handshake and resume scenarios fall back to wrk: no target/release/deps/handshake_load-* (build it with cargo bench --no-run --bench handshake_load, or drop --no-build)"
        HS_CLIENT=wrk
        command -v wrk >/dev/null || die "wrk is required: apt-get install wrk (or run with --install)"
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
HS_BIN=$TMP/bin/handshake_load
[[ -n $HS_SRC ]] && cp "$HS_SRC" "$HS_BIN"

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
(( REDIS )) && take_port REDIS_PORT
if (( TLS )); then
    take_port PC_TLS_PORT
    take_port NG_TLS_PORT
    take_port HA_TLS_PORT
fi

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
# The whole response to GET path (head and body), bounded to 5 s; extra
# arguments are request header lines. Pure bash too: the admin /metrics.
http_get() (
    port=$1 path=$2; shift 2
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 0
    {
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n' "$path"
        for h in "$@"; do printf '%s\r\n' "$h"; done
        printf '\r\n'
    } >&3
    timeout 5 cat <&3 | tr -d '\r'
    exec 3<&-
) 2>/dev/null
# The same over TLS (openssl s_client, bounded to 3 s; no verification).
https_status() {
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" \
        | timeout 3 openssl s_client -quiet -connect "127.0.0.1:$1" -servername localhost 2>/dev/null \
        | head -1 | tr -d '\r' || true
}
# What a default OpenSSL client (as wrk is) negotiates with a TLS port:
# "TLSv1.3 TLS_AES_256_GCM_SHA384, X25519, ECDSA+SHA256, ALPN h2, resumes".
tls_info() {
    local port=$1 brief alpn resumed
    brief=$(timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost -brief </dev/null 2>&1 || true)
    alpn=$(timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost -alpn h2,http/1.1 </dev/null 2>/dev/null \
        | awk -F': *' '/^ALPN protocol/ { print $2; exit }' || true)
    # Resumption: a ticket from one connection, offered on the next.
    rm -f "$TMP/tls/session.pem"
    printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' \
        | timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost -quiet \
            -sess_out "$TMP/tls/session.pem" >/dev/null 2>&1 || true
    resumed=$(timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        -sess_in "$TMP/tls/session.pem" </dev/null 2>/dev/null | awk '/^Reused,/ { print "yes"; exit } /^New,/ { print "no"; exit }' || true)
    awk -F': *' -v alpn="${alpn:-none}" -v res="${resumed:-no}" '
        /^Protocol version/ { v = $2 } /^Ciphersuite/ { c = $2 }
        /^(Server|Peer) Temp Key/ { split($2, k, ","); x = k[1] }
        /^Signature type/ { sig = $2 } /^Hash used/ { h = $2 }
        END { if (v == "") print "no TLS handshake"
              else printf "%s %s, key exchange %s, signature %s+%s; ALPN h2,http/1.1 offered -> %s; resumption %s\n", v, c, x, sig, h, alpn, res }' <<<"$brief"
}
# Waits until GET / on port answers 200; pid is the process that must stay alive.
wait_ready() {  # wait_ready NAME PORT PID LOG [tls]
    local name=$1 port=$2 pid=$3 log=$4 st=""
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { note "$name exited at start; its log:"; tail -20 "$log" >&2; exit 1; }
        if [[ ${5:-} == tls ]]; then st=$(https_status "$port" /); else st=$(http_status "$port" /); fi
        [[ $st == "HTTP/1."?" 200"* ]] && return 0
        sleep 0.1
    done
    note "$name not answering 200 on ${5:+https://}127.0.0.1:$port after 10 s (last status: '${st:-none}'); its log:"
    tail -20 "$log" >&2
    exit 1
}
# All pids of a proxy: the main process and its direct children (NGINX workers).
proxy_pids() {
    local main=$1
    echo "$main"
    # ppid is the 2nd field after "pid (comm) "; comm may hold spaces.
    # Through cat: a process that exits between the glob and the read is
    # skipped, where mawk would stop at its file and miss the pids after it.
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v m="$main" '{ pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ");
        if (f[2] == m) print pid }' || true
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
# Growth of a counter over a run: the sum of the /metrics lines starting
# with PREFIX, in $TMP/metrics-TAG-after.txt minus $TMP/metrics-TAG-before.txt.
series_delta() {  # series_delta PREFIX TAG
    local a b
    a=$(awk -v k="$1" 'index($0, k) == 1 { s += $NF } END { printf "%.0f", s }' "$TMP/metrics-$2-after.txt")
    b=$(awk -v k="$1" 'index($0, k) == 1 { s += $NF } END { printf "%.0f", s }' "$TMP/metrics-$2-before.txt")
    echo $((a - b))
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

# How NGINX forwards, in each location that proxies (plain, TLS, flood):
# keep-alive to the upstream and the headers Portcullis sets. Single quotes:
# the $ names are NGINX's variables, written as they are.
NG_PROXY='proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;'

# The TLS scenarios: one certificate for every proxy, and a TLS listener
# next to the plain one in each proxy's config (one process serves both).
PC_TLS_LISTENER="" NG_TLS_SERVER="" HA_TLS_GLOBAL="" HA_TLS_FRONTEND="" NORESUME_SO=""
# wrk sends the URL's host as SNI. Real clients send a name, and an IP
# address there is not allowed (RFC 6066; rustls logs a warning for each
# one): so https://localhost when it is 127.0.0.1 first, as it is here.
TLS_HOST=127.0.0.1
if (( TLS )); then
    if [[ $(getent ahosts localhost 2>/dev/null | awk 'NR == 1 { print $1 }') == 127.0.0.1 ]]; then
        TLS_HOST=localhost
    else
        note "localhost is not 127.0.0.1 first here: the TLS scenarios use https://127.0.0.1 (an IP address as SNI)"
    fi
    mkdir -p "$TMP/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 \
        || { cat "$TMP/tls/openssl.log" >&2; die "openssl could not make the test certificate"; }
    cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/haproxy.pem"
    # handshake: wrk reuses one SSL object per connection slot, and SSL_clear
    # keeps its session, so each reconnect would resume it. The shim drops
    # the session before a handshake starts: every connection is a full
    # handshake (checked once with NGINX's $ssl_session_reused: all ".").
    if [[ " ${scenarios[*]} " == *" handshake "* && $HS_CLIENT == wrk ]]; then
        cat >"$TMP/tls/noresume.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);
int SSL_in_before(const SSL *s);
int SSL_connect(SSL *s) {
    static int (*real)(SSL *);
    if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    if (SSL_in_before(s)) SSL_set_session(s, 0);
    return real(s);
}
EOF
        if command -v cc >/dev/null \
            && cc -O2 -shared -fPIC -o "$TMP/tls/noresume.so" "$TMP/tls/noresume.c" -ldl >"$TMP/tls/cc.log" 2>&1; then
            NORESUME_SO=$TMP/tls/noresume.so
        else
            note "skipping the handshake scenario: no C compiler (cc) to build the no-resumption shim for wrk (try HS_CLIENT=rustls, or SCENARIOS=resume)"
            keep=()
            for sc in "${scenarios[@]}"; do [[ $sc == handshake ]] || keep+=("$sc"); done
            scenarios=("${keep[@]}")
            (( ${#scenarios[@]} > 0 )) || die "no scenario left to run"
        fi
    fi
    PC_TLS_LISTENER="
  - name: https
    bind: 127.0.0.1:$PC_TLS_PORT
    tls:
      certificates:
        - cert: $TMP/tls/cert.pem
          key: $TMP/tls/key.pem
      min_version: \"1.2\""
    # NGINX 1.22 has no `http2 on;` (1.25.1+): http2 goes on the listen line.
    NG_TLS_SERVER="
  server {
    listen 127.0.0.1:$NG_TLS_PORT ssl http2;
    ssl_certificate $TMP/tls/cert.pem;
    ssl_certificate_key $TMP/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    location / {
      $NG_PROXY
    }
  }"
    HA_TLS_GLOBAL="
    ssl-default-bind-options ssl-min-ver TLSv1.2"
    HA_TLS_FRONTEND="
frontend fe_tls
    bind 127.0.0.1:$HA_TLS_PORT ssl crt $TMP/tls/haproxy.pem alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be"
fi

# The jwt scenario: an ES256 key made with openssl, its JWKS (the kid is
# what `portcullis token` derives: the first 8 bytes of the SHA-256 of the
# public point), 100 tokens, and a wrk script that cycles through them.
PC_JWT_PROVIDER="" PC_JWT_ROUTE=""
if (( JWT )); then
    mkdir -p "$TMP/jwt"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/jwt/key.pem" 2>/dev/null \
        || die "openssl could not make the JWT key"
    openssl pkey -in "$TMP/jwt/key.pem" -pubout -outform DER 2>/dev/null | tail -c 65 >"$TMP/jwt/point"
    b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
    kid=$(sha256sum "$TMP/jwt/point" | cut -c1-16)
    jwk_x=$(head -c 33 "$TMP/jwt/point" | tail -c 32 | b64url)
    jwk_y=$(tail -c 32 "$TMP/jwt/point" | b64url)
    printf '{"keys":[{"kty":"EC","crv":"P-256","x":"%s","y":"%s","kid":"%s","alg":"ES256","use":"sig"}]}\n' \
        "$jwk_x" "$jwk_y" "$kid" >"$TMP/jwt/jwks.json"
    {
        echo 'local tokens = {'
        for i in $(seq 1 100); do
            t=$("$SRC_BIN" token --key "$TMP/jwt/key.pem" --sub "user-$i" --scope "bench" --ttl 2h --iss bench --aud api) \
                || die "portcullis token failed"
            echo "  \"$t\","
        done
        echo '}'
        echo 'local i = 0'
        echo 'request = function()'
        echo '  i = i % #tokens + 1'
        echo '  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[i] })'
        echo 'end'
    } >"$TMP/jwt/tokens.lua"
    PC_JWT_PROVIDER="
jwt:
  - name: bench
    issuer: bench
    audiences: [api]
    algorithms: [ES256]
    jwks_file: $TMP/jwt/jwks.json
    forward_claims: { sub: x-user-id }"
    PC_JWT_ROUTE="
  - name: jwt
    match:
      path_prefix: /jwt
    upstream: up
    auth: { jwt: bench, scopes: [bench] }"
fi

# The ratelimit and flood scenarios: two policies keyed on x-api-key, one
# that never refuses (1e8/s with a burst of 1e8: far above any rate here)
# and one at 100/s with a burst of 100, each on its own route; and the wrk
# script of the flood. Its requests are made once in init() (wrk.format),
# so request() only picks one: FLOOD_PCT of every 100 carry the hot key,
# spread evenly, the others go through 1000 keys in turn, each of which
# then sees a few requests a second, far under its 100/s.
PC_RL_POLICIES="" PC_RL_ITEMS="" PC_RL_ROUTES=""
RL_KEY_HEADER="x-api-key: bench-client"
if (( RL )); then
    mkdir -p "$TMP/rl"
    cat >"$TMP/rl/flood.lua" <<EOF
local pct = $FLOOD_PCT
local hot, cold = nil, {}
local acc, c = 0, 0
function init(args)
  hot = wrk.format(nil, nil, { ["x-api-key"] = "flood-hot" })
  for i = 1, 1000 do
    cold[i] = wrk.format(nil, nil, { ["x-api-key"] = "client-" .. i })
  end
end
function request()
  acc = acc + pct
  if acc >= 100 then
    acc = acc - 100
    return hot
  end
  c = c % #cold + 1
  return cold[c]
end
EOF
    PC_RL_ITEMS="
  - name: bench-open
    key: header:x-api-key
    rate: 100000000/s
    burst: 100000000
  - name: bench-flood
    key: header:x-api-key
    rate: 100/s
    burst: 100"
    PC_RL_ROUTES="
  - name: ratelimit
    match:
      path_prefix: /rl
    upstream: up
    rate_limit: bench-open
  - name: flood
    match:
      path_prefix: /flood
    upstream: up
    rate_limit: bench-flood"
fi

# The redis scenario: three policies that never refuse (as bench-open), one
# on the local store and two on the private Redis (exact, and batched with
# a lease of 100: see the header), each on its own route. on_store_error
# local: a check that fails falls back to the local bucket, so each run
# checks that portcullis_rate_limit_store_errors_total did not grow.
REDIS_URL="" REDIS_LEASE=100
declare -A RL_POLICY=()
if (( REDIS )); then
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
    RL_POLICY[local]=bench-store-local RL_POLICY[exact]=bench-redis-exact RL_POLICY[batched]=bench-redis-batched
    PC_RL_ITEMS+="
  - name: ${RL_POLICY[local]}
    key: header:x-api-key
    rate: 100000000/s
    burst: 100000000
    store: local
  - name: ${RL_POLICY[exact]}
    key: header:x-api-key
    rate: 100000000/s
    burst: 100000000
    store: $REDIS_URL
    sync: exact
    store_timeout: $REDIS_STORE_TIMEOUT
    on_store_error: local
  - name: ${RL_POLICY[batched]}
    key: header:x-api-key
    rate: 100000000/s
    burst: 100000000
    store: $REDIS_URL
    sync: batched
    lease: $REDIS_LEASE
    store_timeout: $REDIS_STORE_TIMEOUT
    on_store_error: local"
    for v in local exact batched; do
        PC_RL_ROUTES+="
  - name: rl-$v
    match:
      path_prefix: /rl-$v
    upstream: up
    rate_limit: ${RL_POLICY[$v]}"
    done
fi
# The flood scenario on the peers, only when it runs (so the configs of the
# other scenarios are as before): the same limit, 100/s with a burst of 100
# per x-api-key, on paths beginning with /flood. NGINX: limit_req, each
# refusal logged at info, which error_log warn does not write (Portcullis
# writes none). HAProxy: a stick table of request rates per key, tracked
# and checked only on /flood, so the other paths skip the table; it counts
# the refused requests too (see the header).
NG_FLOOD_ZONE="" NG_FLOOD_LOCATION="" HA_FLOOD_RULES="" HA_FLOOD_TABLE=""
if (( FLOOD )); then
    NG_FLOOD_ZONE="
  limit_req_zone \$http_x_api_key zone=flood:10m rate=100r/s;"
    NG_FLOOD_LOCATION="
    location /flood {
      limit_req zone=flood burst=100 nodelay;
      limit_req_status 429;
      limit_req_log_level info;
      $NG_PROXY
    }"
    HA_FLOOD_RULES="
    acl flood path_beg /flood
    http-request track-sc0 req.hdr(x-api-key) table flood if flood
    http-request deny deny_status 429 if flood { sc_http_req_rate(0) gt 100 }"
    HA_FLOOD_TABLE="
backend flood
    stick-table type string len 64 size 100k expire 30s store http_req_rate(1s)"
fi

# One rate_limits key for the policies of both blocks.
[[ -n $PC_RL_ITEMS ]] && PC_RL_POLICIES="
rate_limits:$PC_RL_ITEMS"

# The canary scenario: a second upstream on the same backend, a route that
# splits 95/5 between the two by a sticky x-user key, and the wrk script
# that sends 1000 keys in turn (requests made once, in init()).
PC_CANARY_UPSTREAM="" PC_CANARY_ROUTE=""
if (( CANARY )); then
    mkdir -p "$TMP/canary"
    cat >"$TMP/canary/users.lua" <<'EOF'
local users, c = {}, 0
function init(args)
  for i = 1, 1000 do
    users[i] = wrk.format(nil, nil, { ["x-user"] = "user-" .. i })
  end
end
function request()
  c = c % #users + 1
  return users[c]
end
EOF
    PC_CANARY_UPSTREAM="
  - name: up-canary
    endpoints: [127.0.0.1:$UP_PORT]"
    PC_CANARY_ROUTE="
  - name: canary
    match:
      path_prefix: /canary
    split:
      - { upstream: up, weight: 95 }
      - { upstream: up-canary, weight: 5 }
    sticky: header:x-user"
fi

cat >"$TMP/portcullis/gateway.yaml" <<EOF
listeners:
  - name: http
    bind: 127.0.0.1:$PC_PORT$PC_TLS_LISTENER
admin:
  bind: 127.0.0.1:$PC_ADMIN
server:
  workers: 1
  max_connections: 10000
  access_log: false$PC_JWT_PROVIDER$PC_RL_POLICIES
upstreams:
  - name: up
    endpoints: [127.0.0.1:$UP_PORT]$PC_CANARY_UPSTREAM
routes:
  - name: all
    match:
      path_prefix: /
    upstream: up$PC_JWT_ROUTE$PC_RL_ROUTES$PC_CANARY_ROUTE
EOF

# NGINX and HAProxy add X-Forwarded-For/-Proto/-Host like Portcullis does, so
# the upstream request is comparable (Portcullis also adds x-request-id on the
# response and a traceparent on the request).
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
${NGINX_COMMON//PREFIX/$TMP/nginx}
http {
${NGINX_HTTP_COMMON//PREFIX/$TMP/nginx}$NG_FLOOD_ZONE
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NG_PORT;$NG_FLOOD_LOCATION
    location / {
      $NG_PROXY
    }
  }$NG_TLS_SERVER
}
EOF

cat >"$TMP/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096$HA_TLS_GLOBAL
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$HA_PORT$HA_FLOOD_RULES
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be$HA_TLS_FRONTEND
backend be
    server up 127.0.0.1:$UP_PORT$HA_FLOOD_TABLE
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

# redis: the private Redis, on the load core, before the gateway (which
# would start without it, its Redis policies `connecting`, then `down`).
REDIS_PID=""
redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" 2>&1 | tr -d '\r'; }
if (( REDIS )) && [[ " ${selected[*]} " == *" portcullis "* ]]; then
    mkdir -p "$TMP/redis"
    start redis "$LOAD_CORE" "$TMP/redis/out.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$TMP/redis" --logfile ""
    REDIS_PID=$STARTED_PID
    for _ in $(seq 1 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || { note "redis-server exited at start; its log:"; tail -20 "$TMP/redis/out.log" >&2; exit 1; }
        [[ $(redis_cli PING) == PONG ]] && break
        sleep 0.1
    done
    [[ $(redis_cli PING) == PONG ]] || { note "redis-server not answering PING on 127.0.0.1:$REDIS_PORT after 10 s; its log:"; tail -20 "$TMP/redis/out.log" >&2; exit 1; }
fi

declare -A PID PORT TLS_PORT LABEL
LABEL[portcullis]=Portcullis; LABEL[nginx]=NGINX; LABEL[haproxy]=HAProxy; LABEL[baseline]="hyper baseline"
for p in "${selected[@]}"; do
    case "$p" in
        baseline)
            # One upstream, HTTP/1.1, one current-thread runtime: no config.
            # shellcheck disable=SC2153  # BL_PORT is set by take_port (printf -v)
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
# ratelimit: "plain" is the same Portcullis process measured on its
# policy-free route with the same requests (header included), in the rounds
# between those on the policy route.
if (( RL || CANARY )) && [[ -n ${PID[portcullis]:-} ]]; then
    PID[plain]=${PID[portcullis]}; PORT[plain]=$PC_PORT; LABEL[plain]="Portcullis, no policy"
    (( RL )) || LABEL[plain]="Portcullis, no split"
fi
if (( CANARY )) && [[ -n ${PID[portcullis]:-} ]]; then
    for user in user-1 user-2 user-3 user-4; do
        head=$(http_get "$PC_PORT" /canary/bench "x-user: $user" | sed '/^$/q')
        [[ $head == "HTTP/1.1 200"* ]] || { note "the canary route does not answer 200:"; echo "$head" >&2; exit 1; }
    done
fi
if (( RL )) && [[ -n ${PID[portcullis]:-} ]]; then
    # The policy is in force: the answer carries its RateLimit-Policy.
    rl_head=$(http_get "$PC_PORT" /rl/bench "$RL_KEY_HEADER" | sed '/^$/q')
    if [[ $rl_head != "HTTP/1.1 200"* ]] || ! grep -qi '^ratelimit-policy: "bench-open"' <<<"$rl_head"; then
        note "the rate-limited route does not answer 200 with RateLimit-Policy \"bench-open\":"
        echo "$rl_head" >&2
        exit 1
    fi
fi
# flood: the proxies that run it (all but the hyper baseline, which has no
# rate limit). The limit is in force on each: a 1 s wrk with a single key
# (not one of the flood script's) gets 200s, then 429s, and nothing else:
# its Lua script counts the statuses (response() makes wrk parse every
# response's headers, so only this check has one, not the measured runs).
flood_selected=()
declare -A FLOOD_CHECK=()
if (( FLOOD )); then
    cat >"$TMP/rl/check.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  wrk.headers["x-api-key"] = "flood-check"
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do io.write(string.format("status %d %d\n", k, v)) end
  end
end
EOF
    for p in "${selected[@]}"; do [[ $p == baseline ]] || flood_selected+=("$p"); done
    for p in "${flood_selected[@]}"; do
        timeout 15 taskset -c "$LOAD_CORE" wrk -t1 -c4 -d1s -s "$TMP/rl/check.lua" \
            "http://127.0.0.1:${PORT[$p]}/flood/check" >"$TMP/rl/check-$p.txt" 2>&1 \
            || { note "wrk against ${LABEL[$p]}'s /flood failed:"; cat "$TMP/rl/check-$p.txt" >&2; exit 1; }
        st=$(awk '$1 == "status" { printf "%s%s x %s", (n++ ? ", " : ""), $3, $2 }' "$TMP/rl/check-$p.txt")
        if ! awk '$1 == "status" { if ($2 == 200) ok = 1; else if ($2 == 429) no = 1; else bad = 1 }
                  END { exit !(ok && no && !bad) }' "$TMP/rl/check-$p.txt"; then
            note "${LABEL[$p]} does not enforce the flood limit: one key for 1 s got ${st:-no answer} (want 200s and 429s only):"
            cat "$TMP/rl/check-$p.txt" >&2
            exit 1
        fi
        FLOOD_CHECK[$p]=$st
    done
fi
# redis: the three routes are the same Portcullis process, measured in turn.
# A Redis policy is `connecting` until its store's first probe answers: the
# runs wait until every one is `up` in the admin /status (jq reads it; without
# jq, the store_up gauge of /metrics stands in for it).
store_state() {  # store_state POLICY: up, down, connecting, or empty when not reported
    local st=""
    if command -v jq >/dev/null; then
        st=$(http_get "$PC_ADMIN" /status | sed '1,/^$/d' \
            | jq -r --arg n "$1" '.rate_limits[]? | select(.name == $n) | .store_state // empty' 2>/dev/null || true)
    else
        st=$(http_get "$PC_ADMIN" /metrics | awk -v k="portcullis_rate_limit_store_up{policy=\"$1\"" \
            'index($0, k) == 1 { print ($NF + 0 == 1 ? "up" : "down"); exit }' || true)
    fi
    echo "$st"
}
if (( REDIS )) && [[ -n ${PID[portcullis]:-} ]]; then
    LABEL[local]="Portcullis, local store"; LABEL[exact]="Portcullis, Redis exact"; LABEL[batched]="Portcullis, Redis batched"
    for v in local exact batched; do PID[$v]=${PID[portcullis]}; PORT[$v]=$PC_PORT; done
    for v in exact batched; do
        st=""
        for _ in $(seq 1 150); do
            st=$(store_state "${RL_POLICY[$v]}")
            [[ $st == up ]] && break
            kill -0 "${PID[portcullis]}" 2>/dev/null || { note "Portcullis exited; its log:"; tail -20 "$TMP/portcullis/out.log" >&2; exit 1; }
            sleep 0.1
        done
        if [[ $st != up ]]; then
            note "the Redis store of policy ${RL_POLICY[$v]} is not up after 15 s (store_state: '${st:-not reported}'; Redis on 127.0.0.1:$REDIS_PORT answers $(redis_cli PING)); the gateway's log:"
            tail -20 "$TMP/portcullis/out.log" >&2
            exit 1
        fi
    done
    # Each policy is in force on its route: the answer carries its RateLimit-Policy.
    for v in local exact batched; do
        rl_head=$(http_get "$PC_PORT" "/rl-$v/bench" "$RL_KEY_HEADER" | sed '/^$/q')
        if [[ $rl_head != "HTTP/1.1 200"* ]] || ! grep -qi "^ratelimit-policy: \"${RL_POLICY[$v]}\"" <<<"$rl_head"; then
            note "the route /rl-$v does not answer 200 with RateLimit-Policy \"${RL_POLICY[$v]}\":"
            echo "$rl_head" >&2
            exit 1
        fi
    done
fi
# The proxies with a TLS listener: all but the hyper baseline.
tls_selected=()
if (( TLS )); then
    TLS_PORT[portcullis]=${PC_TLS_PORT:-}; TLS_PORT[nginx]=${NG_TLS_PORT:-}; TLS_PORT[haproxy]=${HA_TLS_PORT:-}
    for p in "${selected[@]}"; do
        [[ $p == baseline ]] && continue
        tls_selected+=("$p")
        wait_ready "${LABEL[$p]} (TLS)" "${TLS_PORT[$p]}" "${PID[$p]}" "$TMP/$p/out.log" tls
    done
    (( ${#tls_selected[@]} > 0 )) || note "no proxy with TLS selected: the TLS scenarios are skipped"
fi

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
ver_wrk=$(command -v wrk >/dev/null && { wrk -v 2>&1 | awk 'NR == 1 {print "wrk", $2}' || true; })
ver_wrk=${ver_wrk:-wrk not installed}
# handshake_load is built from the locked crates: report the rustls it uses.
ver_hs=""
if (( HS )) && [[ $HS_CLIENT == rustls ]]; then
    ver_hs=$(awk '$1 == "name" && $3 == "\"rustls\"" { getline; gsub(/"/, "", $3); print $3; exit }' "$REPO/Cargo.lock" 2>/dev/null || true)
    ver_hs=", handshake_load (rustls ${ver_hs:-?}, aws-lc-rs)"
fi
echo "versions: $ver_pc$ver_hyper, nginx $ver_nginx, haproxy $ver_haproxy, $ver_wrk$ver_hs"
echo "setup: proxies on core $PROXY_CORE (1 worker each); wrk -t1 -c$CONNS and upstream on core $LOAD_CORE"
if (( HS )); then
    if [[ $HS_CLIENT == rustls ]]; then
        echo "setup: handshake/resume client (HS_CLIENT=rustls): handshake_load -c$CONNS_HANDSHAKE on core $LOAD_CORE, one current-thread runtime"
    else
        echo "setup: handshake/resume client (HS_CLIENT=wrk): wrk -t1 -c$CONNS_HANDSHAKE -H 'Connection: close' on core $LOAD_CORE"
    fi
fi
echo "upstream: $UP_DESC"
echo "scenarios: ${scenarios[*]}"
if [[ -n $REDIS_PID ]]; then
    echo "redis: redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$REDIS_PORT, core $LOAD_CORE (with wrk and the upstream), no persistence; policies rate 1e8/s burst 1e8 on store local, $REDIS_URL sync exact, and sync batched lease $REDIS_LEASE (store_timeout $REDIS_STORE_TIMEOUT, on_store_error local)"
fi
if (( TLS )) && (( ${#tls_selected[@]} > 0 )); then
    echo "tls: one self-signed ECDSA P-256 certificate for all (SAN localhost, 127.0.0.1); TLS 1.2 + 1.3; session cache and tickets on; clients to https://$TLS_HOST (SNI $TLS_HOST); the hyper baseline has no TLS (skipped in the TLS scenarios)"
    if (( HS )) && [[ $HS_CLIENT == rustls ]]; then
        echo "tls: handshake_load offers TLS 1.2 + 1.3, a key share for X25519 only (P-256 and P-384 listed, no ML-KEM: as OpenSSL 3.0), rustls's cipher order (TLS_AES_256_GCM_SHA384 first, as OpenSSL), ALPN http/1.1; $( (( HS_VERIFY )) && echo "it trusts the bench certificate by pinning it (the CertificateVerify signature is checked)" || echo "HS_VERIFY=0: it checks neither the certificate nor the handshake signature"); its per-round \"client:\" line shows what each proxy negotiated"
    fi
    echo "tls: what wrk's OpenSSL ($(openssl version | awk '{print $1, $2}')) negotiates with each proxy:"
    for p in "${tls_selected[@]}"; do
        printf 'tls:   %-11s %s\n' "${LABEL[$p]}" "$(tls_info "${TLS_PORT[$p]}")"
    done
fi
if (( FLOOD )) && (( ${#flood_selected[@]} > 0 )); then
    echo "flood: limit 100/s, burst 100 per x-api-key on /flood: Portcullis rate_limit, NGINX limit_req (nodelay, status 429), HAProxy stick table http_req_rate(1s) > 100 -> deny 429"
    for p in "${flood_selected[@]}"; do
        printf 'flood:   %-11s one key for 1 s (wrk -c4): %s\n' "${LABEL[$p]}" "${FLOOD_CHECK[$p]}"
    done
fi
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
echo "runs: per scenario, $ROUNDS interleaved round(s) x ${#selected[@]} prox(ies)$( (( TLS )) && [[ " ${selected[*]} " == *" baseline "* ]] && echo " (${#tls_selected[@]} with TLS)"), $DURATION each after a $WARMUP warm-up; figures are medians"
echo

# ---------------------------------------------------------------- runs
RESULTS=""   # per scenario: $TMP/results-SCENARIO.tsv, one line per run (columns in run_one)
WRK_BOUND=$(( $(secs "$DURATION") + 30 ))
WARM_BOUND=$(( $(secs "$WARMUP") + 30 ))
URL_PATH=/api/bench

# The load client (wrk, or handshake_load) on the load core, bounded in
# time; run in the background and waited for, so that a signal stops the
# script at once instead of after the run. WRK_PRELOAD: a library for wrk's
# LD_PRELOAD (the no-resumption shim).
WRK_PID="" WRK_PRELOAD=""
run_load() {  # run_load BOUND_SECONDS OUTFILE CMD ARGS...
    local bound=$1 out=$2; shift 2
    timeout "$bound" taskset -c "$LOAD_CORE" env ${WRK_PRELOAD:+LD_PRELOAD="$WRK_PRELOAD"} "$@" >"$out" 2>&1 &
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

# Per scenario: what wrk gets, and the units of the figures.
declare -A SC_TITLE SC_RATE SC_UNIT
SC_TITLE[http]="plain HTTP/1.1 keep-alive (wrk -t1 -c$CONNS, http://)"
SC_TITLE[https]="HTTPS keep-alive (wrk -t1 -c$CONNS, https://; TLS to the proxy, plain HTTP to the upstream)"
# SC_CLIENT: the load client's name in the output (wrk unless set).
declare -A SC_CLIENT
if [[ $HS_CLIENT == rustls ]]; then
    SC_TITLE[handshake]="a full TLS handshake per request (handshake_load -c$CONNS_HANDSHAKE, a rustls client, resumption disabled; GET with 'Connection: close', https://)"
    SC_TITLE[resume]="a resumed TLS session per request (handshake_load -c$CONNS_HANDSHAKE --resume, a rustls client with a session cache per connection loop; GET with 'Connection: close', https://; TLS 1.3 PSK + X25519)"
    SC_CLIENT[handshake]=handshake_load SC_CLIENT[resume]=handshake_load
    if (( ! HS_VERIFY )); then
        SC_TITLE[handshake]+=" (HS_VERIFY=0: the client verifies nothing)"
        SC_TITLE[resume]+=" (HS_VERIFY=0: the client verifies nothing)"
    fi
else
    SC_TITLE[handshake]="a full TLS handshake per request (wrk -t1 -c$CONNS_HANDSHAKE -H 'Connection: close', https://; resumption dropped by the shim)"
    SC_TITLE[resume]="a resumed TLS session per request (wrk -t1 -c$CONNS_HANDSHAKE -H 'Connection: close', https://; TLS 1.3 PSK + X25519)"
fi
SC_TITLE[jwt]="plain HTTP/1.1 keep-alive to a JWT-protected route (wrk -t1 -c$CONNS, 100 ES256 tokens in turn; Portcullis only)"
SC_TITLE[ratelimit]="plain HTTP/1.1 keep-alive with '$RL_KEY_HEADER' to a route whose rate-limit policy never refuses (rate 1e8/s, burst 1e8), rounds alternating with the policy-free route (wrk -t1 -c$CONNS; Portcullis only)"
SC_TITLE[flood]="plain HTTP/1.1 keep-alive to a route limited to 100/s, burst 100 per x-api-key: $FLOOD_PCT% of requests with one hot key (429), the rest with 1000 keys in turn (proxied) (wrk -t1 -c$CONNS; Portcullis, NGINX limit_req, HAProxy stick table; not the hyper baseline)"
SC_TITLE[canary]="plain HTTP/1.1 keep-alive to a route splitting 95/5 by a sticky x-user key (1000 keys in turn), rounds alternating with the same requests to the single-upstream route (wrk -t1 -c$CONNS; Portcullis only)"
SC_TITLE[redis]="plain HTTP/1.1 keep-alive with '$RL_KEY_HEADER' to three routes of one Portcullis, each with a policy that never refuses (rate 1e8/s, burst 1e8): store local, Redis sync exact, Redis sync batched (lease $REDIS_LEASE); rounds alternate the three (wrk -t1 -c$CONNS; Redis on core $LOAD_CORE; Portcullis only)"
SC_RATE[canary]="req/s"; SC_UNIT[canary]="µs/req"
SC_RATE[redis]="req/s"; SC_UNIT[redis]="µs/req"
SC_RATE[jwt]="req/s"; SC_UNIT[jwt]="µs/req"
SC_RATE[ratelimit]="req/s"; SC_UNIT[ratelimit]="µs/req"
SC_RATE[flood]="req/s"; SC_UNIT[flood]="µs/req"
SC_RATE[http]="req/s"; SC_RATE[https]="req/s"; SC_RATE[handshake]="handshakes/s"; SC_RATE[resume]="handshakes/s"
SC_UNIT[http]="µs/req"; SC_UNIT[https]="µs/req"; SC_UNIT[handshake]="µs/handshake"; SC_UNIT[resume]="µs/handshake"

run_one() {  # run_one scenario proxy round
    local sc=$1 p=$2 r=$3 pid=${PID[$2]} out=$TMP/wrk-$1-$2-$3.txt url conns client=${SC_CLIENT[$1]:-wrk}
    local -a hdr=()
    case "$sc" in
        http) url="http://127.0.0.1:${PORT[$p]}$URL_PATH"; conns=$CONNS ;;
        jwt) url="http://127.0.0.1:${PORT[$p]}/jwt/bench"; conns=$CONNS
             hdr=(-s "$TMP/jwt/tokens.lua") ;;
        ratelimit) conns=$CONNS hdr=(-H "$RL_KEY_HEADER")
             if [[ $p == plain ]]; then url="http://127.0.0.1:${PORT[$p]}$URL_PATH"
             else url="http://127.0.0.1:${PORT[$p]}/rl/bench"; fi ;;
        redis) conns=$CONNS hdr=(-H "$RL_KEY_HEADER") url="http://127.0.0.1:${PORT[$p]}/rl-$p/bench" ;;
        canary) conns=$CONNS hdr=(-s "$TMP/canary/users.lua")
             if [[ $p == plain ]]; then url="http://127.0.0.1:${PORT[$p]}$URL_PATH"
             else url="http://127.0.0.1:${PORT[$p]}/canary/bench"; fi ;;
        flood) url="http://127.0.0.1:${PORT[$p]}/flood/bench"; conns=$CONNS
               hdr=(-s "$TMP/rl/flood.lua") ;;
        https) url="https://$TLS_HOST:${TLS_PORT[$p]}$URL_PATH"; conns=$CONNS ;;
        handshake|resume) url="https://$TLS_HOST:${TLS_PORT[$p]}$URL_PATH"; conns=$CONNS_HANDSHAKE
                   hdr=(-H "Connection: close") ;;
    esac
    WRK_PRELOAD=""
    [[ $sc == handshake && $client == wrk ]] && WRK_PRELOAD=$NORESUME_SO
    # The command lines of the warm-up and of the measured run: wrk's, or
    # handshake_load's (same connections, same URL; its output has the lines
    # of wrk's that are read below). Run as: load, duration, measured-only
    # (--latency), load_tail.
    local -a load=(wrk -t1 -c"$conns") load_tail=("${hdr[@]}" "$url") dur_warm=(-d"$WARMUP") dur_run=(-d"$DURATION") latency=(--latency)
    if [[ $client == handshake_load ]]; then
        load=("$HS_BIN" --url "$url" --connections "$conns" --cacert "$TMP/tls/cert.pem")
        (( HS_VERIFY )) || load=("$HS_BIN" --url "$url" --connections "$conns" --no-verify)
        [[ $sc == resume ]] && load+=(--resume)
        load_tail=() dur_warm=(--duration "$WARMUP") dur_run=(--duration "$DURATION") latency=()
    fi
    kill -0 "$pid" 2>/dev/null || { note "${LABEL[$p]} died before round $r; its log:"; tail -20 "$TMP/$p/out.log" >&2; exit 1; }
    # redis: the gateway's counters before the warm-up too (checks that fell
    # back during the warm-up are reported, not fatal).
    if [[ $sc == redis ]]; then http_get "$PC_ADMIN" /metrics >"$TMP/metrics-$sc-$p-$r-warm.txt"; fi
    if [[ $(secs "$WARMUP") -gt 0 ]]; then
        run_load "$WARM_BOUND" /dev/null "${load[@]}" "${dur_warm[@]}" "${load_tail[@]}" \
            || note "warm-up of ${LABEL[$p]} failed"
    fi
    local u0 s0 u1 s1 uu0 us0 uu1 us1 b0 t0 b0b t0b b1 t1 b1b t1b w0 w1 set0 set1
    # flood: the gateway's counters, read outside the CPU window (Portcullis;
    # the peers' answers are counted by wrk).
    if [[ $sc == flood && $p == portcullis ]]; then http_get "$PC_ADMIN" /metrics >"$TMP/metrics-$sc-$r-before.txt"; fi
    # redis: the store is up, and the gateway's counters and Redis's INFO
    # before the run (outside the CPU window, as the reads after it).
    # A store that went down during the warm-up (a check without an answer
    # within store_timeout) comes back with its next probe: wait for it, 15 s
    # at most.
    local warm_errs=0 waited=0
    if [[ $sc == redis ]]; then
        if [[ $p != local ]]; then
            local st
            for _ in $(seq 1 150); do
                st=$(store_state "${RL_POLICY[$p]}")
                [[ $st == up ]] && break
                waited=$((waited + 1))
                sleep 0.1
            done
            [[ $st == up ]] || { note "the Redis store of ${RL_POLICY[$p]} is '${st:-not reported}' before round $r, not up after 15 s; the gateway's log:"; tail -20 "$TMP/portcullis/out.log" >&2; exit 1; }
        fi
        http_get "$PC_ADMIN" /metrics >"$TMP/metrics-$sc-$p-$r-before.txt"
        redis_cli INFO all >"$TMP/redis-$p-$r-before.txt"
        if [[ $p != local ]]; then warm_errs=$(awk -v k="portcullis_rate_limit_store_errors_total{policy=\"${RL_POLICY[$p]}\"" \
            'FNR == 1 { f++ } index($0, k) == 1 { s[f] += $NF } END { printf "%.0f", s[2] - s[1] }' \
            "$TMP/metrics-$sc-$p-$r-warm.txt" "$TMP/metrics-$sc-$p-$r-before.txt"); fi
    fi
    # The process sets: a worker that died and was respawned (NGINX) takes
    # its CPU time with it, and the CPU figures of the run mean nothing.
    set0="$(proxy_pids "$pid" | sort | tr '\n' ' ')/$(proxy_pids "$UP_PID" | sort | tr '\n' ' ')"
    read -r u0 s0 < <(cpu_ticks "$pid")
    read -r uu0 us0 < <(cpu_ticks "$UP_PID")
    read -r b0 t0 < <(core_ticks "$PROXY_CORE")
    read -r b1 t1 < <(core_ticks "$LOAD_CORE")
    children_ms w0
    run_load "$WRK_BOUND" "$out" "${load[@]}" "${dur_run[@]}" "${latency[@]}" "${load_tail[@]}" \
        || { note "$client against ${LABEL[$p]} failed or timed out:"; cat "$out" >&2; exit 1; }
    children_ms w1
    read -r u1 s1 < <(cpu_ticks "$pid")
    read -r uu1 us1 < <(cpu_ticks "$UP_PID")
    read -r b0b t0b < <(core_ticks "$PROXY_CORE")
    read -r b1b t1b < <(core_ticks "$LOAD_CORE")
    kill -0 "$pid" 2>/dev/null || { note "${LABEL[$p]} died during round $r; its log:"; tail -20 "$TMP/$p/out.log" >&2; exit 1; }
    kill -0 "$UP_PID" 2>/dev/null || { note "the upstream died during round $r; its log:"; tail -20 "$TMP/upstream/out.log" >&2; exit 1; }
    # flood: answers by kind over the measured run, from the gateway's own
    # counters (every answer it finished, also those wrk did not wait for).
    local n_ok=0 n_429=0 n_other=0
    if [[ $sc == flood && $p == portcullis ]]; then
        http_get "$PC_ADMIN" /metrics >"$TMP/metrics-$sc-$r-after.txt"
        local all
        n_ok=$(series_delta 'portcullis_requests_total{route="flood",status="200"} ' "$sc-$r")
        n_429=$(series_delta 'portcullis_rate_limited_total{policy="bench-flood",mode="enforce"} ' "$sc-$r")
        all=$(series_delta 'portcullis_requests_total{route="flood",' "$sc-$r")
        n_other=$((all - n_ok - n_429))
        (( n_ok + n_429 > 0 )) || { note "flood round $r: no 200 or 429 in the gateway's metrics (KEEP_TMP=1 keeps them)"; exit 1; }
    fi
    # redis: Redis commands over the run (INFO commandstats; INFO does not
    # count itself, so the "after" one is not in it and the "before" one is:
    # one INFO left out), Redis's CPU (INFO cpu, user + sys, in µs), its
    # error replies, and the gateway's store calls and store errors for the
    # route's policy. A store error is a check that fell back to the local
    # bucket: a few are reported, more than 5% of the run stops the script.
    # commandstats also counts the commands a Lua script runs inside Redis,
    # and nothing tells them from the same commands sent by a client: the
    # commands "sent" are those a client sends to run a script (EVAL*,
    # FCALL*, SCRIPT ...) or to keep a connection (PING, HELLO, CLIENT ...,
    # SELECT, AUTH, INFO); "all" has every one (the list names them).
    local r_cmds=0 r_calls=0 r_errs=0 r_cpu=0 r_errrep=0 r_all=0 r_list=""
    if [[ $sc == redis ]]; then
        kill -0 "$REDIS_PID" 2>/dev/null || { note "redis-server died during round $r; its log:"; tail -20 "$TMP/redis/out.log" >&2; exit 1; }
        redis_cli INFO all >"$TMP/redis-$p-$r-after.txt"
        http_get "$PC_ADMIN" /metrics >"$TMP/metrics-$sc-$p-$r-after.txt"
        r_calls=$(series_delta "portcullis_rate_limit_store_calls_total{policy=\"${RL_POLICY[$p]}\"" "$sc-$p-$r")
        r_errs=$(series_delta "portcullis_rate_limit_store_errors_total{policy=\"${RL_POLICY[$p]}\"" "$sc-$p-$r")
        grep -q '^cmdstat_' "$TMP/redis-$p-$r-after.txt" \
            || { note "no INFO commandstats from Redis after round $r:"; head -5 "$TMP/redis-$p-$r-after.txt" >&2; exit 1; }
        read -r r_cmds r_all r_cpu r_errrep r_list < <(awk -F'[:,=]' 'FNR == 1 { f++ }
            /^cmdstat_/ { c = substr($1, 9); if (f == 1) b[c] = $3; else a[c] = $3 }
            /^used_cpu_(sys|user):/ { if (f == 1) cb += $2; else ca += $2 }
            /^total_error_replies:/ { if (f == 1) eb = $2; else ea = $2 }
            END {
                a["info"]--
                tot = 0; sent = 0; list = ""
                # Commands by count, largest first.
                for (;;) { m = ""; for (c in a) if (a[c] - b[c] > 0 && (m == "" || a[c] - b[c] > a[m] - b[m])) m = c
                           if (m == "") break
                           tot += a[m] - b[m]
                           if (m ~ /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro|ping|hello|auth|select|info|echo|quit|reset)$/ || m ~ /^(script|client|function)\|/) sent += a[m] - b[m]
                           list = list (list == "" ? "" : ",") m "=" (a[m] - b[m]); delete a[m] }
                printf "%d %d %.0f %d %s\n", sent, tot, (ca - cb) * 1e6, ea - eb, (list == "" ? "-" : list) }' \
            "$TMP/redis-$p-$r-before.txt" "$TMP/redis-$p-$r-after.txt")
        # A few late answers under full load are single fallbacks (the
        # store stays up); more than 5% of the run would measure the local
        # store rather than Redis.
        local r_reqs
        r_reqs=$(awk '/requests in/{print $1; exit}' "$out")
        if (( r_errs > 0 )); then
            note "round $r of ${LABEL[$p]}: $r_errs of ${r_reqs:-?} checks fell back to the local store (answers later than store_timeout $REDIS_STORE_TIMEOUT; store_state now: '$(store_state "${RL_POLICY[$p]}")')"
        fi
        if (( r_errs * 20 > ${r_reqs:-0} )); then
            note "round $r of ${LABEL[$p]}: more than 5% of the checks fell back, so the run does not measure Redis (a longer REDIS_STORE_TIMEOUT, e.g. 50ms, tells a slow answer from a missing one). The gateway's log:"
            tail -20 "$TMP/portcullis/out.log" >&2
            exit 1
        fi
        if [[ $p != local ]] && (( r_calls == 0 || r_cmds == 0 )); then
            note "round $r of ${LABEL[$p]}: no Redis call during the measured run (gateway store calls $r_calls, Redis commands $r_cmds): the policy does not use Redis"
            exit 1
        fi
    fi
    set1="$(proxy_pids "$pid" | sort | tr '\n' ' ')/$(proxy_pids "$UP_PID" | sort | tr '\n' ' ')"
    if [[ $set0 != "$set1" ]]; then
        note "WARNING: a process of ${LABEL[$p]} or of the upstream was replaced during round $r of $sc (pids ${set0// /,} -> ${set1// /,}): its CPU figures are wrong (KEEP_TMP=1 keeps the logs)"
        [[ -f $TMP/upstream/error.log ]] && tail -5 "$TMP/upstream/error.log" >&2
        [[ -f $TMP/$p/error.log ]] && tail -5 "$TMP/$p/error.log" >&2
    fi
    local rss reqs rps p50 p99 sockerr non2xx
    rss=$(rss_kib "$pid")
    reqs=$(awk '/requests in/{print $1; exit}' "$out")
    rps=$(awk '/^Requests\/sec:/{print $2; exit}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2; exit}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out")")
    sockerr=$(awk '/Socket errors:/{gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$out")
    [[ -n $reqs && $reqs -gt 0 ]] || { note "$client against ${LABEL[$p]} completed no request:"; cat "$out" >&2; exit 1; }
    # flood: the 429s are the point, not errors; an error is any other
    # status the gateway answered on the route.
    local non2xx_wrk=${non2xx:-0}
    # The peers: wrk's counts. Its non-2xx are taken as 429s up to what the
    # hot key can account for: FLOOD_PCT% of the requests sent (those it
    # completed and at most one in flight per connection), plus one for the
    # rounding; any beyond that are other statuses (a lower bound).
    if [[ $sc == flood && $p != portcullis ]]; then
        local hot_max
        hot_max=$(( (FLOOD_PCT * (reqs + conns) + 99) / 100 + 1 ))
        n_429=$non2xx_wrk n_other=0
        if (( n_429 > hot_max )); then n_other=$((n_429 - hot_max)) n_429=$hot_max; fi
        n_ok=$((reqs - non2xx_wrk))
    fi
    if [[ $sc == flood ]]; then non2xx=$n_other; fi
    # Columns: proxy round rps p50 p99 user sys total rss sockerr non2xx
    #   core0% core1% others-on-core0% wrk-us/req upstream-us/req others-on-core1%
    #   requests(wrk) user-us-total sys-us-total 200s 429s other-statuses (the last 3: flood only)
    #   redis-commands-sent store-calls store-errors redis-cpu-us-total redis-error-replies
    #   redis-commands-all (the last 6: redis only)
    awk -v p="$p" -v r="$r" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$reqs" -v hz="$CLK_TCK" \
        -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v dup=$((uu1 - uu0 + us1 - us0)) -v dw=$((w1 - w0)) \
        -v rss="$rss" -v se="${sockerr:-0}" -v bad="${non2xx:-0}" \
        -v ok="$n_ok" -v refused="$n_429" -v otherst="$n_other" \
        -v rcmds="$r_cmds" -v rcalls="$r_calls" -v rerrs="$r_errs" -v rcpu="$r_cpu" -v rerrrep="$r_errrep" -v rall="$r_all" \
        -v db0=$((b0b - b0)) -v dt0=$((t0b - t0)) -v db1=$((b1b - b1)) -v dt1=$((t1b - t1)) 'BEGIN {
            us = 1e6 / hz / n                      # µs per request per clock tick
            if (dt0 <= 0) dt0 = 1; if (dt1 <= 0) dt1 = 1
            other0 = db0 - du - ds; if (other0 < 0) other0 = 0
            # Redis (redis scenario) runs on the load core: not "others".
            other1 = db1 - dup - dw * hz / 1000 - rcpu * hz / 1e6; if (other1 < 0) other1 = 0
            printf "%s\t%s\t%.0f\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.1f\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%d\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%d\t%d\n",
                p, r, rps, p50, p99, du * us, ds * us, (du + ds) * us, rss / 1024, se, bad,
                100 * db0 / dt0, 100 * db1 / dt1, 100 * other0 / dt0, dw * 1000 / n, dup * us, 100 * other1 / dt1,
                n, du * 1e6 / hz, ds * 1e6 / hz, ok, refused, otherst,
                rcmds, rcalls, rerrs, rcpu, rerrrep, rall
        }' >>"$RESULTS"
    # handshake: "hs/s" and "µs/hs" keep the line as wide as the others.
    tail -1 "$RESULTS" | awk -F'\t' -v l="${LABEL[$p]}" -v client="$client" \
        -v rate="$([[ $sc == handshake || $sc == resume ]] && echo "hs/s " || echo "req/s")" \
        -v unit="$([[ $sc == handshake || $sc == resume ]] && echo "µs/hs " || echo "µs/req")" '{
        printf "round %s  %-14s %6s %s  p50 %6.2f ms  p99 %6.2f ms  proxy %6.2f %s (user %.2f, sys %.2f)  rss %5.1f MiB  | %s %.2f, upstream %.2f %s | others on cores: %.0f%%, %.0f%%%s\n",
            $2, l, $3, rate, $4, $5, $8, unit, $6, $7, $9, client, $15, $16, unit, $14, $17,
            ($10 + $11 > 0 ? sprintf("  ERRORS: %d socket, %d non-2xx", $10, $11) : "")
    }'
    # handshake_load: the handshake kinds (full or resumed, as the scenario
    # wants), what was negotiated, and its own CPU (getrusage).
    if [[ $client == handshake_load ]]; then
        awk '/^  Handshakes:/ { sub(/^  Handshakes: /, ""); h = $0 } /^  Negotiated:/ { sub(/^  Negotiated: /, ""); n = $0 }
             /^  Client CPU:/ { sub(/^  Client CPU: /, ""); c = $0 } /^  Closed without close_notify:/ { u = "; " $4 " closed without close_notify" }
             END { printf "         client: %s%s; %s; CPU %s\n", h, u, n, c }' "$out"
        if [[ $sc == handshake ]] && ! grep -q '^  Handshakes: [0-9]* full, [0-9]* full with HelloRetryRequest, 0 resumed' "$out"; then
            note "WARNING: round $r of ${LABEL[$p]}: handshake_load resumed sessions in the handshake scenario"
        fi
    fi
    if [[ $sc == flood && $p == portcullis ]]; then
        tail -1 "$RESULTS" | awk -F'\t' -v wbad="${non2xx_wrk:-0}" '{
            t = $21 + $22 + $23
            printf "         gateway answered %d: %d x 200, %d x 429 (%.1f%%), %d other; wrk saw %d requests, %d non-2xx\n",
                t, $21, $22, (t > 0 ? 100 * $22 / t : 0), $23, $18, wbad }'
    elif [[ $sc == flood ]]; then
        tail -1 "$RESULTS" | awk -F'\t' -v wbad="${non2xx_wrk:-0}" '{
            t = $21 + $22 + $23
            printf "         wrk saw %d requests: %d x 2xx (200), %d non-2xx: %d taken as 429 (%.1f%%), %d beyond the hot key'"'"'s share (other)\n",
                $18, $21, wbad, $22, (t > 0 ? 100 * $22 / t : 0), $23 }'
    fi
    if [[ $sc == redis ]]; then
        tail -1 "$RESULTS" | awk -F'\t' -v list="${r_list//,/, }" -v we="$warm_errs" -v w="$waited" '{
            n = $18
            printf "         redis: %d commands sent = %.4f/req, %d with those inside scripts = %.4f/req (%s); gateway store calls %d = %.4f/req; store errors %d; Redis error replies %d; Redis CPU %.2f µs/req\n",
                $24, $24 / n, $29, $29 / n, list, $25, $25 / n, $26, $28, $27 / n
            if (we > 0 || w > 0)
                printf "         redis: during the warm-up %d checks fell back to the local store%s\n", we,
                    (w > 0 ? sprintf("; the store was not up after it: waited %.1f s for its probe", w / 10) : "") }'
    fi
}

# ---------------------------------------------------------------- summary
median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v p="$1" -v c="$2" '$1 == p {print $c}' "$RESULTS" | median; }

TOTAL_ERR=0
summarize() {  # summarize SCENARIO PROXY...: the tables of one scenario
    local sc=$1; shift
    local -a procs=("$@")
    local -A M
    local p c rate=${SC_RATE[$sc]} unit=${SC_UNIT[$sc]} client=${SC_CLIENT[$sc]:-wrk}
    for p in "${procs[@]}"; do
        for c in 3 4 5 6 7 8 9 12 13 14 15 16 17; do M[$p,$c]=$(col "$p" "$c"); done
        M[$p,err]=$(awk -F'\t' -v p="$p" '$1 == p {s += $10 + $11} END {print s + 0}' "$RESULTS")
    done

    echo "Medians over $ROUNDS round(s):"
    echo
    echo "| proxy | $rate | p50 ms | p99 ms | user $unit | sys $unit | total $unit | RSS MiB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for p in "${procs[@]}"; do
        printf "| %s | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |\n" "${LABEL[$p]}" \
            "${M[$p,3]}" "${M[$p,4]}" "${M[$p,5]}" "${M[$p,6]}" "${M[$p,7]}" "${M[$p,8]}" "${M[$p,9]}"
    done
    echo
    echo "Where the time went (medians). The proxy is the limit when its core is ~100% busy with it;"
    echo "$client + upstream are when theirs is: 1e6 / ($client + upstream $unit) is the most $rate the load"
    echo "core can drive. \"others\" is CPU time on a core that belongs to none of the processes under"
    echo "test (a concurrent build, kernel threads): above a few % the run is noisy."
    echo
    echo "| proxy | core $PROXY_CORE busy % | others on core $PROXY_CORE % | core $LOAD_CORE busy % | others on core $LOAD_CORE % | $client $unit | upstream $unit | errors (socket + non-2xx, all runs) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for p in "${procs[@]}"; do
        printf "| %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %d |\n" "${LABEL[$p]}" \
            "${M[$p,12]}" "${M[$p,14]}" "${M[$p,13]}" "${M[$p,17]}" "${M[$p,15]}" "${M[$p,16]}" "${M[$p,err]}"
    done

    if [[ " ${procs[*]} " == *" portcullis "* ]]; then
        local peers=0
        for p in "${procs[@]}"; do [[ $p == portcullis ]] || peers=1; done
        if (( peers )); then
            echo
            echo "Portcullis / peer ($rate: above 1 is better; CPU $unit: below 1 is better):"
            if [[ " ${procs[*]} " == *" baseline "* ]]; then
                echo "the hyper baseline row is the feature cost: each CPU cell is the ratio, then"
                echo "Portcullis minus the baseline in $unit (what Portcullis adds to the bare stack)."
            fi
            echo
            echo "| peer | $rate ratio | total CPU $unit ratio | user $unit ratio | sys $unit ratio |"
            echo "| --- | ---: | ---: | ---: | ---: |"
            for p in "${procs[@]}"; do
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
            # Issue 3's target for the TLS scenarios: at least the better
            # peer's rate (NGINX or HAProxy, whichever is higher in this run).
            if [[ $sc == https || $sc == handshake || $sc == resume ]]; then
                local best="" cheap="" q
                for q in nginx haproxy; do
                    [[ " ${procs[*]} " == *" $q "* ]] || continue
                    if [[ -z $best ]] || awk -v x="${M[$q,3]}" -v y="${M[$best,3]}" 'BEGIN { exit !(x > y) }'; then best=$q; fi
                    if [[ -z $cheap ]] || awk -v x="${M[$q,8]}" -v y="${M[$cheap,8]}" 'BEGIN { exit !(x < y) }'; then cheap=$q; fi
                done
                if [[ -n $best ]]; then
                    echo
                    awk -v rate="$rate" -v l="${LABEL[$best]}" -v a="${M[portcullis,3]}" -v b="${M[$best,3]}" 'BEGIN {
                        ratio = b > 0 ? a / b : 0
                        printf "Target (>= 1.0x the better peer'"'"'s %s): Portcullis %.0f vs %s %.0f = %.2fx, %s in this run.\n",
                            rate, a, l, b, ratio, (ratio >= 1 ? "met" : "NOT met") }'
                    # When the load core is the limit (core busy % above), the measured
                    # rates say more about wrk than about the proxies: CPU decides.
                    awk -v rate="$rate" -v unit="$unit" -v l="${LABEL[$cheap]}" -v ct="${M[portcullis,8]}" -v pt="${M[$cheap,8]}" 'BEGIN {
                        printf "CPU: Portcullis %.2f vs %s %.2f %s (the cheaper peer): at one full core (1e6 / CPU) %.0f vs %.0f %s = %.2fx.\n",
                            ct, l, pt, unit, (ct > 0 ? 1e6 / ct : 0), (pt > 0 ? 1e6 / pt : 0), rate, (ct > 0 ? pt / ct : 0) }'
                fi
            fi
        fi
    fi
    for p in "${procs[@]}"; do TOTAL_ERR=$((TOTAL_ERR + M[$p,err])); done
}

# flood: the answers by kind per round, and the CPU of a refused request
# solved from each round's total: cpu = n_200 x c_200 + n_429 x c_429, with
# c_200 the proxied request's median cost of the same proxy in this run,
# from the http scenario for every proxy so the ratios are priced alike
# (Portcullis falls back to the ratelimit scenario when http did not run:
# its policy and RateLimit headers cost ~0.3 µs, less than the noise between
# scenarios), so each proxy's refused/proxied ratio is its own.
# Portcullis's table and line keep their format; the peers follow, then one
# table of every proxy's ratio.
# flood_c200 PROXY SCENARIO...: "scenario user sys total" (µs per request,
# medians) from the first of the scenarios that ran PROXY, or nothing.
flood_c200() {
    local p=$1 c f; shift
    for c in "$@"; do
        f=$TMP/results-$c.tsv
        if [[ -s $f ]] && awk -F'\t' -v p="$p" '$1 == p { found = 1 } END { exit !found }' "$f"; then
            echo "$c $(RESULTS=$f col "$p" 6) $(RESULTS=$f col "$p" 7) $(RESULTS=$f col "$p" 8)"
            return
        fi
    done
}
# flood_rows PROXY LABEL CT CU CS OUT: the proxy's rounds as table rows (a
# first cell LABEL when not empty), and per round "share total user sys
# n200 n429" (the split, or "-") into OUT.
flood_rows() {
    awk -F'\t' -v p="$1" -v l="$2" -v ct="$3" -v cu="$4" -v cs="$5" -v out="$6" '
        function solve(cpu, c) { return (c != "" && $22 > 0) ? sprintf("%.2f", (cpu - $21 * c) / $22) : "-" }
        $1 == p {
            t = $21 + $22 + $23
            share = t > 0 ? 100 * $22 / t : 0
            a = solve($19 + $20, ct); u = solve($19, cu); s = solve($20, cs)
            printf "| %s%s | %.0f | %d | %d | %d | %.1f%% | %.2f | %s | %s | %s |\n", (l == "" ? "" : l " | "), $2, $3, $21, $22, $23, share, ($19 + $20) / 1e6, a, u, s
            printf "%.3f\t%s\t%s\t%s\t%.0f\t%.0f\n", share, a, u, s, $21, $22 >out
        }' "$RESULTS"
}
flood_report() {
    local p c src cu ct cs share a u s prefix
    local -a ran=() peers=()
    local -A F
    for p in portcullis nginx haproxy; do
        awk -F'\t' -v p="$p" '$1 == p { found = 1 } END { exit !found }' "$RESULTS" || continue
        ran+=("$p")
        [[ $p == portcullis ]] || peers+=("$p")
        c=$(flood_c200 "$p" http ratelimit)
        read -r "F[$p,src]" "F[$p,cu]" "F[$p,cs]" "F[$p,ct]" <<<"${c:-- - - -}"
        [[ ${F[$p,src]} != - ]] || F[$p,src]="" F[$p,cu]="" F[$p,cs]="" F[$p,ct]=""
        : >"$TMP/flood-split-$p.tsv"
    done
    if [[ " ${ran[*]} " == *" portcullis "* ]]; then
        src=${F[portcullis,src]} cu=${F[portcullis,cu]} cs=${F[portcullis,cs]} ct=${F[portcullis,ct]}
        echo
        echo "Answers from the gateway's counters (requests_total{route=\"flood\"} and"
        echo "rate_limited_total{policy=\"bench-flood\",mode=\"enforce\"}, before and after each"
        echo "measured run), and the gateway's CPU over the run (user + sys, /proc/PID/stat)."
        if [[ -n $src ]]; then
            echo "CPU per 429 is solved from cpu = n_200 x c_200 + n_429 x c_429, with c_200 the"
            echo "proxied request's median in the \`$src\` scenario of this run: $ct µs (user $cu, sys $cs)."
        else
            echo "No ratelimit or http scenario with Portcullis in this run: CPU per 429 not split out."
        fi
        echo
        echo "| round | req/s | 200 | 429 | other | 429 share | gateway CPU s | total µs per 429 | user µs per 429 | sys µs per 429 |"
        echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        flood_rows portcullis "" "$ct" "$cu" "$cs" "$TMP/flood-split-portcullis.tsv"
    fi
    if (( ${#peers[@]} > 0 )); then
        echo
        echo "NGINX and HAProxy: answers counted by wrk (429 = its non-2xx, up to the hot key's share of"
        echo "the requests; \"other\" = non-2xx beyond it; 200 = requests - non-2xx), and the proxy's CPU"
        echo "over the run (user + sys of all its processes, /proc/PID/stat). CPU per 429 is solved the"
        echo "same way, with c_200 each proxy's own median in the \`http\` scenario of this run:"
        for p in "${peers[@]}"; do
            if [[ -n ${F[$p,src]} ]]; then
                echo "  ${LABEL[$p]}: ${F[$p,ct]} µs (user ${F[$p,cu]}, sys ${F[$p,cs]})."
            else
                echo "  ${LABEL[$p]}: no http scenario with it before flood in this run: CPU per 429 not split out."
            fi
        done
        echo
        echo "| proxy | round | req/s | 200 | 429 | other | 429 share | proxy CPU s | total µs per 429 | user µs per 429 | sys µs per 429 |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for p in "${peers[@]}"; do
            flood_rows "$p" "${LABEL[$p]}" "${F[$p,ct]}" "${F[$p,cu]}" "${F[$p,cs]}" "$TMP/flood-split-$p.tsv"
        done
    fi
    echo
    for p in "${ran[@]}"; do
        src=${F[$p,src]} cu=${F[$p,cu]} cs=${F[$p,cs]} ct=${F[$p,ct]}
        # Portcullis's line as before; the peers' the same with their name.
        if [[ $p == portcullis ]]; then prefix="flood (issue 5):"; else prefix="flood, ${LABEL[$p]}:"; fi
        share=$(cut -f1 "$TMP/flood-split-$p.tsv" | median)
        F[$p,share]=$share F[$p,a]=""
        if [[ -z $src ]]; then
            printf '%s median 429 share %.1f%%.\n' "$prefix" "$share"
            continue
        fi
        a=$(cut -f2 "$TMP/flood-split-$p.tsv" | { grep -v '^-$' || true; } | median)
        u=$(cut -f3 "$TMP/flood-split-$p.tsv" | { grep -v '^-$' || true; } | median)
        s=$(cut -f4 "$TMP/flood-split-$p.tsv" | { grep -v '^-$' || true; } | median)
        if [[ -z $a ]]; then
            printf '%s median 429 share %.1f%%; no 429 to price.\n' "$prefix" "$share"
            continue
        fi
        F[$p,a]=$a F[$p,u]=$u F[$p,s]=$s
        awk -v prefix="$prefix" -v share="$share" -v a="$a" -v u="$u" -v s="$s" -v ct="$ct" -v cu="$cu" -v cs="$cs" -v src="$src" \
            'function r(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" } BEGIN {
            printf "%s median 429 share %.1f%%; CPU per refused request %.2f µs (user %.2f, sys %.2f) vs %.2f µs per proxied one (user %.2f, sys %.2f; %s scenario) = %sx (user %sx, sys %sx), medians over rounds.\n",
                prefix, share, a, u, s, ct, cu, cs, src, r(a, ct), r(u, cu), r(s, cs) }'
    done
    (( ${#peers[@]} > 0 )) || return 0
    echo
    echo "Refused vs proxied, each proxy against itself in this run (medians over rounds; the ratio"
    echo "is the CPU of a 429 over that of a proxied request of the same proxy: below 1, a refusal"
    echo "is cheaper than proxying; compare ratios across proxies, not the µs):"
    echo
    echo "| proxy | 429 share | µs per proxied request (scenario) | µs per refused request | refused / proxied | user ratio | sys ratio |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for p in "${ran[@]}"; do
        awk -v l="${LABEL[$p]}" -v share="${F[$p,share]}" -v src="${F[$p,src]}" -v ct="${F[$p,ct]}" -v cu="${F[$p,cu]}" -v cs="${F[$p,cs]}" \
            -v a="${F[$p,a]}" -v u="${F[$p,u]}" -v s="${F[$p,s]}" \
            'function r(x, y) { return (x != "" && y > 0) ? sprintf("%.2fx", x / y) : "-" } BEGIN {
            printf "| %s | %.1f%% | %s | %s | %s | %s | %s |\n", l, share,
                (src == "" ? "-" : sprintf("%.2f (%s)", ct, src)), (a == "" ? "-" : sprintf("%.2f", a)),
                r(a, ct), r(u, cu), r(s, cs) }'
    done
}

# redis: Redis's side per route, the ratios to the local store (medians of
# the three routes' runs, and the req/s ratio paired by round), and issue
# 9's target.
per_req() { awk -F'\t' -v p="$1" -v c="$2" '$1 == p && $18 > 0 { print $c / $18 }' "$RESULTS" | median; }
redis_report() {
    local v c
    local -A R
    for v in local exact batched; do
        R[$v,cmds]=$(per_req "$v" 24); R[$v,all]=$(per_req "$v" 29); R[$v,calls]=$(per_req "$v" 25); R[$v,rcpu]=$(per_req "$v" 27)
        R[$v,errs]=$(awk -F'\t' -v p="$v" '$1 == p { s += $26 } END { print s + 0 }' "$RESULTS")
        R[$v,errrep]=$(awk -F'\t' -v p="$v" '$1 == p { s += $28 } END { print s + 0 }' "$RESULTS")
        R[$v,both]=$(awk -F'\t' -v p="$v" '$1 == p && $18 > 0 { print $8 + $27 / $18 }' "$RESULTS" | median)
        R[$v,load]=$(awk -F'\t' -v p="$v" '$1 == p && $18 > 0 { print $15 + $16 + $27 / $18 }' "$RESULTS" | median)
        for c in 3 4 5 8; do R[$v,$c]=$(col "$v" "$c"); done
    done
    echo
    echo "Redis (on core $LOAD_CORE with wrk and the upstream, so its CPU is not in \"others on core $LOAD_CORE\""
    echo "above). Commands: INFO commandstats over each measured run, the script's own INFO left"
    echo "out; \"sent\" are those a client sends (EVAL*, FCALL*, SCRIPT, PING, connection set-up),"
    echo "\"all\" adds those a Lua script runs inside Redis (commandstats counts them too); store"
    echo "calls: portcullis_rate_limit_store_calls_total; Redis CPU: INFO cpu (user + sys). Load"
    echo "side = wrk + upstream + Redis: 1e6 / it is the most req/s core $LOAD_CORE can drive."
    echo "Medians over rounds, per proxied request:"
    echo
    echo "| route | Redis commands sent / req | all Redis commands / req | gateway store calls / req | Redis CPU µs/req | gateway + Redis CPU µs/req | load side µs/req | store errors (all runs) | Redis error replies (all runs) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for v in local exact batched; do
        printf "| %s | %.4f | %.4f | %.4f | %.2f | %.2f | %.2f | %d | %d |\n" "${LABEL[$v]}" \
            "${R[$v,cmds]}" "${R[$v,all]}" "${R[$v,calls]}" "${R[$v,rcpu]}" "${R[$v,both]}" "${R[$v,load]}" "${R[$v,errs]}" "${R[$v,errrep]}"
    done
    # Paired by round: the three runs of a round are back to back.
    awk -F'\t' '{ v[$1, $2] = $3 } $1 == "local" { rs[$2] = 1 }
        END { for (r in rs) if (v["local", r] > 0) printf "%s\t%.4f\t%.4f\n", r, v["exact", r] / v["local", r], v["batched", r] / v["local", r] }' "$RESULTS" \
        | sort -n >"$TMP/redis-pairs.tsv"
    echo
    echo "Ratio to the local store, same run (req/s: above 1 is better; latency and CPU: below 1 is better;"
    echo "deltas in µs per request):"
    echo
    echo "| route | req/s ratio | p50 ratio | p99 ratio | gateway CPU ratio | gateway CPU delta µs | gateway + Redis CPU delta µs | req/s ratio paired by round: median (rounds) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local k=2
    for v in exact batched; do
        awk -v l="${LABEL[$v]}" -v a="${R[$v,3]}" -v b="${R[local,3]}" -v a50="${R[$v,4]}" -v b50="${R[local,4]}" \
            -v a99="${R[$v,5]}" -v b99="${R[local,5]}" -v ca="${R[$v,8]}" -v cb="${R[local,8]}" \
            -v ba="${R[$v,both]}" -v bb="${R[local,both]}" \
            -v pm="$(cut -f"$k" "$TMP/redis-pairs.tsv" | median)" \
            -v each="$(awk -F'\t' -v k="$k" '{ printf "%s%.2fx", (NR > 1 ? ", " : ""), $k }' "$TMP/redis-pairs.tsv")" \
            'function r(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" } BEGIN {
            printf "| %s | %s | %s | %s | %s | %+.2f | %+.2f | %s (%s) |\n", l, r(a, b), r(a50, b50), r(a99, b99), r(ca, cb), ca - cb, ba - bb,
                (pm == "" ? "-" : sprintf("%.2fx", pm)), each }'
        k=$((k + 1))
    done
    echo
    awk -v bl="${R[local,3]}" -v be="${R[exact,3]}" -v bb="${R[batched,3]}" -v ce="${R[exact,cmds]}" -v cb="${R[batched,cmds]}" 'BEGIN {
        if (bl <= 0) { print "redis target (issue 9): no local-store req/s to compare with"; exit }
        rb = bb / bl; re = be / bl
        printf "redis target (issue 9): batched %.0f req/s = %.2fx local (target >= 0.9): %s; exact = %.2fx local; Redis commands per request: exact %.3f, batched %.3f\n",
            bb, rb, (rb >= 0.9 ? "ok" : "MISSED"), re, ce, cb }'
}

first=1
for sc in "${scenarios[@]}"; do
    if [[ $sc == http ]]; then procs=("${selected[@]}")
    elif [[ $sc == flood ]]; then procs=("${flood_selected[@]}")
    elif [[ $sc == jwt || $sc == ratelimit || $sc == canary || $sc == redis ]]; then
        procs=()
        if [[ " ${selected[*]} " == *" portcullis "* ]]; then
            if [[ $sc == ratelimit || $sc == canary ]]; then procs=(plain portcullis)
            elif [[ $sc == redis ]]; then procs=(local exact batched)
            else procs=(portcullis); fi
        fi
    else procs=("${tls_selected[@]}"); fi
    (( first )) || echo
    first=0
    echo "## Scenario $sc: ${SC_TITLE[$sc]}"
    echo
    if (( ${#procs[@]} == 0 )); then
        case "$sc" in
            jwt|ratelimit|canary|redis) echo "(Portcullis not selected: skipped)" ;;
            flood) echo "(no proxy with a rate limit selected (Portcullis, NGINX, HAProxy): skipped)" ;;
            *) echo "(no proxy with TLS selected: skipped)" ;;
        esac
        continue
    fi
    if [[ ($sc == https || $sc == handshake || $sc == resume) && " ${selected[*]} " == *" baseline "* ]]; then
        echo "(the hyper baseline has no TLS: skipped in this scenario)"
        echo
    fi
    RESULTS=$TMP/results-$sc.tsv
    : >"$RESULTS"
    for r in $(seq 1 "$ROUNDS"); do
        for p in "${procs[@]}"; do
            run_one "$sc" "$p" "$r"
        done
    done
    echo
    summarize "$sc" "${procs[@]}"
    if [[ $sc == jwt && -s $TMP/results-http.tsv ]]; then
        plain=$(RESULTS=$TMP/results-http.tsv col portcullis 3)
        with_jwt=$(col portcullis 3)
        echo
        awk -v a="$with_jwt" -v b="$plain" 'BEGIN { if (b > 0) printf "jwt target (issue 4): Portcullis %.0f req/s on the JWT route = %.2fx its plain http %.0f req/s in this run (target >= 0.90)\n", a, a / b, b }'
    fi
    if [[ $sc == ratelimit || $sc == canary ]]; then
        if [[ $sc == canary ]]; then what="the sticky 95/5 split" other="the single-upstream route"
        else what="the policy" other="the policy-free route"; fi
        echo
        awk -v sc="$sc" -v what="$what" -v other="$other" -v a="$(col portcullis 3)" -v b="$(col plain 3)" -v ca="$(col portcullis 8)" -v cb="$(col plain 8)" 'BEGIN {
            if (b > 0 && cb > 0) printf "%s, interleaved: Portcullis %.0f req/s through %s = %.2fx the same requests to %s (%.0f req/s); CPU %.2f vs %.2f µs/req = %.2fx (%+.2f µs).\n",
                sc, a, what, a / b, other, b, ca, cb, ca / cb, ca - cb }'
        # Paired by round (the two runs of a round are back to back, so a
        # slow spell of the machine hits both more often than not).
        awk -F'\t' '$1 == "plain" { b[$2] = $3; cb[$2] = $8 } $1 == "portcullis" { a[$2] = $3; ca[$2] = $8 }
            END { for (r in a) if (r in b && b[r] > 0) printf "%s\t%.4f\t%.2f\n", r, a[r] / b[r], ca[r] - cb[r] }' "$RESULTS" \
            | sort -n >"$TMP/$sc-pairs.tsv"
        if [[ -s $TMP/$sc-pairs.tsv ]]; then
            awk -v sc="$sc" -v m="$(cut -f2 "$TMP/$sc-pairs.tsv" | median)" -v d="$(cut -f3 "$TMP/$sc-pairs.tsv" | median)" \
                -v each="$(awk -F'\t' '{ printf "%s%.2fx/%+.2f µs", (NR > 1 ? ", " : ""), $2, $3 }' "$TMP/$sc-pairs.tsv")" 'BEGIN {
                printf "%s, paired by round: median of the per-round ratios %.2fx req/s, %+.2f µs/req CPU (rounds: %s).\n", sc, m, d, each }'
        fi
    fi
    if [[ $sc == canary ]]; then
        awk -v a="$(col portcullis 3)" -v b="$(col plain 3)" 'BEGIN {
            if (b > 0) printf "canary target (issue 6): the sticky 95/5 split at %.2fx the single-upstream route'"'"'s req/s in this run (target >= 0.97): %s.\n",
                a / b, (a / b >= 0.97 ? "met" : "NOT met") }'
    fi
    if [[ $sc == ratelimit ]]; then
        # Judged on the interleaved rounds: the same process and the same
        # requests, minutes closer together than the http scenario.
        awk -v a="$(col portcullis 3)" -v b="$(col plain 3)" 'BEGIN {
            if (b > 0) printf "ratelimit target (issue 5): the policy at %.2fx the policy-free route'"'"'s req/s, interleaved in this run (target >= 0.97): %s.\n",
                a / b, (a / b >= 0.97 ? "met" : "NOT met") }'
        if [[ -s $TMP/results-http.tsv ]] && awk -F'\t' '$1 == "portcullis" { found = 1 } END { exit !found }' "$TMP/results-http.tsv"; then
            awk -v a="$(col portcullis 3)" -v b="$(RESULTS=$TMP/results-http.tsv col portcullis 3)" \
                -v ca="$(col portcullis 8)" -v cb="$(RESULTS=$TMP/results-http.tsv col portcullis 8)" 'BEGIN {
                if (b > 0 && cb > 0) printf "ratelimit vs the http scenario (earlier in this run, without the key header): %.0f vs %.0f req/s = %.2fx; CPU %.2f vs %.2f µs/req = %.2fx (%+.2f µs).\n",
                    a, b, a / b, ca, cb, ca / cb, ca - cb }'
        fi
    fi
    if [[ $sc == flood ]]; then flood_report; fi
    if [[ $sc == redis ]]; then redis_report; fi
done

if (( TOTAL_ERR > 0 )); then
    echo
    echo "WARNING: some runs had socket errors or non-2xx responses (see the per-round lines above)."
    exit 2
fi
exit 0
}
