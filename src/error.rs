//! [`Reject`]: every way the gateway refuses or fails a request, and the one
//! place that turns a refusal into a status, headers and the contract's
//! RFC 9457 problem document. Pipeline steps return `Err(Reject)`; they never
//! build responses themselves.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::ResponseBody;

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Reject {
    #[error("the request is malformed: {reason}")]
    BadRequest { reason: &'static str },
    #[error("no route matches this request")]
    NoRoute,
    /// Two version sources name different versions (a `bad_request`).
    #[error("the request names two versions: {} by its {} and {} by its {}", first.1, first.0, second.1, second.0)]
    VersionConflict {
        first: (&'static str, u32),
        second: (&'static str, u32),
    },
    /// Routes serve this path, but not at the request's version.
    #[error("{}", unsupported_detail(*version, supported))]
    UnsupportedVersion {
        version: Option<u32>,
        supported: Vec<u32>,
    },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: u64 },
    #[error("upstream `{upstream}` failed: {cause}")]
    BadGateway {
        upstream: Arc<str>,
        cause: UpstreamFailure,
    },
    #[error("upstream `{upstream}` did not answer within {timeout_ms} ms")]
    UpstreamTimeout { upstream: Arc<str>, timeout_ms: u64 },
    /// The client stopped sending its request body (`body_read_timeout`).
    #[error("no request body bytes arrived for {timeout_ms} ms")]
    RequestTimeout { timeout_ms: u64 },
    /// No token (`problem` is `None`), or a token that is not valid.
    #[error("{}", match problem { None => "this route needs a bearer token", Some(p) => p })]
    Unauthorized { problem: Option<&'static str> },
    /// A valid token without every scope the route needs.
    #[error("the token lacks a scope this route needs: {scope}")]
    Forbidden { scope: Arc<str> },
    /// The route's JWT provider has no usable keys (our outage, not the client's).
    #[error("the token cannot be checked now: provider `{provider}` has no usable keys")]
    AuthUnavailable { provider: Arc<str> },
    /// The upstream's circuit is open, or none of its endpoints is healthy:
    /// refused without a connect attempt.
    #[error("upstream `{upstream}` is unavailable: {reason}")]
    UpstreamUnavailable {
        upstream: Arc<str>,
        reason: &'static str,
        retry_after_secs: u64,
    },
    /// The client's token bucket is empty.
    #[error("rate limit `{policy}` exceeded: retry in {retry_after_secs} s")]
    RateLimited {
        policy: Arc<str>,
        retry_after_secs: u64,
    },
    /// The policy's shared store (Redis) cannot answer and its
    /// `on_store_error` is `deny`: our outage, not the client's.
    #[error("rate limit `{policy}` cannot be checked now: its store is unavailable")]
    RateLimitUnavailable { policy: Arc<str> },
    /// Shed: the gateway (or the upstream's bulkhead) is at its limit.
    #[error("the gateway is overloaded ({reason}): retry shortly")]
    Overloaded {
        reason: &'static str,
        upstream: Option<Arc<str>>,
    },
}

/// What went wrong talking to an upstream (for `detail` and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    ConnectTimeout,
    Reset,
    Protocol,
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamFailure::Connect => "connection refused or unreachable",
            UpstreamFailure::ConnectTimeout => "connect timed out",
            UpstreamFailure::Reset => "connection closed before a complete response",
            UpstreamFailure::Protocol => "invalid HTTP response",
        })
    }
}

/// Every error code, in a fixed order (the index of a code is used for
/// per-route metric handle tables).
pub const CODES: [&str; 15] = [
    "bad_request",
    "no_route",
    "payload_too_large",
    "headers_too_large",
    "bad_gateway",
    "upstream_timeout",
    "unauthorized",
    "forbidden",
    "auth_unavailable",
    "upstream_unavailable",
    "rate_limited",
    "overloaded",
    "unsupported_version",
    "request_timeout",
    "rate_limit_unavailable",
];

fn unsupported_detail(version: Option<u32>, supported: &[u32]) -> String {
    let list = supported
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match version {
        Some(v) => format!("version {v} is not served at this path; it serves versions {list}"),
        None => format!("this path needs an API version; it serves versions {list}"),
    }
}

/// Writes text into a JSON string body: `"` and `\\` escaped, control
/// characters as `\\u00XX`.
struct JsonEscaped<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaped<'_> {
    /// Copies runs of plain bytes whole: escaping char by char cost a
    /// quarter of a refusal's instructions under a 429 flood. The bytes
    /// that need escaping are ASCII, so every cut is on a char boundary.
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            if b != b'"' && b != b'\\' && b >= 0x20 {
                continue;
            }
            self.0.push_str(&s[plain..i]);
            match b {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                _ => {
                    self.0.push_str("\\u00");
                    self.0.push(char::from(HEX[usize::from(b >> 4)]));
                    self.0.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
            plain = i + 1;
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

/// `Retry-After` for `overloaded`.
const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// `Retry-After` for `auth_unavailable`: about when a key fetch is retried.
const AUTH_RETRY_AFTER_SECS: &str = "5";

impl Reject {
    /// The HTTP status. Exhaustive on purpose: a new variant must say its status.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::VersionConflict { .. } => StatusCode::BAD_REQUEST,
            Reject::UnsupportedVersion { .. } => StatusCode::NOT_FOUND,
            Reject::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Reject::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Reject::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Reject::Forbidden { .. } => StatusCode::FORBIDDEN,
            Reject::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::UpstreamUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::RateLimitUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Index of [`Reject::code`] in [`CODES`].
    pub fn code_index(&self) -> usize {
        match self {
            Reject::BadRequest { .. } | Reject::VersionConflict { .. } => 0,
            Reject::NoRoute => 1,
            Reject::PayloadTooLarge { .. } => 2,
            Reject::HeadersTooLarge { .. } => 3,
            Reject::BadGateway { .. } => 4,
            Reject::UpstreamTimeout { .. } => 5,
            Reject::Unauthorized { .. } => 6,
            Reject::Forbidden { .. } => 7,
            Reject::AuthUnavailable { .. } => 8,
            Reject::UpstreamUnavailable { .. } => 9,
            Reject::RateLimited { .. } => 10,
            Reject::Overloaded { .. } => 11,
            Reject::UnsupportedVersion { .. } => 12,
            Reject::RequestTimeout { .. } => 13,
            Reject::RateLimitUnavailable { .. } => 14,
        }
    }

    /// The stable machine-readable code: the body's `error`, the metric's
    /// `reason` label and the access log's `error` field.
    pub fn code(&self) -> &'static str {
        CODES[self.code_index()]
    }

    /// The RFC 9457 document, written straight into one buffer: refusals
    /// under a flood (429, 503) are answered by the thousand, and a
    /// `serde_json::Value` tree per answer showed in their profile.
    fn problem_json(&self, status: StatusCode, request_id: &str) -> String {
        let mut out = String::with_capacity(256);
        let code = self.code();
        // Plain pushes, not `write!`: the formatting machinery was a
        // tenth of a refusal's instructions.
        out.push_str("{\"type\":\"urn:portcullis:problem:");
        out.push_str(code);
        out.push_str("\",\"title\":\"");
        out.push_str(status.canonical_reason().unwrap_or(""));
        out.push_str("\",\"status\":");
        out.push_str(status.as_str());
        out.push_str(",\"detail\":\"");
        self.write_detail(&mut out);
        out.push_str("\",\"error\":\"");
        out.push_str(code);
        out.push_str("\",\"request_id\":\"");
        let _ = JsonEscaped(&mut out).write_str(request_id);
        out.push('"');
        if let Some(u) = self.upstream() {
            out.push_str(",\"upstream\":\"");
            let _ = JsonEscaped(&mut out).write_str(u);
            out.push('"');
        }
        if let Some(secs) = self.retry_after() {
            out.push_str(",\"retry_after\":");
            out.push_str(itoa::Buffer::new().format(secs));
        }
        if let Reject::RateLimited { policy, .. } | Reject::RateLimitUnavailable { policy } = self {
            out.push_str(",\"policy\":\"");
            let _ = JsonEscaped(&mut out).write_str(policy);
            out.push('"');
        }
        if let Reject::UnsupportedVersion { supported, .. } = self {
            out.push_str(",\"supported_versions\":[");
            for (i, v) in supported.iter().enumerate() {
                let _ = write!(out, "{}\"{v}\"", if i > 0 { "," } else { "" });
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    /// The `detail` (the `Display` text), escaped into `out`. The two
    /// refusals a flood brings by the thousand are written piece by piece:
    /// through `fmt` they cost 1,100 instructions each. A unit test holds
    /// them to their `Display` text.
    fn write_detail(&self, out: &mut String) {
        match self {
            Reject::RateLimited {
                policy,
                retry_after_secs,
            } => {
                out.push_str("rate limit `");
                let _ = JsonEscaped(out).write_str(policy);
                out.push_str("` exceeded: retry in ");
                out.push_str(itoa::Buffer::new().format(*retry_after_secs));
                out.push_str(" s");
            }
            Reject::Overloaded { reason, .. } => {
                out.push_str("the gateway is overloaded (");
                let _ = JsonEscaped(out).write_str(reason);
                out.push_str("): retry shortly");
            }
            _ => {
                let _ = write!(JsonEscaped(out), "{self}");
            }
        }
    }

    /// Seconds for `Retry-After` and the problem's `retry_after`.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Reject::UpstreamUnavailable {
                retry_after_secs, ..
            }
            | Reject::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            // Shedding clears within a latency or two; a second is plenty.
            Reject::Overloaded { .. } => Some(OVERLOADED_RETRY_AFTER_SECS),
            // The store is probed every quarter second.
            Reject::RateLimitUnavailable { .. } => Some(1),
            _ => None,
        }
    }

    fn upstream(&self) -> Option<&str> {
        match self {
            Reject::BadGateway { upstream, .. }
            | Reject::UpstreamTimeout { upstream, .. }
            | Reject::UpstreamUnavailable { upstream, .. }
            | Reject::Overloaded {
                upstream: Some(upstream),
                ..
            } => Some(upstream),
            _ => None,
        }
    }

    /// The problem document and headers for this rejection.
    pub fn to_response(&self, request_id: &str) -> Response<ResponseBody> {
        let status = self.status();
        let body = self.problem_json(status, request_id);
        // A boxed slice becomes `Bytes` without a second allocation (a
        // `String` with spare capacity does not); the shrink stays in place.
        let body = Bytes::from(body.into_bytes().into_boxed_slice());
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // RFC 6750 §3: no error code when no token was sent; the
        // description names the problem, never the token.
        match self {
            Reject::Unauthorized { problem: None } => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Reject::Unauthorized {
                problem: Some(problem),
            } => {
                let v = format!("Bearer error=\"invalid_token\", error_description=\"{problem}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Reject::Forbidden { scope } => {
                let v = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Reject::AuthUnavailable { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(AUTH_RETRY_AFTER_SECS));
            }
            // The rest of the body may still come: the connection cannot
            // carry another request (RFC 9110 §15.5.9).
            Reject::RequestTimeout { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Reject::UpstreamUnavailable { .. }
            | Reject::RateLimited { .. }
            | Reject::RateLimitUnavailable { .. }
            | Reject::Overloaded { .. } => {
                if let Some(secs) = self.retry_after() {
                    // Copied from digits on the stack: one allocation,
                    // where `HeaderValue::from(u64)` makes two.
                    let digits = itoa::Buffer::new().format(secs).as_bytes().to_vec();
                    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(digits)) {
                        headers.insert(RETRY_AFTER, v);
                    }
                }
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Reject> {
        let u: Arc<str> = Arc::from("u");
        vec![
            Reject::BadRequest { reason: "x" },
            Reject::NoRoute,
            Reject::PayloadTooLarge { limit: 1 },
            Reject::HeadersTooLarge { limit: 1 },
            Reject::BadGateway {
                upstream: u.clone(),
                cause: UpstreamFailure::Connect,
            },
            Reject::UpstreamTimeout {
                upstream: u,
                timeout_ms: 5,
            },
            Reject::Unauthorized { problem: None },
            Reject::Forbidden {
                scope: Arc::from("a"),
            },
            Reject::AuthUnavailable {
                provider: Arc::from("p"),
            },
            Reject::UpstreamUnavailable {
                upstream: Arc::from("u"),
                reason: "circuit open",
                retry_after_secs: 3,
            },
            Reject::RateLimited {
                policy: Arc::from("p\"1"),
                retry_after_secs: 17,
            },
            Reject::Overloaded {
                reason: "max_in_flight",
                upstream: None,
            },
            Reject::UnsupportedVersion {
                version: Some(3),
                supported: vec![1, 2],
            },
            Reject::RequestTimeout { timeout_ms: 10 },
            Reject::RateLimitUnavailable {
                policy: Arc::from("p"),
            },
        ]
    }

    #[test]
    fn status_and_code_table_is_pinned() {
        let table: Vec<(u16, &str)> = all()
            .iter()
            .map(|r| (r.status().as_u16(), r.code()))
            .collect();
        assert_eq!(
            table,
            vec![
                (400, "bad_request"),
                (404, "no_route"),
                (413, "payload_too_large"),
                (431, "headers_too_large"),
                (502, "bad_gateway"),
                (504, "upstream_timeout"),
                (401, "unauthorized"),
                (403, "forbidden"),
                (503, "auth_unavailable"),
                (503, "upstream_unavailable"),
                (429, "rate_limited"),
                (503, "overloaded"),
                (404, "unsupported_version"),
                (408, "request_timeout"),
                (503, "rate_limit_unavailable"),
            ]
        );
    }

    #[test]
    fn problem_documents_are_valid_json_with_every_field() {
        // Every kind of byte the escaper treats differently, at both ends
        // and in between.
        const ID: &str = "\u{1}id-\"quoted\"\\\u{1f}\u{7f}é✓\n\"";
        for r in all() {
            let text = r.problem_json(r.status(), ID);
            let doc: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(doc["error"], r.code());
            assert_eq!(doc["status"], r.status().as_u16());
            assert_eq!(doc["detail"], r.to_string());
            assert_eq!(doc["request_id"], ID);
            assert_eq!(doc["type"], format!("urn:portcullis:problem:{}", r.code()));
            assert_eq!(doc["retry_after"].as_u64(), r.retry_after());
            assert_eq!(doc["upstream"].as_str(), r.upstream());
        }
    }

    #[test]
    fn version_problems() {
        let r = Reject::UnsupportedVersion {
            version: Some(3),
            supported: vec![1, 2],
        };
        let doc: serde_json::Value =
            serde_json::from_str(&r.problem_json(r.status(), "r")).unwrap();
        assert_eq!(doc["supported_versions"], serde_json::json!(["1", "2"]));
        assert_eq!(
            doc["detail"],
            "version 3 is not served at this path; it serves versions 1, 2"
        );
        let r = Reject::VersionConflict {
            first: ("path", 1),
            second: ("header", 2),
        };
        assert_eq!(r.code(), "bad_request");
        assert_eq!(
            r.to_string(),
            "the request names two versions: 1 by its path and 2 by its header"
        );
    }

    #[test]
    fn problem_document_shape() {
        let r = Reject::UpstreamTimeout {
            upstream: Arc::from("users"),
            timeout_ms: 250,
        };
        let resp = r.to_response("rid-1");
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
    }
}
