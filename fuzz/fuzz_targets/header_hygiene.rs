//! Header hygiene (src/proxy.rs): fuzzed header lists through
//! `remove_hop_by_hop`, `set_client_cert_subject`, `request_id`,
//! `valid_traceparent` and `client_ip` (with `config::Cidr` trusted-proxy
//! lists), asserting what their doc comments promise; then the same calls
//! in the order `src/pipeline.rs` makes them, ending with `Forwarded::new`,
//! and the upstream head `upstream::h1::encode_head` writes is read back:
//! the headers the gateway sets itself reach the upstream, once, and no
//! client copy of them does.
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
use bytes::BytesMut;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::config::Cidr;
use portcullis::proxy;
use portcullis::upstream::h1::{self, RequestFraming};

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

/// What the gateway sets itself after removing hop-by-hop headers: a
/// client naming one in `Connection` does not keep it from the upstream.
const SET_BY_GATEWAY: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "host",
    "x-request-id",
    "traceparent",
    "x-client-cert-subject",
];

fn assert_no_hop_by_hop(after: &HeaderMap, named: &[HeaderName], what: &str) {
    for h in HOP_BY_HOP {
        assert!(
            !after.contains_key(h),
            "{what}: hop-by-hop `{h}` survived: {after:?}"
        );
    }
    for n in named {
        if what == "upstream head" && SET_BY_GATEWAY.contains(&n.as_str()) {
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

/// The header fields of the head `encode_head` writes for `headers` and
/// `forwarded`, as an upstream parses them.
fn upstream_sees(headers: &HeaderMap, forwarded: &proxy::Forwarded) -> HeaderMap {
    let mut out = BytesMut::new();
    h1::encode_head(
        &Method::GET,
        "/",
        headers,
        Some(forwarded),
        RequestFraming::Empty,
        &mut out,
    );
    let mut fields = vec![httparse::EMPTY_HEADER; headers.len() + 16];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) if n == out.len() => {}
        other => panic!(
            "the upstream head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    let mut seen = HeaderMap::new();
    for f in req.headers.iter() {
        seen.append(
            HeaderName::from_bytes(f.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(f.value).unwrap(),
        );
    }
    seen
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
    // request id, verified client certificate, (JWT claims), then
    // `Forwarded::new`; the head goes out through `encode_head`. What the
    // gateway set itself must reach the upstream whatever the client's
    // Connection header names (else a client can strip the gateway's
    // identity and trace headers: "Connection: x-client-cert-subject",
    // fixed by removing hop-by-hop headers first), and only once.
    let mut piped = stripped.clone();
    proxy::set_client_cert_subject(&mut piped, subject.as_ref());
    let sent_trace = match piped.get_all(&proxy::TRACEPARENT).iter().collect::<Vec<_>>()[..] {
        // One valid line goes on; two or more start a new trace.
        [t] if proxy::valid_traceparent(t.as_bytes()) => Some(t.clone()),
        _ => None,
    };
    let forwarded =
        proxy::Forwarded::new(&mut piped, id.clone(), &proxy::ip_header(peer), host.as_ref(), proto);
    let up = upstream_sees(&piped, &forwarded);
    assert_no_hop_by_hop(&up, &named, "upstream head");
    let all = |name: &str| -> Vec<&HeaderValue> { up.get_all(name).iter().collect() };
    // What a field can carry in HTTP/1.1: its value without the spaces and
    // tabs around it (RFC 9110 §5.5), which a parser takes off.
    let carried = |v: &HeaderValue| {
        HeaderValue::from_bytes(v.as_bytes().trim_ascii_start().trim_ascii_end()).unwrap()
    };
    let subject = subject.as_ref().map(carried);
    let host = host.as_ref().map(carried);
    assert_eq!(
        all("x-request-id"),
        vec![&id],
        "the gateway's x-request-id, and only it, reaches the upstream"
    );
    // traceparent: one, valid; the client's when it was valid.
    let traces = all("traceparent");
    assert_eq!(traces.len(), 1, "traceparent lines: {traces:?}");
    assert!(
        proxy::valid_traceparent(traces[0].as_bytes()),
        "created {:?}",
        traces[0]
    );
    if let Some(t) = &sent_trace {
        assert_eq!(traces[0], t, "a valid traceparent was replaced");
    }
    assert_eq!(
        all("x-client-cert-subject"),
        subject.iter().collect::<Vec<_>>(),
        "x-client-cert-subject is not the verified certificate's"
    );
    let proto_value = HeaderValue::from_static(proto);
    assert_eq!(all("x-forwarded-proto"), vec![&proto_value], "x-forwarded-proto");
    assert_eq!(
        all("x-forwarded-host"),
        host.iter().collect::<Vec<_>>(),
        "x-forwarded-host"
    );
    if let Some(h) = &host {
        // The upstream's Host: the client's (kept when the request has one).
        let had_host = stripped.get(HOST).map(carried);
        assert_eq!(up.get(HOST), Some(had_host.as_ref().unwrap_or(h)), "Host");
    }
    // X-Forwarded-For: one line; what the client's lines said, folded in
    // order ("several X-Forwarded-For lines are folded into one"), then the
    // peer.
    let xff = all("x-forwarded-for");
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
    let want = carried(&HeaderValue::from_bytes(&want).unwrap());
    assert_eq!(
        String::from_utf8_lossy(xff[0].as_bytes()),
        String::from_utf8_lossy(want.as_bytes()),
        "x-forwarded-for does not carry every earlier hop, in order, then the peer"
    );
});
