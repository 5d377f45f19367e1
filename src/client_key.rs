//! Per-client keys (`ip`, `header:<name>`, `claim:<name>`, `cookie:<name>`,
//! `client_cert:subject`, `route`): read from a request without
//! allocating. Rate limits (step 2c), sticky splits and `hash:` balancing
//! (step 3) use them.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Verified;
use crate::config::KeySpec;

/// A [`KeySpec`] ready for requests (header names parsed once).
#[derive(Debug, Clone)]
pub enum ClientKey {
    Ip,
    Header(HeaderName),
    Claim(String),
    Cookie(String),
    ClientCertSubject,
    Route,
}

impl ClientKey {
    /// `None` only for a header name validation let through by mistake.
    pub fn new(spec: &KeySpec) -> Option<ClientKey> {
        Some(match spec {
            KeySpec::Ip => ClientKey::Ip,
            KeySpec::Header(h) => ClientKey::Header(HeaderName::from_bytes(h.as_bytes()).ok()?),
            KeySpec::Claim(c) => ClientKey::Claim(c.clone()),
            KeySpec::Cookie(c) => ClientKey::Cookie(c.clone()),
            KeySpec::ClientCertSubject => ClientKey::ClientCertSubject,
            KeySpec::Route => ClientKey::Route,
        })
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Ip => f.write_str("ip"),
            ClientKey::Header(h) => write!(f, "header:{h}"),
            ClientKey::Claim(c) => write!(f, "claim:{c}"),
            ClientKey::Cookie(c) => write!(f, "cookie:{c}"),
            ClientKey::ClientCertSubject => f.write_str("client_cert:subject"),
            ClientKey::Route => f.write_str("route"),
        }
    }
}

/// What a key may be read from.
pub struct KeySource<'a> {
    pub peer: IpAddr,
    pub headers: &'a HeaderMap,
    pub client_cert_subject: Option<&'a HeaderValue>,
    /// The route's verified token, if it has one.
    pub token: Option<&'a Verified>,
    pub route: &'a str,
}

/// A key's bytes: borrowed from the request, or an address inline.
pub enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Ip([u8; 17]),
}

impl KeyBytes<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Ip(b) => b,
        }
    }
}

impl ClientKey {
    /// The key's value on this request; `None` when the request lacks it
    /// (no such header, no token or claim, no client certificate).
    pub fn read<'a>(&self, src: &KeySource<'a>) -> Option<KeyBytes<'a>> {
        match self {
            ClientKey::Ip => {
                let mut b = [0u8; 17];
                match src.peer {
                    IpAddr::V4(v4) => {
                        b[0] = 4;
                        b[1..5].copy_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        b[0] = 6;
                        b[1..].copy_from_slice(&v6.octets());
                    }
                }
                Some(KeyBytes::Ip(b))
            }
            ClientKey::Header(name) => src
                .headers
                .get(name)
                .map(|v| KeyBytes::Borrowed(v.as_bytes()))
                .filter(|k| !k.as_bytes().is_empty()),
            ClientKey::Claim(name) => src
                .token
                .and_then(|t| t.claim(name))
                .map(|c| KeyBytes::Borrowed(c.as_bytes())),
            ClientKey::Cookie(name) => cookie(src.headers, name).map(KeyBytes::Borrowed),
            ClientKey::ClientCertSubject => src
                .client_cert_subject
                .map(|v| KeyBytes::Borrowed(v.as_bytes())),
            ClientKey::Route => Some(KeyBytes::Borrowed(src.route.as_bytes())),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265
/// `name=value; name2=value2`); `None` when absent or empty.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let value = pair[eq + 1..].trim_ascii();
            (&pair[..eq] == name.as_bytes() && !value.is_empty()).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1; session=abc ; b=2"));
        h.append("cookie", HeaderValue::from_static("later=x"));
        assert_eq!(cookie(&h, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "later"), Some(&b"x"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        h.insert("cookie", HeaderValue::from_static("empty="));
        assert_eq!(cookie(&h, "empty"), None);
    }
}
