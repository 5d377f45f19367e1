//! Header hygiene (src/proxy.rs): fuzzed header lists through
//! `remove_hop_by_hop`, `to_upstream`, `set_client_cert_subject`,
//! `request_id`, `ensure_traceparent`, `valid_traceparent` and `client_ip`
//! (with `config::Cidr` trusted-proxy lists), asserting what their doc
//! comments promise; then the same calls in the order `src/pipeline.rs`
//! makes them, asserting that the headers the gateway sets itself reach the
//! upstream.
//!
//! Input: lines (`\n`):
//!   0 TCP peer address (bad: 10.0.0.1), 1 `https` or anything (http),
//!   2 the client's host value (empty: none), 3 one more trusted block for
//!   `Cidr::parse`, 4 a verified client-certificate subject (empty: none),
//!   then `name: value` header lines (invalid names or values are skipped).

#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use portcullis::config::Cidr;
use portcullis::proxy;

/// RFC 9110 §7.6.1 plus the legacy ones `proxy.rs` lists.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn trusted() -> &'static [Cidr] {
    static T: OnceLock<Vec<Cidr>> = OnceLock::new();
    T.get_or_init(|| {
        [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "fd00::/8",
            "127.0.0.1",
            "::1/128",
        ]
        .iter()
        .map(|c| Cidr::parse(c).unwrap())
        .collect()
    })
}

/// Every header name a `Connection` line lists (tokens separated by commas,
/// optional whitespace around them), whatever else the line holds.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// What `to_upstream` sets itself after removing hop-by-hop headers.
const SET_BY_TO_UPSTREAM: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "host",
];

fn assert_no_hop_by_hop(after: &HeaderMap, named: &[HeaderName], what: &str) {
    for h in HOP_BY_HOP {
        assert!(
            !after.contains_key(h),
            "{what}: hop-by-hop `{h}` survived: {after:?}"
        );
    }
    for n in named {
        if what == "to_upstream" && SET_BY_TO_UPSTREAM.contains(&n.as_str()) {
            continue;
        }
        assert!(
            !after.contains_key(n),
            "{what}: `{n}` is named in Connection but survived: {after:?}"
        );
    }
}

/// A `client_ip` answer is the peer or an `X-Forwarded-For` entry every
/// entry right of which is a trusted address ("entries a client wrote
/// itself are never believed"); the peer itself must be trusted for any
/// entry to count.
fn check_client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) {
    let got = proxy::client_ip(peer, headers, trusted);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        assert_eq!(
            got, peer,
            "untrusted peer, yet X-Forwarded-For was believed"
        );
        return;
    }
    if got == peer {
        return;
    }
    // Lines left of one that is not visible ASCII are never reached.
    let lines: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    let start = lines
        .iter()
        .rposition(|l| l.to_str().is_err())
        .map_or(0, |i| i + 1);
    let entries: Vec<&str> = lines[start..]
        .iter()
        .flat_map(|l| l.to_str().unwrap().split(','))
        .map(str::trim)
        .collect();
    let ok = entries.iter().enumerate().any(|(i, e)| {
        e.parse::<IpAddr>() == Ok(got)
            && entries[i + 1..]
                .iter()
                .all(|r| r.parse::<IpAddr>().is_ok_and(is_trusted))
    });
    assert!(
        ok,
        "client_ip believed {got} from {entries:?} (peer {peer}): an entry a client wrote"
    );
}

/// The reference for `valid_traceparent`: W3C Trace Context §3.2 as its
/// doc comment states it.
fn traceparent_reference(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let parts: Vec<&[u8]> = v.split(|b| *b == b'-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        return false;
    };
    version.len() == 2
        && hex(version)
        && version != b"ff"
        && trace.len() == 32
        && hex(trace)
        && trace.iter().any(|c| *c != b'0')
        && parent.len() == 16
        && hex(parent)
        && parent.iter().any(|c| *c != b'0')
        && flags.len() == 2
        && hex(flags)
}

fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let mut next = || lines.next().unwrap_or_default();
    let peer: IpAddr = std::str::from_utf8(next())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(IpAddr::from([10, 0, 0, 1]));
    let proto: &'static str = if next() == b"https" { "https" } else { "http" };
    let host = match next() {
        b"" => None,
        h => HeaderValue::from_bytes(h).ok(),
    };
    let mut trusted_list: Vec<Cidr> = trusted().to_vec();
    let extra = String::from_utf8_lossy(next()).into_owned();
    if let Ok(c) = Cidr::parse(&extra) {
        let max = if c.addr.is_ipv4() { 32 } else { 128 };
        assert!(c.prefix <= max, "Cidr::parse({extra:?}) gave /{}", c.prefix);
        assert!(
            c.contains(c.addr),
            "{extra:?} does not contain its own address"
        );
        trusted_list.push(c);
    }
    let subject = match next() {
        b"" => None,
        s => HeaderValue::from_bytes(s).ok(),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        headers.append(name, value);
    }

    // valid_traceparent: the documented grammar, on every value seen.
    for v in headers.values() {
        assert_eq!(
            proxy::valid_traceparent(v.as_bytes()),
            traceparent_reference(v.as_bytes()),
            "valid_traceparent({:?})",
            String::from_utf8_lossy(v.as_bytes())
        );
    }

    // client_ip, with and without trusted proxies.
    check_client_ip(peer, &headers, &trusted_list);
    check_client_ip(peer, &headers, &[]);

    // request_id: the client's if sane (1–128 visible ASCII), else a new one;
    // always sane.
    let id = proxy::request_id(&headers);
    assert!(sane_request_id(id.as_bytes()), "request_id gave {id:?}");
    if let Some(sent) = headers.get(&proxy::X_REQUEST_ID) {
        if sane_request_id(sent.as_bytes()) {
            assert_eq!(&id, sent, "a sane client request id was replaced");
        } else {
            assert_ne!(&id, sent, "an insane client request id was kept");
        }
    }

    // remove_hop_by_hop.
    let named = connection_named(&headers);
    let mut stripped = headers.clone();
    proxy::remove_hop_by_hop(&mut stripped);
    assert_no_hop_by_hop(&stripped, &named, "remove_hop_by_hop");
    // Only hop-by-hop and Connection-named headers go.
    for (k, v) in headers.iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) && !named.contains(k) {
            assert!(
                stripped.get_all(k).iter().any(|x| x == v),
                "remove_hop_by_hop dropped end-to-end `{k}: {v:?}`"
            );
        }
    }

    // ensure_traceparent: a valid one is kept, anything else replaced by a
    // valid one.
    let mut traced = stripped.clone();
    let before = traced.get(&proxy::TRACEPARENT).cloned();
    proxy::ensure_traceparent(&mut traced);
    let after = traced
        .get(&proxy::TRACEPARENT)
        .expect("no traceparent after ensure_traceparent");
    assert!(
        proxy::valid_traceparent(after.as_bytes()),
        "created {after:?}"
    );
    if let Some(b) = before.filter(|b| proxy::valid_traceparent(b.as_bytes())) {
        assert_eq!(after, &b, "a valid traceparent was replaced");
    }

    // set_client_cert_subject: only the gateway's value reaches upstreams.
    let mut with_subject = headers.clone();
    proxy::set_client_cert_subject(&mut with_subject, subject.as_ref());
    let seen: Vec<&HeaderValue> = with_subject
        .get_all(&proxy::X_CLIENT_CERT_SUBJECT)
        .iter()
        .collect();
    match &subject {
        Some(s) => assert_eq!(seen, vec![s], "client-sent x-client-cert-subject survived"),
        None => assert!(
            seen.is_empty(),
            "client-sent x-client-cert-subject survived"
        ),
    }

    // The request path in src/pipeline.rs order: hop-by-hop headers out,
    // request id, verified client certificate, (JWT claims), traceparent,
    // then to_upstream. What the gateway itself set must reach the upstream
    // whatever the client's Connection header names (else a client can
    // strip the gateway's identity and trace headers: "Connection:
    // x-client-cert-subject", fixed by removing hop-by-hop headers first).
    let mut piped = stripped.clone();
    piped.insert(proxy::X_REQUEST_ID.clone(), id.clone());
    proxy::set_client_cert_subject(&mut piped, subject.as_ref());
    proxy::ensure_traceparent(&mut piped);
    let trace = piped.get(&proxy::TRACEPARENT).cloned();
    proxy::to_upstream(&mut piped, &proxy::ip_header(peer), host.as_ref(), proto);
    assert_eq!(
        piped.get(&proxy::X_REQUEST_ID),
        Some(&id),
        "the gateway's x-request-id did not reach the upstream"
    );
    assert_eq!(
        piped.get(&proxy::TRACEPARENT),
        trace.as_ref(),
        "the gateway's traceparent did not reach the upstream"
    );
    assert_eq!(
        piped.get(&proxy::X_CLIENT_CERT_SUBJECT),
        subject.as_ref(),
        "x-client-cert-subject is not the verified certificate's"
    );

    // to_upstream (on a request whose hop-by-hop headers are gone, as in
    // the pipeline).
    let mut up = stripped.clone();
    proxy::to_upstream(&mut up, &proxy::ip_header(peer), host.as_ref(), proto);
    assert_no_hop_by_hop(&up, &named, "to_upstream");
    let protos: Vec<&HeaderValue> = up.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(protos, vec![proto], "x-forwarded-proto");
    if let Some(h) = &host {
        let fh: Vec<&HeaderValue> = up.get_all("x-forwarded-host").iter().collect();
        assert_eq!(fh, vec![h], "x-forwarded-host");
        // The upstream's Host: the client's (kept when the request has one).
        let had_host = stripped.get(HOST).cloned();
        assert_eq!(up.get(HOST), Some(had_host.as_ref().unwrap_or(h)), "Host");
    }
    // X-Forwarded-For: one line; what the client's lines said, folded in
    // order ("several X-Forwarded-For lines are folded into one"), then the
    // peer.
    let xff: Vec<&HeaderValue> = up.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "x-forwarded-for lines: {xff:?}");
    let peer_text = peer.to_string();
    let earlier: Vec<&[u8]> = stripped
        .get_all("x-forwarded-for")
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
        .collect();
    let mut want = earlier.join(&b", "[..]);
    if !want.is_empty() {
        want.extend_from_slice(b", ");
    }
    want.extend_from_slice(peer_text.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(xff[0].as_bytes()),
        String::from_utf8_lossy(&want),
        "x-forwarded-for does not carry every earlier hop, in order, then the peer"
    );
});
