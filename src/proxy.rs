//! Header hygiene (pipeline steps 1, 4 and 6): the request id on the way
//! in, hop-by-hop removal and the gateway's own fields (`x-request-id`,
//! `traceparent`, `X-Forwarded-*`) towards the upstream, hop-by-hop
//! removal and the gateway's own response fields on the way back.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::Entry;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::HeaderMap;

use crate::config::Cidr;
use crate::limits::rate::{RATELIMIT, RATELIMIT_POLICY};
use crate::telemetry::Exchange;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The verified mTLS client certificate's subject; only the gateway sets it.
pub static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the legacy ones proxies traditionally drop.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// The lengths of [`HOP_BY_HOP`]'s names, one bit each: a name of another
/// length (most: `host`, `date`, `content-type`) is passed over without
/// comparing it to the nine (~90 instructions a name, callgrind).
const HOP_BY_HOP_LENGTHS: u32 = lengths(&[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
]);

/// A bit for each length of `names` (all shorter than 32 bytes).
const fn lengths(names: &[&str]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < names.len() {
        mask |= 1 << names[i].len();
        i += 1;
    }
    mask
}

/// Whether a name of `name`'s length is in `mask` ([`lengths`]).
#[inline]
fn length_in(mask: u32, name: &HeaderName) -> bool {
    let len = name.as_str().len();
    len < 32 && mask & (1 << len) != 0
}

/// A header named like the `close` connection option (RFC 9110 reserves
/// the name); removed when `Connection: close` names it.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// Which of [`HOP_BY_HOP`] `headers` carries, one bit each.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        // Standard names compare as enums: cheaper than hashing each of
        // the nine for a message that carries none.
        if length_in(HOP_BY_HOP_LENGTHS, name) {
            if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                present |= 1 << i;
            }
        }
    }
    present
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
///
/// Run it on a request before the gateway sets any header of its own: a
/// client naming `x-request-id` or `x-client-cert-subject` in `Connection`
/// must not remove what the gateway puts there.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    // `Connection` is HOP_BY_HOP[0].
    if present & 1 != 0 {
        // Bytes, not text: one odd byte in the value must not hide the
        // valid names beside it. The usual values, `keep-alive` and
        // `close`, cost no allocation: keep-alive is in HOP_BY_HOP.
        let mut close = false;
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                let is_close = t.eq_ignore_ascii_case(b"close");
                close |= is_close;
                !is_close && !t.eq_ignore_ascii_case(b"keep-alive")
            })
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        if close {
            headers.remove(&CLOSE);
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The client's address for `ip` keys: the TCP peer, unless the peer is a
/// trusted proxy; then `X-Forwarded-For` is read from the right, each
/// trusted hop naming the one before it, and the first untrusted address is
/// the client. Entries a client wrote itself (left of the first untrusted
/// one) are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = line.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip) {
                        return client;
                    }
                }
                // Garbage (or a port, or `unknown`): stop at what we know.
                Err(_) => return client,
            }
        }
    }
    client
}

/// Replaces any client-sent `x-client-cert-subject` with the subject of the
/// certificate this connection verified (or with nothing), so routes and
/// upstreams can trust it.
pub fn set_client_cert_subject(headers: &mut HeaderMap, subject: Option<&HeaderValue>) {
    match subject {
        Some(s) => {
            headers.insert(X_CLIENT_CERT_SUBJECT.clone(), s.clone());
        }
        None => {
            headers.remove(&X_CLIENT_CERT_SUBJECT);
        }
    }
}

/// The fields the gateway sets on every request it forwards: `x-request-id`,
/// `traceparent` when it starts the trace, and `X-Forwarded-For`/`-Proto`/
/// `-Host`. They are kept beside the request's header map and written
/// straight into the upstream head ([`Forwarded::write`], called by
/// `upstream::h1::encode_head`): inserting five fields into the map only
/// to read them back out cost ~2,000 instructions a request (8%, callgrind).
///
/// Making one takes the client's own copies out of the map, so the
/// upstream sees only the gateway's; routing and rate-limit keys, which
/// run before, see the request as the client sent it.
#[derive(Debug, Clone)]
pub struct Forwarded {
    request_id: HeaderValue,
    /// A new trace; `None` when the client's valid `traceparent` (left in
    /// the map) goes on.
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
    /// The peer, when the client sent no `X-Forwarded-For`; otherwise the
    /// peer is appended to the client's list in the map.
    forwarded_for: Option<HeaderValue>,
    proto: &'static str,
    /// The host the client asked for.
    host: Option<HeaderValue>,
}

impl Forwarded {
    /// Prepares a client request for the upstream (its hop-by-hop headers
    /// are gone already: [`remove_hop_by_hop`] runs first).
    ///
    /// `host` is the host the client asked for (`Host` or HTTP/2
    /// `:authority`); it is kept as the upstream's `Host` and reported in
    /// `X-Forwarded-Host`.
    ///
    /// `peer` is the TCP peer's address as [`ip_header`] wrote it (once per
    /// connection: formatting an address per request was 3% of a request's
    /// instructions).
    pub fn new(
        headers: &mut HeaderMap,
        request_id: HeaderValue,
        peer: &HeaderValue,
        host: Option<&HeaderValue>,
        proto: &'static str,
    ) -> Forwarded {
        let sent = client_sent(headers);
        for (bit, name) in [
            (SENT_REQUEST_ID, &X_REQUEST_ID),
            (SENT_FORWARDED_PROTO, &X_FORWARDED_PROTO),
            (SENT_FORWARDED_HOST, &X_FORWARDED_HOST),
        ] {
            if sent & bit != 0 {
                headers.remove(name);
            }
        }
        let traceparent = if sent & SENT_TRACEPARENT != 0 && kept_traceparent(headers) {
            None
        } else {
            Some(new_traceparent())
        };
        let forwarded_for = if sent & SENT_FORWARDED_FOR != 0 {
            append_forwarded_for(headers, peer);
            None
        } else {
            Some(peer.clone())
        };
        if let Some(host) = host {
            if !headers.contains_key(HOST) {
                headers.insert(HOST, host.clone());
            }
        }
        Forwarded {
            request_id,
            traceparent,
            forwarded_for,
            proto,
            host: host.cloned(),
        }
    }

    /// Writes the fields as `name: value` lines of an HTTP/1.1 head.
    pub fn write(&self, out: &mut BytesMut) {
        field(out, b"x-request-id: ", self.request_id.as_bytes());
        if let Some(t) = &self.traceparent {
            field(out, b"traceparent: ", t);
        }
        if let Some(peer) = &self.forwarded_for {
            field(out, b"x-forwarded-for: ", peer.as_bytes());
        }
        field(out, b"x-forwarded-proto: ", self.proto.as_bytes());
        if let Some(host) = &self.host {
            field(out, b"x-forwarded-host: ", host.as_bytes());
        }
    }
}

/// One line of a head: `name_colon` is the name, `:` and a space.
#[inline]
fn field(out: &mut BytesMut, name_colon: &[u8], value: &[u8]) {
    out.extend_from_slice(name_colon);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Which upstream answered (`server.upstream_header`).
static X_PORTCULLIS_UPSTREAM: HeaderName = HeaderName::from_static("x-portcullis-upstream");
/// Tries sent upstream (the upstream's `retry.attempts_header`).
static X_PORTCULLIS_ATTEMPTS: HeaderName = HeaderName::from_static("x-portcullis-attempts");

/// The gateway's own fields on a response (pipeline step 6): `x-request-id`
/// always; `x-portcullis-upstream`, `x-portcullis-attempts`, the
/// deprecation fields and the `RateLimit` pair when the route and upstream
/// ask for them. Like [`Forwarded`] on the way in, they stay out of the
/// response's map: the native HTTP/1.1 server writes them straight into
/// the head ([`ResponseFields::write`]) in place of the upstream's copies
/// ([`ResponseFields::replaces`]); hyper's servers get them in the map
/// ([`ResponseFields::insert`]). Building the `RateLimit` values and
/// inserting them was ~1,200 instructions a limited request (callgrind).
pub struct ResponseFields<'a> {
    exchange: &'a Exchange,
}

/// The lengths of every name [`ResponseFields`] may write ([`lengths`]).
const RESPONSE_FIELD_LENGTHS: u32 = lengths(&[
    "x-request-id",
    "x-portcullis-upstream",
    "x-portcullis-attempts",
    "ratelimit",
    "ratelimit-policy",
    "deprecation",
    "sunset",
    "link",
]);

impl<'a> ResponseFields<'a> {
    pub fn new(exchange: &'a Exchange) -> ResponseFields<'a> {
        ResponseFields { exchange }
    }

    /// Whether the gateway writes a field named `name`: the upstream's
    /// copy is left out. Most names differ in length from all of ours.
    #[inline]
    pub fn replaces(&self, name: &HeaderName) -> bool {
        if !length_in(RESPONSE_FIELD_LENGTHS, name) {
            return false;
        }
        let e = self.exchange;
        *name == X_REQUEST_ID
            || (e.upstream_header.is_some() && *name == X_PORTCULLIS_UPSTREAM)
            || (e.attempts_header && *name == X_PORTCULLIS_ATTEMPTS)
            || (e.rate.is_some() && (*name == RATELIMIT || *name == RATELIMIT_POLICY))
            || e.deprecation
                .as_ref()
                .is_some_and(|d| d.headers.iter().any(|(n, _)| n == name))
    }

    /// Writes the fields as `name: value` lines of an HTTP/1.1 head.
    pub fn write(&self, out: &mut BytesMut) {
        let e = self.exchange;
        field(out, b"x-request-id: ", e.request_id.as_bytes());
        if let Some(name) = &e.upstream_header {
            field(out, b"x-portcullis-upstream: ", name.as_bytes());
        }
        if e.attempts_header {
            let mut attempts = itoa::Buffer::new();
            field(
                out,
                b"x-portcullis-attempts: ",
                attempts.format(e.attempts).as_bytes(),
            );
        }
        if let Some(d) = &e.deprecation {
            for (name, value) in &d.headers {
                out.extend_from_slice(name.as_str().as_bytes());
                field(out, b": ", value.as_bytes());
            }
        }
        if let Some((policy, decision)) = &e.rate {
            policy.write_fields(decision, out);
        }
    }

    /// Sets the fields in `headers`, replacing the upstream's copies.
    pub fn insert(&self, headers: &mut HeaderMap) {
        let e = self.exchange;
        headers.insert(X_REQUEST_ID.clone(), e.request_id.clone());
        if let Some(name) = &e.upstream_header {
            headers.insert(X_PORTCULLIS_UPSTREAM.clone(), name.clone());
        }
        if e.attempts_header {
            headers.insert(X_PORTCULLIS_ATTEMPTS.clone(), e.attempts.into());
        }
        if let Some(d) = &e.deprecation {
            for (name, value) in &d.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Some((policy, decision)) = &e.rate {
            policy.insert_fields(decision, headers);
        }
    }
}

/// The gateway's own fields, in [`Forwarded::write`]'s order.
static GATEWAY_FIELDS: [&HeaderName; 5] = [
    &X_REQUEST_ID,
    &TRACEPARENT,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
];

/// [`client_sent`]'s bits, one per [`GATEWAY_FIELDS`] entry, in order.
const SENT_REQUEST_ID: u8 = 1;
const SENT_TRACEPARENT: u8 = 1 << 1;
const SENT_FORWARDED_FOR: u8 = 1 << 2;
const SENT_FORWARDED_PROTO: u8 = 1 << 3;
const SENT_FORWARDED_HOST: u8 = 1 << 4;

/// The lengths of [`GATEWAY_FIELDS`]' names ([`lengths`]).
const GATEWAY_FIELD_LENGTHS: u32 = lengths(&[
    "x-request-id",
    "traceparent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
]);

/// Which of [`GATEWAY_FIELDS`] the client sent, one bit each: one pass
/// over the names, as most requests carry none, and a hashed lookup for
/// each of the five cost ~1,000 instructions (callgrind).
fn client_sent(headers: &HeaderMap) -> u8 {
    let mut sent = 0u8;
    for name in headers.keys() {
        if length_in(GATEWAY_FIELD_LENGTHS, name) {
            if let Some(i) = GATEWAY_FIELDS.iter().position(|g| *g == name) {
                sent |= 1 << i;
            }
        }
    }
    sent
}

/// Appends the peer to `X-Forwarded-For`, folding every line the client
/// sent into one, in order: the upstream must see the same hops
/// [`client_ip`] read.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    // One lookup for the usual case of no header yet.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
        Entry::Occupied(mut e) => {
            let mut v = Vec::with_capacity(64);
            for line in e
                .iter()
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
            {
                v.extend_from_slice(line);
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(peer.as_bytes());
            match HeaderValue::from_bytes(&v) {
                // Replaces every line.
                Ok(v) => {
                    e.insert(v);
                }
                Err(_) => {
                    e.remove();
                }
            }
        }
    }
}

/// An address as a header value (`X-Forwarded-For`): `192.0.2.1`, `2001:db8::1`.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The request id: the client's `x-request-id` if it is sane (1–128 visible
/// ASCII characters), else a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    // Owned by its `Bytes` from the start: the id is cloned into the
    // upstream request, the access log and the response, and a value made
    // by `from_bytes` allocates again on its first clone.
    let id = bytes::Bytes::from_owner(hex::<32>(fastrand::u128(..)));
    HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("-"))
}

/// `traceparent`'s length: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// Whether the client's `traceparent` is valid and goes on; an invalid
/// one is removed. Two lines are invalid, as the W3C test suite has it
/// (`test_traceparent_duplicated`): the trace starts again.
fn kept_traceparent(headers: &mut HeaderMap) -> bool {
    let mut lines = headers.get_all(&TRACEPARENT).iter();
    if let (Some(v), None) = (lines.next(), lines.next()) {
        if valid_traceparent(v.as_bytes()) {
            return true;
        }
    }
    headers.remove(&TRACEPARENT);
    false
}

/// A new trace, not sampled: the sampling decision belongs to the first
/// real tracer.
fn new_traceparent() -> [u8; TRACEPARENT_LEN] {
    // Not all zero (invalid): `max(1)` is cheaper than a ranged draw.
    let trace = hex::<32>(fastrand::u128(..).max(1));
    let span = hex::<16>(u128::from(fastrand::u64(..).max(1)));
    let mut v = [0u8; TRACEPARENT_LEN];
    v[..3].copy_from_slice(b"00-");
    v[3..35].copy_from_slice(&trace);
    v[35] = b'-';
    v[36..52].copy_from_slice(&span);
    v[52..].copy_from_slice(b"-00");
    v
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero
/// (W3C Trace Context §3.2); lower-case hex only.
pub fn valid_traceparent(v: &[u8]) -> bool {
    let is_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let non_zero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    v.len() == TRACEPARENT_LEN
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && is_hex(&v[..2])
        && &v[..2] != b"ff"
        && is_hex(&v[3..35])
        && non_zero(&v[3..35])
        && is_hex(&v[36..52])
        && non_zero(&v[36..52])
        && is_hex(&v[53..55])
}

/// The low `N` hex digits of `n`, lower case.
fn hex<const N: usize>(n: u128) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    const { assert!(N.is_multiple_of(2) && N <= 32) };
    // Byte by byte, not shift by shift: u128 shifts cost ~180
    // instructions an id.
    let bytes = n.to_be_bytes();
    let mut out = [0u8; N];
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[16 - N / 2..]) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gateway_field_has_its_bit() {
        let bits = [
            SENT_REQUEST_ID,
            SENT_TRACEPARENT,
            SENT_FORWARDED_FOR,
            SENT_FORWARDED_PROTO,
            SENT_FORWARDED_HOST,
        ];
        for (name, bit) in GATEWAY_FIELDS.iter().zip(bits) {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("a"));
            h.insert(*name, HeaderValue::from_static("1"));
            assert_eq!(client_sent(&h), bit, "{name}");
        }
    }

    #[test]
    fn length_masks_cover_their_names() {
        for name in &HOP_BY_HOP {
            assert!(length_in(HOP_BY_HOP_LENGTHS, name), "{name}");
        }
        for name in GATEWAY_FIELDS {
            assert!(length_in(GATEWAY_FIELD_LENGTHS, name), "{name}");
        }
        let deprecation = crate::routing::version::Deprecation::new(
            &crate::config::DeprecationConfig {
                since: Some(crate::config::Timestamp(1)),
                sunset: Some(crate::config::Timestamp(2)),
                link: Some("https://example.com/v2".into()),
            },
            metrics::Counter::noop(),
        );
        for name in [
            &X_REQUEST_ID,
            &X_PORTCULLIS_UPSTREAM,
            &X_PORTCULLIS_ATTEMPTS,
        ]
        .into_iter()
        .chain([&RATELIMIT, &RATELIMIT_POLICY])
        .chain(deprecation.headers.iter().map(|(n, _)| n))
        {
            assert!(length_in(RESPONSE_FIELD_LENGTHS, name), "{name}");
        }
        assert!(!length_in(HOP_BY_HOP_LENGTHS, &HOST));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
        // A byte outside ASCII in the value hides none of the names beside
        // it (found by fuzz/header_hygiene).
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b"\xff-, x-b").unwrap());
        h.insert("x-b", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // The usual values, any case, with the names they carry.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("CLOSE"));
        h.append(CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    /// What `f` writes into an upstream head.
    fn written(f: &Forwarded) -> String {
        let mut out = BytesMut::new();
        f.write(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(""));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.com"));
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let host = HeaderValue::from_static("a.com");
        let peer = ip_header("10.0.0.1".parse().unwrap());
        let id = HeaderValue::from_static("id-1");
        let f = Forwarded::new(&mut h, id, &peer, Some(&host), "http");
        // Every line, in order (fuzz/header_hygiene found later lines lost).
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["host"], "a.com");
        // The client's copies of the gateway's fields are gone.
        for name in ["x-forwarded-proto", "x-forwarded-host", "x-request-id"] {
            assert!(!h.contains_key(name), "{name} survived: {h:?}");
        }
        let w = written(&f);
        let lines: Vec<&str> = w.split_terminator("\r\n").collect();
        assert_eq!(lines[0], "x-request-id: id-1");
        assert!(lines[1].starts_with("traceparent: 00-"), "{w}");
        assert_eq!(
            lines[2..],
            ["x-forwarded-proto: http", "x-forwarded-host: a.com"]
        );

        // No list from the client: the peer is the list.
        let mut h = HeaderMap::new();
        let f = Forwarded::new(&mut h, HeaderValue::from_static("i"), &peer, None, "https");
        assert!(h.is_empty(), "{h:?}");
        let w = written(&f);
        assert!(
            w.contains("\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\n"),
            "{w}"
        );
        assert!(!w.contains("x-forwarded-host"), "{w}");
    }

    #[test]
    fn client_ip_believes_only_trusted_hops() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.9"),
        );
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &h, &[]),
            peer,
            "no trusted proxies: the peer"
        );
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &h, &trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn hex_digits_are_the_low_ones_in_order() {
        let n = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(&hex::<32>(n), b"0123456789abcdeffedcba9876543210");
        assert_eq!(&hex::<16>(n), b"fedcba9876543210");
        assert_eq!(&hex::<2>(0xa5), b"a5");
    }

    #[test]
    fn request_ids_and_traceparents() {
        let mut h = HeaderMap::new();
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");

        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(good.as_bytes()));
        let peer = ip_header("10.0.0.1".parse().unwrap());
        let forward = |h: &mut HeaderMap| Forwarded::new(h, id.clone(), &peer, None, "http");
        // A valid one goes on as the client sent it, in the map.
        h.insert(&TRACEPARENT, HeaderValue::from_static(good));
        let f = forward(&mut h);
        assert_eq!(h[&TRACEPARENT], good);
        assert!(!written(&f).contains("traceparent"));
        // Two lines, even both valid, start a new trace.
        h.append(&TRACEPARENT, HeaderValue::from_static(good));
        let f = forward(&mut h);
        assert!(!h.contains_key(&TRACEPARENT));
        assert!(written(&f).contains("traceparent: 00-"));
        // An invalid one is replaced by a new trace.
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        h.insert(&TRACEPARENT, HeaderValue::from_static(zero));
        let f = forward(&mut h);
        assert!(!h.contains_key(&TRACEPARENT));
        let w = written(&f);
        let created = w
            .lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .unwrap()
            .trim_end();
        assert!(valid_traceparent(created.as_bytes()), "{created:?}");
    }
}
