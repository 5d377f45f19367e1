//! A request's API version (pipeline step 2, before the route table): read
//! from the sources `versioning.from` names, which must agree.
//!
//! - `path`: the first path segment of the form `v<N>` (`/api/v2/users`).
//!   Route matching then sees the path without it (`/api/users`); the
//!   upstream does too unless the route sets `keep_version_segment`.
//! - `header`: `versioning.header` (`API-Version: 2`; `v2` is accepted).
//! - `accept`: the vendor media type (`application/vnd.example.v2+json`).
//!
//! Two sources that name different versions are a 400; none gives
//! `versioning.default` (or no version: then only routes without `version`
//! match).

use std::borrow::Cow;
use std::ops::Range;

use http::header::ACCEPT;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::versions::{http_date, parse_version_number};
use crate::config::{DeprecationConfig, VersionSource, VersioningConfig};
use crate::error::Reject;

/// `versioning`, compiled.
#[derive(Debug)]
pub struct Versioning {
    sources: Vec<VersionSource>,
    header: HeaderName,
    /// `vnd.example.v`, lower case: what precedes the number in `Accept`.
    accept_marker: Vec<u8>,
    default: Option<u32>,
}

/// What [`Versioning::resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVersion {
    pub version: Option<u32>,
    /// Where the path named it: the bytes of `/v<N>`.
    pub segment: Option<Range<usize>>,
}

/// Where the path named the version, and the path without it: what route
/// matching saw, kept so the upstream path is not built a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSegment {
    /// The bytes of `/v<N>` in the request path.
    pub range: Range<usize>,
    /// The request path without them.
    pub routed: String,
}

impl RequestVersion {
    /// No versioning, or none found.
    pub const NONE: RequestVersion = RequestVersion {
        version: None,
        segment: None,
    };

    /// The path route matching sees: without the version segment.
    pub fn routing_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match &self.segment {
            None => Cow::Borrowed(path),
            Some(seg) => Cow::Owned(without(path, seg.clone())),
        }
    }
}

impl Versioning {
    pub fn new(config: &VersioningConfig) -> Option<Versioning> {
        Some(Versioning {
            sources: config.sources(),
            header: HeaderName::from_bytes(config.header.as_bytes()).ok()?,
            accept_marker: config
                .accept_vendor
                .as_ref()
                .map(|v| format!("{}.v", v.to_ascii_lowercase()).into_bytes())
                .unwrap_or_default(),
            default: config.default.map(|v| v.0),
        })
    }

    /// The request's version, or a 400 when it names two or a malformed one.
    pub fn resolve(&self, path: &str, headers: &HeaderMap) -> Result<RequestVersion, Reject> {
        let mut found: Option<(VersionSource, u32)> = None;
        let mut segment = None;
        for &source in &self.sources {
            let version = match source {
                VersionSource::Path => path_segment(path).map(|(v, seg)| {
                    segment = Some(seg);
                    v
                }),
                VersionSource::Header => self.read_header(headers)?,
                VersionSource::Accept => self.read_accept(headers),
            };
            match (found, version) {
                (None, Some(v)) => found = Some((source, v)),
                (Some((first, a)), Some(b)) if a != b => {
                    return Err(Reject::VersionConflict {
                        first: (first.as_str(), a),
                        second: (source.as_str(), b),
                    })
                }
                _ => {}
            }
        }
        Ok(RequestVersion {
            version: found.map(|(_, v)| v).or(self.default),
            segment,
        })
    }

    fn read_header(&self, headers: &HeaderMap) -> Result<Option<u32>, Reject> {
        let Some(value) = headers.get(&self.header) else {
            return Ok(None);
        };
        let text = value.as_bytes().trim_ascii();
        let digits = match text {
            [b'v' | b'V', rest @ ..] => rest,
            _ => text,
        };
        parse_version_number(digits)
            .map(Some)
            .ok_or(Reject::BadRequest {
                reason: "the version header is not a version number like 2",
            })
    }

    /// The first `…<vendor>.v<N>` followed by `+`, `;`, `,`, a space or the
    /// end, in any `Accept` header.
    fn read_accept(&self, headers: &HeaderMap) -> Option<u32> {
        let marker = &self.accept_marker[..];
        if marker.is_empty() {
            return None;
        }
        for value in headers.get_all(ACCEPT) {
            let bytes = value.as_bytes();
            let mut from = 0;
            while let Some(at) = find_ignore_case(&bytes[from..], marker) {
                let start = from + at + marker.len();
                let len = bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let end_ok = matches!(
                    bytes.get(start + len),
                    None | Some(b'+' | b';' | b',' | b' ' | b'\t')
                );
                if end_ok {
                    if let Some(v) = parse_version_number(&bytes[start..start + len]) {
                        return Some(v);
                    }
                }
                from = start;
            }
        }
        None
    }
}

/// The first segment `v<N>` of `path`: its version and byte range
/// (including the `/` before it).
fn path_segment(path: &str) -> Option<(u32, Range<usize>)> {
    let bytes = path.as_bytes();
    // Only an origin-form path has segments (not `*`; fuzz/route_match
    // found `0v1/a` read as if it began with `/`).
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut start = 0;
    while start < bytes.len() {
        // `start` is at a `/`; the segment runs to the next one.
        let end = bytes[start + 1..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |i| start + 1 + i);
        if let [b'v', digits @ ..] = &bytes[start + 1..end] {
            if let Some(v) = parse_version_number(digits) {
                return Some((v, start..end));
            }
        }
        start = end;
    }
    None
}

fn without(path: &str, seg: Range<usize>) -> String {
    let mut out = String::with_capacity(path.len());
    out.push_str(&path[..seg.start]);
    out.push_str(&path[seg.end..]);
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// `routes[].deprecation`, compiled: the headers every response of the
/// route carries, and the count of requests that still use it.
pub struct Deprecation {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub requests: metrics::Counter,
}

impl Deprecation {
    pub fn new(config: &DeprecationConfig, requests: metrics::Counter) -> Deprecation {
        let mut headers = Vec::new();
        let deprecation = match config.since {
            // RFC 9745: a structured-field date, `@` and seconds.
            Some(t) => format!("@{}", t.0),
            None => "true".to_string(),
        };
        headers.push((HeaderName::from_static("deprecation"), deprecation));
        if let Some(t) = config.sunset {
            headers.push((HeaderName::from_static("sunset"), http_date(t.0)));
        }
        if let Some(link) = &config.link {
            headers.push((
                http::header::LINK,
                format!("<{link}>; rel=\"successor-version\""),
            ));
        }
        Deprecation {
            headers: headers
                .into_iter()
                .filter_map(|(k, v)| Some((k, HeaderValue::from_str(&v).ok()?)))
                .collect(),
            requests,
        }
    }
}

/// The path the upstream gets: the version segment removed unless `keep`,
/// then `strip_prefix` (which applies to the path route matching saw). A
/// kept segment stays where it was, unless the stripped prefix spans it.
pub fn upstream_path<'a>(
    path: &'a str,
    segment: Option<VersionSegment>,
    keep: bool,
    strip_prefix: Option<&str>,
) -> Cow<'a, str> {
    let Some(VersionSegment {
        range: seg,
        routed: matched,
    }) = segment
    else {
        return match strip_prefix.and_then(|p| super::strip_prefix(path, p)) {
            Some(rest) => Cow::Borrowed(rest),
            None => Cow::Borrowed(path),
        };
    };
    let Some(rest) = strip_prefix.and_then(|p| super::strip_prefix(&matched, p)) else {
        return if keep {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(matched)
        };
    };
    let removed = matched.len() - rest.len() + usize::from(rest == "/" && !matched.ends_with('/'));
    if keep && removed <= seg.start {
        // The segment sits after the prefix: drop the prefix from the
        // original path, which still holds the segment.
        return Cow::Borrowed(&path[removed..]);
    }
    Cow::Owned(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioning(from: &[VersionSource], default: Option<u32>) -> Versioning {
        Versioning {
            sources: from.to_vec(),
            header: HeaderName::from_static("api-version"),
            accept_marker: b"vnd.example.v".to_vec(),
            default,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const ALL: &[VersionSource] = &[
        VersionSource::Path,
        VersionSource::Header,
        VersionSource::Accept,
    ];

    #[test]
    fn path_segments() {
        assert_eq!(path_segment("/api/v2/users"), Some((2, 4..7)));
        assert_eq!(path_segment("/v10"), Some((10, 0..4)));
        assert_eq!(path_segment("/v1/v2"), Some((1, 0..3)));
        for none in [
            "/",
            "",
            "*",
            "0v1/a",
            "v1/a",
            "/api/users",
            "/api/v/x",
            "/api/v2x/y",
            "/vv2",
            "/api/V2",
        ] {
            assert_eq!(path_segment(none), None, "{none}");
        }
        let v = versioning(ALL, None);
        let r = v.resolve("/api/v2/", &HeaderMap::new()).unwrap();
        assert_eq!(r.routing_path("/api/v2/"), "/api/");
        let r = v.resolve("/v3", &HeaderMap::new()).unwrap();
        assert_eq!((r.version, &*r.routing_path("/v3")), (Some(3), "/"));
    }

    #[test]
    fn sources_agree_or_conflict() {
        let v = versioning(ALL, Some(1));
        let get = |path, h: &[(&'static str, &'static str)]| {
            v.resolve(path, &headers(h)).map(|r| r.version)
        };
        let version = |path, h: &[(&'static str, &'static str)]| get(path, h).ok().flatten();
        assert_eq!(version("/users", &[]), Some(1));
        assert_eq!(version("/v2/users", &[]), Some(2));
        assert_eq!(version("/users", &[("api-version", " v3 ")]), Some(3));
        assert_eq!(
            version(
                "/users",
                &[("accept", "text/html, application/VND.example.v4+json;q=0.9")]
            ),
            Some(4)
        );
        assert_eq!(
            version(
                "/v2/users",
                &[
                    ("api-version", "2"),
                    ("accept", "application/vnd.example.v2")
                ]
            ),
            Some(2)
        );
        // Not a version: another vendor, no number, a longer vendor name.
        for accept in [
            "application/vnd.other.v2+json",
            "application/vnd.example+json",
            "application/vnd.example.v2x+json",
        ] {
            assert_eq!(
                version("/users", &[("accept", accept)]),
                Some(1),
                "{accept}"
            );
        }
        match get("/v1/users", &[("api-version", "2")]) {
            Err(Reject::VersionConflict { first, second }) => {
                assert_eq!((first, second), (("path", 1), ("header", 2)))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            get("/users", &[("api-version", "two")]),
            Err(Reject::BadRequest { .. })
        ));
        // A source not listed is not read.
        let path_only = versioning(&[VersionSource::Path], None);
        let r = path_only
            .resolve("/users", &headers(&[("api-version", "2")]))
            .unwrap();
        assert_eq!(r, RequestVersion::NONE);
    }

    #[test]
    fn deprecation_headers() {
        let config = DeprecationConfig {
            since: None,
            sunset: Some(crate::config::Timestamp(1_814_313_600)),
            link: Some("/api/v3/users".into()),
        };
        let d = Deprecation::new(&config, metrics::Counter::noop());
        let text: Vec<(String, &str)> = d
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            text,
            [
                ("deprecation".to_string(), "true"),
                ("sunset".to_string(), "Wed, 30 Jun 2027 00:00:00 GMT"),
                (
                    "link".to_string(),
                    "</api/v3/users>; rel=\"successor-version\""
                ),
            ]
        );
        let since = DeprecationConfig {
            since: Some(crate::config::Timestamp(1_688_169_599)),
            sunset: None,
            link: None,
        };
        let d = Deprecation::new(&since, metrics::Counter::noop());
        assert_eq!(d.headers.len(), 1);
        assert_eq!(d.headers[0].1, "@1688169599");
    }

    /// The segment `range` of `path`, as step 2 hands it on.
    fn segment(path: &str, range: Range<usize>) -> Option<VersionSegment> {
        Some(VersionSegment {
            routed: without(path, range.clone()),
            range,
        })
    }

    #[test]
    fn upstream_paths() {
        let p = "/api/v2/users/42";
        let seg = segment(p, 4..7); // `/v2`
        assert_eq!(upstream_path(p, seg.clone(), false, None), "/api/users/42");
        assert_eq!(upstream_path(p, seg.clone(), true, None), p);
        assert_eq!(
            upstream_path(p, seg.clone(), false, Some("/api")),
            "/users/42"
        );
        assert_eq!(
            upstream_path(p, seg.clone(), true, Some("/api")),
            "/v2/users/42"
        );
        // The stripped prefix spans the segment: it goes with the prefix.
        assert_eq!(
            upstream_path(p, seg.clone(), true, Some("/api/users")),
            "/42"
        );
        let short = "/api/v2";
        assert_eq!(
            upstream_path(short, segment(short, 4..7), true, Some("/api")),
            "/v2"
        );
        assert_eq!(
            upstream_path(short, segment(short, 4..7), false, Some("/api")),
            "/"
        );
        assert_eq!(upstream_path("/api/x", None, false, Some("/api")), "/x");
        assert_eq!(upstream_path("/other", None, false, Some("/api")), "/other");
    }
}
