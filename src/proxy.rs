//! Header hygiene (pipeline steps 1 and 6): request id and `traceparent` on
//! the way in, hop-by-hop removal and `X-Forwarded-*` towards the upstream,
//! hop-by-hop removal on the way back.

use std::net::IpAddr;

use http::header::Entry;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::HeaderMap;

use crate::config::Cidr;

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

/// A header named like the `close` connection option (RFC 9110 reserves
/// the name); removed when `Connection: close` names it.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// Which of [`HOP_BY_HOP`] `headers` carries, one bit each.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        // Standard names compare as enums: cheaper than hashing each of
        // the nine for a message that carries none.
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
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

/// Adds the forwarding headers to a client request for the upstream (its
/// hop-by-hop headers are gone already: [`remove_hop_by_hop`] runs first).
///
/// `host` is the host the client asked for (`Host` or HTTP/2 `:authority`);
/// it is kept as the upstream's `Host` and reported in `X-Forwarded-Host`.
///
/// `peer` is the TCP peer's address as [`ip_header`] wrote it (once per
/// connection: formatting an address per request was 3% of a request's
/// instructions).
pub fn to_upstream(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    host: Option<&HeaderValue>,
    proto: &'static str,
) {
    append_forwarded_for(headers, peer);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
    }
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

/// Keeps a valid W3C `traceparent`, or creates one (new trace, not sampled:
/// the sampling decision belongs to the first real tracer).
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers
        .get(&TRACEPARENT)
        .is_some_and(|v| valid_traceparent(v.as_bytes()))
    {
        return;
    }
    // Not all zero (invalid): `max(1)` is cheaper than a ranged draw.
    let trace = hex::<32>(fastrand::u128(..).max(1));
    let span = hex::<16>(u128::from(fastrand::u64(..).max(1)));
    let mut v = [0u8; 55];
    v[..3].copy_from_slice(b"00-");
    v[3..35].copy_from_slice(&trace);
    v[35] = b'-';
    v[36..52].copy_from_slice(&span);
    v[52..].copy_from_slice(b"-00");
    if let Ok(value) = HeaderValue::from_bytes(&v) {
        headers.insert(TRACEPARENT.clone(), value);
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero
/// (W3C Trace Context §3.2); lower-case hex only.
pub fn valid_traceparent(v: &[u8]) -> bool {
    let is_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let non_zero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    v.len() == 55
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

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(""));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        let host = HeaderValue::from_static("a.com");
        let peer = ip_header("10.0.0.1".parse().unwrap());
        to_upstream(&mut h, &peer, Some(&host), "http");
        // Every line, in order (fuzz/header_hygiene found later lines lost).
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.com");
        assert_eq!(h["host"], "a.com");
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
        h.insert(&TRACEPARENT, HeaderValue::from_static(good));
        ensure_traceparent(&mut h);
        assert_eq!(h[&TRACEPARENT], good);
        h.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        );
        ensure_traceparent(&mut h);
        let created = h[&TRACEPARENT].as_bytes().to_vec();
        assert!(
            valid_traceparent(&created),
            "{:?}",
            String::from_utf8_lossy(&created)
        );
    }
}
