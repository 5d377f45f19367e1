//! The shared rate-limit store: one Redis server, used by every policy whose
//! `store` names its URL (`limits::shared` keeps each policy's buckets in
//! it).
//!
//! A bucket is one Redis key holding its GCRA "theoretical arrival time" in
//! microseconds of Redis's own clock, so instances with skewed clocks agree.
//! A check is one atomic Lua script ([`GCRA`], loaded once and called by
//! SHA), which also sets the key's TTL to the time until the bucket is full
//! again: Redis memory is bounded like the local sweep bounds ours.
//!
//! Checks are multiplexed (pipelined) over [`CONNECTIONS`] connections, never
//! one per request. The connections are made, probed and read on their own
//! thread ([`io_runtime`]), not on the gateway's workers: an answer is taken
//! off the socket as soon as it arrives, however busy the workers are, so
//! `store_timeout` measures Redis and not the gateway's own queue.
//!
//! The store is *up*, *down* or *connecting* (down until the first answer):
//! while it is not up, checks do not wait for Redis at all and the policy's
//! `on_store_error` decides at once. The probe task (PING; connecting anew
//! when a PING fails) finds it again; only transitions are logged, at most
//! one line per [`LOG_EVERY`] plus a summary while the outage lasts.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Gauge;
use redis::aio::MultiplexedConnection;

use crate::clock::Clock;
use crate::config::limits::redact_url;
use crate::config::OnStoreError;
use crate::sync::lock;

/// Connections per store. One multiplexed connection pipelines every
/// concurrent check; a second spreads reading the answers over two
/// runtime workers.
const CONNECTIONS: usize = 2;

/// How often a store that is not up is probed. A store that checks mark
/// down is probed at once as well: a stall of a few ms (a busy Redis, a
/// busy gateway) then costs the checks of those few ms, not a period.
const PROBE_DOWN: Duration = Duration::from_millis(250);
/// How often a store that is up is probed (so `/status` and the `up`
/// gauge notice an outage while no traffic asks).
const PROBE_UP: Duration = Duration::from_secs(1);
/// The longest wait for a probe's PING. Generous: it includes connecting
/// (and a TLS handshake); checks have their own, short timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one outage line per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Checks answered too late in a row (no answer in time between them)
/// before the store counts as down. One late answer is that check's
/// fallback only: `store_timeout` also counts the time the answer waits for
/// a busy gateway's event loop, so under full load a few arrive late while
/// Redis is fine, and marking the store down for all on each would make a
/// busy gateway flap between shared and local limits.
const LATE_IN_A_ROW: u64 = 10;

/// GCRA in Redis. KEYS[1]: the bucket. ARGV: µs per token, burst, tokens
/// wanted. Grants as many as the bucket holds, up to the wanted count
/// (exact mode wants 1; a lease wants more). Returns `{granted,
/// remaining, µs until full, µs until the next token when none was
/// granted}`. Integers throughout: µs since 1970 stay exact in Lua's
/// doubles (below 2^53).
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local capacity = interval * burst
local free = math.floor((capacity - (tat - now)) / interval)
local granted = math.min(want, free)
if granted < 1 then
  return {0, 0, tat - now, tat + interval - now - capacity}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
return {granted, math.floor((capacity - (tat - now)) / interval), tat - now, 0}
",
    )
});

/// Why a call to the store did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer within the check's timeout.
    Late(Duration),
    /// The connection failed: the store is down.
    Failed(String),
    /// The server answered this check with an error (`WRONGTYPE` on a key
    /// someone else wrote, `OOM`, ...): this check falls back, the store
    /// stays up.
    Answered(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Late(t) => write!(f, "no answer within {} µs", t.as_micros()),
            StoreError::Failed(e) | StoreError::Answered(e) => f.write_str(e),
        }
    }
}

/// What Redis granted on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// Tokens left in the shared bucket after this call.
    pub remaining: u64,
    /// Until the shared bucket is full again.
    pub full_in: Duration,
    /// When nothing was granted: until the next token.
    pub retry_in: Duration,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One Redis server (per URL), shared by the policies that name it.
pub struct RedisStore {
    /// The URL without its password: for logs and `/status`.
    pub url: Arc<str>,
    client: redis::Client,
    /// Empty until connected, and again after a failed probe.
    connections: ArcSwap<Vec<MultiplexedConnection>>,
    next: AtomicUsize,
    state: AtomicU8,
    clock: Clock,
    /// When the last outage line was written (ms on `clock`, +1 so 0 is
    /// "never").
    logged_at_ms: AtomicU64,
    /// Checks that fell back since the last outage line.
    fell_back: AtomicU64,
    /// Checks answered late since the last answer in time.
    late_in_a_row: AtomicU64,
    /// An outage line was written and its end is still to be told.
    announced: AtomicBool,
    /// Wakes the probe when a check marks the store down.
    probe_now: tokio::sync::Notify,
    last_error: Mutex<Option<String>>,
    /// The policies using the store, for log lines (`a (on_store_error:
    /// local), ...`), and their `up` gauges.
    users: Mutex<Users>,
}

#[derive(Default)]
struct Users {
    names: String,
    up_gauges: Vec<Gauge>,
}

impl RedisStore {
    /// A store for `url` (already validated). Nothing connects or waits
    /// for Redis here: [`RedisStore::start_probe`] does.
    pub fn new(url: &str) -> Result<Arc<RedisStore>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        Ok(Arc::new(RedisStore {
            url: Arc::from(redact_url(url)),
            client,
            connections: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            state: AtomicU8::new(CONNECTING),
            clock: Clock::new(),
            logged_at_ms: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
            late_in_a_row: AtomicU64::new(0),
            announced: AtomicBool::new(false),
            probe_now: tokio::sync::Notify::new(),
            last_error: Mutex::new(None),
            users: Mutex::default(),
        }))
    }

    /// The policies using the store (snapshot compile): `(name,
    /// on_store_error)`, and their `portcullis_rate_limit_store_up` gauges.
    pub fn set_users(&self, policies: &[(&str, OnStoreError)], up_gauges: Vec<Gauge>) {
        let names = policies
            .iter()
            .map(|(name, on_error)| format!("{name} (on_store_error: {})", on_error.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let up = if self.is_up() { 1.0 } else { 0.0 };
        for g in &up_gauges {
            g.set(up);
        }
        *lock(&self.users) = Users { names, up_gauges };
    }

    /// Moves to `state`; true when that is a change.
    fn set_state(&self, state: u8) -> bool {
        let changed = self.state.swap(state, Ordering::Relaxed) != state;
        if changed {
            let up = if state == UP { 1.0 } else { 0.0 };
            for g in &lock(&self.users).up_gauges {
                g.set(up);
            }
        }
        changed
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    /// `up`, `down` or `connecting`.
    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            UP => "up",
            DOWN => "down",
            _ => "connecting",
        }
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// One GCRA step on `key` in Redis, waiting at most `timeout`.
    pub async fn take(
        &self,
        key: &[u8],
        interval_us: u64,
        burst: u64,
        want: u64,
        timeout: Duration,
    ) -> Result<Grant, StoreError> {
        let mut conn = {
            let connections = self.connections.load();
            let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len().max(1);
            match connections.get(i) {
                Some(c) => c.clone(),
                None => return Err(StoreError::Failed("not connected".into())),
            }
        };
        let mut call = GCRA.key(key);
        call.arg(interval_us).arg(burst).arg(want);
        let answer = tokio::time::timeout(
            timeout,
            call.invoke_async::<(i64, i64, i64, i64)>(&mut conn),
        )
        .await;
        let (granted, remaining, full_us, retry_us) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error() =>
            {
                return Err(StoreError::Failed(e.to_string()))
            }
            Ok(Err(e)) => return Err(StoreError::Answered(e.to_string())),
            Err(_) => return Err(StoreError::Late(timeout)),
        };
        // Read first: most calls find it 0 and write nothing.
        if self.late_in_a_row.load(Ordering::Relaxed) != 0 {
            self.late_in_a_row.store(0, Ordering::Relaxed);
        }
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(Grant {
            granted: u64::try_from(granted).unwrap_or(0),
            remaining: u64::try_from(remaining).unwrap_or(0),
            full_in: us(full_us),
            retry_in: us(retry_us),
        })
    }

    /// A check could not use Redis (`error`), or skipped it while the store
    /// is not up (`None`). An error marks the store down, and so do
    /// [`LATE_IN_A_ROW`] late answers; the outage is logged at most once
    /// per [`LOG_EVERY`].
    pub fn failed(&self, error: Option<&StoreError>) {
        self.fell_back.fetch_add(1, Ordering::Relaxed);
        let why = match error {
            None => return,
            Some(StoreError::Late(t)) => {
                let late = self.late_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if late < LATE_IN_A_ROW {
                    return;
                }
                format!(
                    "{late} checks in a row without an answer within {} µs",
                    t.as_micros()
                )
            }
            Some(StoreError::Failed(e)) => e.clone(),
            Some(StoreError::Answered(e)) => {
                *lock(&self.last_error) = Some(e.clone());
                if self.log_gate() {
                    tracing::warn!(
                        store = %self.url,
                        error = %e,
                        "rate-limit store {} answered a check with an error ({e}); such checks fall back: {}",
                        self.url,
                        lock(&self.users).names,
                    );
                }
                return;
            }
        };
        if self.is_up() && self.set_state(DOWN) {
            *lock(&self.last_error) = Some(why);
            self.log_down();
            self.probe_now.notify_one();
        }
    }

    /// True at most once per [`LOG_EVERY`]: whether to write a line now.
    fn log_gate(&self) -> bool {
        let now = self.clock.now_ms() + 1;
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < crate::clock::millis(LOG_EVERY) {
            return false;
        }
        self.logged_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Writes the outage line, unless a line was written within
    /// [`LOG_EVERY`].
    fn log_down(&self) {
        if !self.log_gate() {
            return;
        }
        self.announced.store(true, Ordering::Relaxed);
        let fell_back = self.fell_back.swap(0, Ordering::Relaxed);
        tracing::warn!(
            store = %self.url,
            error = self.last_error().unwrap_or_default(),
            checks_fell_back = fell_back,
            "rate-limit store {} is unavailable ({}); its policies fall back: {}",
            self.url,
            self.last_error().unwrap_or_default(),
            lock(&self.users).names,
        );
    }

    /// Starts the probe on the Redis thread (or, failing that, on the
    /// current runtime); aborting the handle stops it.
    pub fn start_probe(self: &Arc<RedisStore>) -> Option<tokio::task::AbortHandle> {
        let probe = self.clone().probe_forever();
        match io_runtime() {
            Some(rt) => Some(rt.spawn(probe).abort_handle()),
            None => tokio::runtime::Handle::try_current()
                .ok()
                .map(|rt| rt.spawn(probe).abort_handle()),
        }
    }

    /// Probes the store until the task is aborted: marks it up or down.
    /// A failed PING drops the connections and the next probe connects
    /// anew (a peer that vanished without closing never errors, and a
    /// connection whose AUTH failed would never try a fixed password).
    async fn probe_forever(self: Arc<RedisStore>) {
        loop {
            let result = self.ping().await;
            match result {
                Ok(()) => {
                    let was = self.state.load(Ordering::Relaxed);
                    self.late_in_a_row.store(0, Ordering::Relaxed);
                    // Told at start, and after an outage that was told:
                    // a store flapping under load writes at most two
                    // lines per LOG_EVERY.
                    if self.set_state(UP)
                        && (was == CONNECTING || self.announced.swap(false, Ordering::Relaxed))
                    {
                        let fell_back = self.fell_back.swap(0, Ordering::Relaxed);
                        tracing::info!(
                            store = %self.url,
                            checks_fell_back = fell_back,
                            "rate-limit store {} is up; shared limits in force for {}",
                            self.url,
                            lock(&self.users).names,
                        );
                    }
                }
                Err(e) => {
                    *lock(&self.last_error) = Some(e);
                    self.set_state(DOWN);
                    self.connections.store(Arc::new(Vec::new()));
                    // The first line of an outage, then a summary per
                    // LOG_EVERY while it lasts.
                    self.log_down();
                }
            }
            let every = if self.is_up() { PROBE_UP } else { PROBE_DOWN };
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.probe_now.notified() => {}
            }
        }
    }

    /// PING on every connection, after connecting when there are none.
    async fn ping(&self) -> Result<(), String> {
        let mut connections = self.connections.load_full();
        if connections.is_empty() {
            connections = Arc::new(self.connect().await?);
            self.connections.store(connections.clone());
        }
        for conn in connections.iter() {
            let mut conn = conn.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    return Err(format!(
                        "no answer to PING within {} ms",
                        PROBE_TIMEOUT.as_millis()
                    ))
                }
            }
        }
        Ok(())
    }
}

impl RedisStore {
    /// [`CONNECTIONS`] new connections, with the script loaded (so the
    /// first checks need no second round trip).
    async fn connect(&self) -> Result<Vec<MultiplexedConnection>, String> {
        // No response timeout here: each check has its own.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(None);
        let mut connections = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let connect = self
                .client
                .get_multiplexed_async_connection_with_config(&config);
            let mut conn = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    return Err(format!(
                        "no connection within {} ms",
                        PROBE_TIMEOUT.as_millis()
                    ))
                }
            };
            let load = GCRA.load_async(&mut conn);
            match tokio::time::timeout(PROBE_TIMEOUT, load).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("loading the script: {e}")),
                Err(_) => return Err("no answer to SCRIPT LOAD".into()),
            }
            connections.push(conn);
        }
        Ok(connections)
    }
}

/// The thread every store's connections live on: a one-thread runtime of
/// their own, so answers are read off the sockets while the gateway's
/// workers are busy. `None` if the thread cannot be made (the stores then
/// run on the gateway's runtime).
fn io_runtime() -> Option<tokio::runtime::Handle> {
    static IO: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    IO.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("portcullis-redis".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .ok()?;
        Some(handle)
    })
    .clone()
}
