//! The request target and `Host`: what the HTTP parser accepts but a proxy
//! must not forward as it came, because the upstream could read it another
//! way than the gateway routed it.
//!
//! Framing itself (`Content-Length`, `Transfer-Encoding`, chunk sizes,
//! control characters, line folding) is hyper's: it refuses with a bare 400
//! what it cannot frame one way only, and re-frames every body it forwards.
//! `docs/security.md` lists each case and what happens to it.

use http::header::HOST;
use http::{HeaderValue, Method, Request, Version};

use crate::error::Reject;

fn bad(reason: &'static str) -> Reject {
    Reject::BadRequest { reason }
}

/// Refuses what a gateway must not forward and makes `Host` agree with the
/// request target:
/// - `CONNECT` (no tunnels), authority-form (`GET host:80`) and asterisk-form
///   (`OPTIONS *`) targets: 400;
/// - a path with a `.` or `..` segment, `%2e`-encoded or not: 400, because
///   routes and authentication match the path as sent while the upstream
///   may resolve it (`/public/../admin`);
/// - more than one `Host`, or none in HTTP/1.1 (RFC 9112 §3.2): 400;
/// - an absolute-form HTTP/1.1 target (`GET http://a/x`) replaces a `Host`
///   that differs (RFC 9112 §3.2.2: the target wins); an HTTP/2
///   `:authority` that a `Host` contradicts is a 400 (RFC 9113 §8.3.1).
pub fn check<B>(req: &mut Request<B>) -> Result<(), Reject> {
    if req.method() == Method::CONNECT {
        return Err(bad("CONNECT is not supported"));
    }
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(bad("the request target is in authority-form"));
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(bad("the request target is not a path"));
    }
    if has_dot_segment(path) {
        return Err(bad("the path has a `.` or `..` segment"));
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let Some(authority) = req.uri().authority() else {
        return match host {
            None if req.version() == Version::HTTP_11 => Err(bad("no Host header")),
            _ => Ok(()),
        };
    };
    match host {
        Some(h)
            if h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Ok(())
        }
        Some(_) if req.version() >= Version::HTTP_2 => {
            Err(bad("the Host header differs from :authority"))
        }
        _ => {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| bad("the request target's host is invalid"))?;
            req.headers_mut().insert(HOST, value);
            Ok(())
        }
    }
}

/// Is one of the path's segments `.` or `..`, each dot possibly written
/// `%2e` or `%2E`?
fn has_dot_segment(path: &str) -> bool {
    // Most paths have neither `/.` nor `%2`: one pass over the bytes.
    let bytes = path.as_bytes();
    let maybe = bytes.windows(2).any(|w| w == b"/." || w == b"%2");
    maybe && path.split('/').any(is_dot_segment)
}

fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        for p in [
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/%2E",
            "/a/..",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/",
            "/a.b",
            "/.well-known/x",
            "/a/...",
            "/a/%2f/b",
            "/a..",
            "/%2ex",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    fn req(target: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(target).version(version);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_agrees_with_the_target() {
        let mut r = req("http://a.example/x", Version::HTTP_11, &["b.example"]);
        check(&mut r).unwrap();
        assert_eq!(r.headers()[HOST], "a.example");
        let mut r = req("/x", Version::HTTP_11, &[]);
        assert!(check(&mut r).is_err());
        let mut r = req("/x", Version::HTTP_10, &[]);
        check(&mut r).unwrap();
        let mut r = req("/x", Version::HTTP_11, &["a", "b"]);
        assert!(check(&mut r).is_err());
        let mut r = req("http://a.example/x", Version::HTTP_2, &["b.example"]);
        assert!(check(&mut r).is_err());
        let mut r = req("http://a.example/x", Version::HTTP_2, &["A.example"]);
        check(&mut r).unwrap();
        let mut r = req("http://a.example/x", Version::HTTP_2, &[]);
        check(&mut r).unwrap();
        assert_eq!(r.headers()[HOST], "a.example");
    }
}
