//! Route matching: fuzzed host, path, method, headers and version against a
//! fixed route table, through `Router::find`, `Router::served_versions`,
//! `routing::strip_prefix` and `routing::request_host`.
//!
//! Besides "never panics", every answer of `find` is checked against a slow
//! reference written from the rules in `src/routing/mod.rs` (CONTRACT.md,
//! Route choice): among routes whose host, methods, headers and version
//! match, an exact `path` beats any prefix, the longest `path_prefix` wins
//! (whole segments only), ties go to the route listed first.
//!
//! Input: lines (`\n`):
//!   0 method, 1 path, 2 version number (empty: none), 3 request target for
//!   `request_host` (`/x`, `http://a.com:1/x`, ...), 4 a prefix for
//!   `strip_prefix`, then `name: value` header lines.
//!
//! Version resolution: a `Versioning` (path, header, accept; default 1)
//! resolves the fuzzed path and headers; its answer feeds `find` as the
//! gateway does (`routing_path`, the resolved version), and
//! `version::upstream_path` is checked against what it promises: the
//! segment it found is `/v<N>` on a segment boundary, without a segment the
//! result is `strip_prefix`'s (or the path), and a rewrite only removes
//! bytes. Line 2's version is still fed to `find` directly as well.

#![no_main]

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::config::{ApiVersion, VersionSource, VersioningConfig};
use portcullis::routing::version::{self, Versioning};
use portcullis::routing::{self, Conditions, PathMatch, Router};

#[derive(Clone, Copy)]
enum P {
    Exact(&'static str),
    Prefix(&'static str),
}

/// One route of the table, as the reference sees it.
struct Spec {
    name: &'static str,
    path: P,
    /// `*.example.com` for a wildcard, as in the config.
    host: Option<&'static str>,
    methods: Option<&'static [&'static str]>,
    headers: &'static [(&'static str, &'static str)],
    version: Option<u32>,
}

const fn spec(name: &'static str, path: P) -> Spec {
    Spec {
        name,
        path,
        host: None,
        methods: None,
        headers: &[],
        version: None,
    }
}

/// Config order matters (ties go to the first listed).
static SPECS: &[Spec] = &[
    spec("healthz", P::Exact("/healthz")),
    spec("root", P::Prefix("/")),
    spec("api", P::Prefix("/api")),
    spec("users", P::Prefix("/api/users/")),
    spec("me", P::Exact("/api/users/me")),
    Spec {
        methods: Some(&["POST"]),
        ..spec("users-post-shadowed", P::Prefix("/api/users"))
    },
    Spec {
        host: Some("*.example.com"),
        ..spec("orders-wild", P::Prefix("/api/orders"))
    },
    Spec {
        headers: &[("x-beta", "on")],
        ..spec("orders-beta", P::Prefix("/api/orders"))
    },
    Spec {
        host: Some("API.example.com"),
        methods: Some(&["GET", "HEAD"]),
        ..spec("orders-host", P::Prefix("/api/orders/v1"))
    },
    Spec {
        version: Some(2),
        ..spec("accounts-v2", P::Prefix("/api/accounts"))
    },
    Spec {
        version: Some(1),
        ..spec("accounts-v1", P::Prefix("/api/accounts"))
    },
    Spec {
        version: Some(3),
        ..spec("accounts-me-v3", P::Exact("/api/accounts/me"))
    },
    Spec {
        methods: Some(&["DELETE"]),
        headers: &[("x-a", "1"), ("x-b", "two words")],
        ..spec("items-delete", P::Exact("/api/items"))
    },
    Spec {
        host: Some("cdn.example.com"),
        ..spec("static", P::Prefix("/static/"))
    },
    Spec {
        host: Some("*"),
        ..spec("any-host", P::Prefix("/h"))
    },
    spec("unicode", P::Prefix("/ü/ñ")),
    spec("deep", P::Prefix("/a/b/c/d/e/f")),
];

fn conditions(s: &Spec) -> Conditions {
    Conditions {
        // As `Snapshot::compile` stores them.
        host: s.host.map(|h| match h.strip_prefix('*') {
            Some(suffix) => (suffix.to_ascii_lowercase(), true),
            None => (h.to_ascii_lowercase(), false),
        }),
        methods: s.methods.map(|ms| {
            ms.iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect()
        }),
        headers: s
            .headers
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect(),
        version: s.version,
    }
}

fn router() -> &'static Router<&'static str> {
    static ROUTER: OnceLock<Router<&'static str>> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let mut r = Router::new();
        for s in SPECS {
            let path = match s.path {
                P::Exact(p) => PathMatch::Exact(p.into()),
                P::Prefix(p) => PathMatch::Prefix(p.into()),
            };
            r.add(path, conditions(s), Arc::new(s.name));
        }
        assert_eq!(r.len(), SPECS.len());
        r
    })
}

/// `/api/` → `/api`; `/` stays `/`.
fn normalized(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// Whole-segment prefix match.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let n = normalized(prefix);
    n == "/"
        || path == n
        || path
            .strip_prefix(n)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn conditions_match(
    s: &Spec,
    host: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
    version: Option<u32>,
) -> bool {
    if s.version.is_some_and(|v| Some(v) != version) {
        return false;
    }
    if let Some(ms) = s.methods {
        if !ms.iter().any(|m| *m == method.as_str()) {
            return false;
        }
    }
    if let Some(want) = s.host {
        let Some(host) = host else { return false };
        let host = host.to_ascii_lowercase();
        let ok = match want.strip_prefix('*') {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(&suffix.to_ascii_lowercase())
            }
            None => host == want.to_ascii_lowercase(),
        };
        if !ok {
            return false;
        }
    }
    s.headers.iter().all(|(k, v)| {
        headers
            .get_all(*k)
            .iter()
            .any(|have| have.as_bytes() == v.as_bytes())
    })
}

/// The rules, the slow way.
fn reference(
    host: Option<&str>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    version: Option<u32>,
) -> Option<&'static str> {
    let path = if path.is_empty() { "/" } else { path };
    let ok = |s: &&Spec| conditions_match(s, host, method, headers, version);
    if let Some(s) = SPECS
        .iter()
        .filter(ok)
        .find(|s| matches!(s.path, P::Exact(e) if e == path))
    {
        return Some(s.name);
    }
    let mut best: Option<(usize, &Spec)> = None;
    for s in SPECS.iter().filter(ok) {
        if let P::Prefix(p) = s.path {
            if prefix_matches(p, path) && best.is_none_or(|(len, _)| normalized(p).len() > len) {
                best = Some((normalized(p).len(), s));
            }
        }
    }
    best.map(|(_, s)| s.name)
}

fn check_find(
    host: Option<&str>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    version: Option<u32>,
) {
    let r = router();
    let got = r.find(host, path, method, headers, version).map(|x| **x);
    let want = reference(host, path, method, headers, version);
    assert_eq!(
        got, want,
        "find(host={host:?}, path={path:?}, method={method}, version={version:?}, headers={headers:?})"
    );
    let served = r.served_versions(host, path, method, headers);
    assert!(
        served.windows(2).all(|w| w[0] < w[1]),
        "served_versions not ascending and unique: {served:?}"
    );
    if got.is_none() {
        for v in &served {
            assert!(
                r.find(host, path, method, headers, Some(*v)).is_some(),
                "served_versions says {v} is served for {path:?}, but find at {v} finds nothing"
            );
        }
        if let Some(v) = version {
            assert!(
                !served.contains(&v),
                "{v} is served for {path:?}, yet find failed"
            );
        }
    }
    // What the route found would forward: a prefix route's prefix always
    // strips off the path it matched.
    if let Some(name) = got {
        let spec = SPECS.iter().find(|s| s.name == name).unwrap();
        if let P::Prefix(p) = spec.path {
            let p_path = if path.is_empty() { "/" } else { path };
            if p != "/" {
                let rest = routing::strip_prefix(p_path, p);
                assert!(
                    rest.is_some(),
                    "route prefix {p:?} matched {path:?} but does not strip"
                );
            }
        }
    }
}

fn versioning() -> &'static Versioning {
    static V: OnceLock<Versioning> = OnceLock::new();
    V.get_or_init(|| {
        Versioning::new(&VersioningConfig {
            from: Some(vec![
                VersionSource::Path,
                VersionSource::Header,
                VersionSource::Accept,
            ]),
            header: "API-Version".into(),
            accept_vendor: Some("vnd.example".into()),
            default: Some(ApiVersion(1)),
        })
        .unwrap()
    })
}

/// The gateway's step 2 with versions, then the upstream path.
fn check_versions(host: Option<&str>, path: &str, method: &Method, headers: &HeaderMap, strip: &str) {
    let Ok(resolved) = versioning().resolve(path, headers) else {
        return; // a 400: sources disagree or a malformed header
    };
    let version = resolved.version;
    assert!(version.is_some(), "the default applies when nothing names one");
    let routed = resolved.routing_path(path);
    if let Some(seg) = resolved.segment.clone() {
        let text = &path[seg.clone()];
        assert!(
            text.starts_with("/v")
                && text.len() > 2
                && text[2..].bytes().all(|b| b.is_ascii_digit())
                && path[seg.end..].chars().next().is_none_or(|c| c == '/'),
            "segment {seg:?} of {path:?} is {text:?}"
        );
        assert_eq!(routed.len(), (path.len() - text.len()).max(1));
    } else {
        assert_eq!(routed, path);
    }
    check_find(host, &routed, method, headers, version);
    for keep in [false, true] {
        let strip = (!strip.is_empty()).then_some(strip);
        let segment = resolved.segment.clone().map(|range| version::VersionSegment {
            range,
            routed: routed.to_string(),
        });
        let up = version::upstream_path(path, segment, keep, strip);
        assert!(up.len() <= path.len().max(1), "{up:?} grew from {path:?}");
        if resolved.segment.is_none() {
            let want = strip
                .and_then(|p| routing::strip_prefix(path, p))
                .unwrap_or(path);
            assert_eq!(up, want, "no segment: upstream_path is strip_prefix's");
        }
        if resolved.segment.is_some() && !keep && strip.is_none() {
            assert_eq!(up, routed, "the upstream sees what routing saw");
        }
    }
}

fn check_strip(path: &str, prefix: &str) {
    let Some(rest) = routing::strip_prefix(path, prefix) else {
        return;
    };
    // Documented: the result always starts with `/`, on a segment boundary.
    assert!(
        rest.starts_with('/'),
        "strip_prefix({path:?}, {prefix:?}) = {rest:?}"
    );
    let trimmed = prefix.trim_end_matches('/');
    assert!(
        format!("{trimmed}{rest}") == path || (rest == "/" && path == trimmed),
        "strip_prefix({path:?}, {prefix:?}) = {rest:?} is not what follows the prefix"
    );
}

fn check_host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let host = routing::request_host(uri, headers)?;
    let raw = match headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) => h.to_string(),
        None => uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
    };
    assert!(
        raw.starts_with(host),
        "request_host {host:?} is not a prefix of {raw:?}"
    );
    if raw.starts_with('[') && raw.contains(']') {
        assert!(
            host.ends_with(']'),
            "IPv6 literal cut: {host:?} from {raw:?}"
        );
    } else if host.len() < raw.len() {
        // Only `:port` goes.
        let port = &raw[host.len()..];
        assert!(
            port.starts_with(':') && !port[1..].contains(':'),
            "request_host {host:?} dropped more than a port from {raw:?}"
        );
    }
    Some(host.to_string())
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let mut next = || lines.next().unwrap_or_default();
    let method = Method::from_bytes(next()).unwrap_or(Method::GET);
    let path_bytes = next();
    let path = String::from_utf8_lossy(path_bytes);
    let version = std::str::from_utf8(next())
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    let target = next();
    let strip = String::from_utf8_lossy(next()).into_owned();
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

    let uri = if target.is_empty() {
        http::Uri::from_static("/")
    } else {
        http::Uri::try_from(target).unwrap_or_else(|_| http::Uri::from_static("/"))
    };
    let host = check_host(&uri, &headers);
    let host = host.as_deref();

    // The path as fuzzed (any string), and as the server would see it: the
    // path of a parsed request target.
    check_find(host, &path, &method, &headers, version);
    check_find(None, &path, &method, &headers, version);
    check_versions(host, &path, &method, &headers, &strip);
    if let Ok(u) = http::Uri::try_from(path_bytes) {
        check_find(host, u.path(), &method, &headers, version);
        check_versions(host, u.path(), &method, &headers, &strip);
        check_strip(u.path(), &strip);
    }
    check_strip(&path, &strip);
    for s in SPECS {
        if let P::Prefix(p) = s.path {
            check_strip(&path, p);
        }
    }
});
