//! Request size limits (pipeline step 1, `admit`): `max_header_bytes` → 431
//! and `max_body_bytes` → 413. A declared `Content-Length` over the limit is
//! refused before anything is read; a chunked body is cut while it streams
//! (see [`crate::body::RequestBody`]).

pub mod rate;
pub mod shared;
pub mod shed;
pub mod store;

use http::Request;

use crate::error::Reject;

/// Per-request limits from the snapshot's `server` block.
#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    pub max_header_bytes: u64,
    pub max_body_bytes: u64,
}

/// Checks the size of the request head (431).
pub fn check_head<B>(req: &Request<B>, limits: &SizeLimits) -> Result<(), Reject> {
    // The head as the client sent it: request line plus `name: value\r\n` lines.
    let mut size = (req.method().as_str().len() + target_len(req.uri()) + 12) as u64;
    for (name, value) in req.headers() {
        size += (name.as_str().len() + value.len() + 4) as u64;
    }
    if size > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Checks a declared `Content-Length` against `max_body_bytes` (413) before
/// any of the body is read.
pub fn check_declared_body<B>(req: &Request<B>, limits: &SizeLimits) -> Result<(), Reject> {
    if let Some(len) = req.headers().get(http::header::CONTENT_LENGTH) {
        let declared = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(Reject::BadRequest {
                reason: "Content-Length is not a number",
            })?;
        if declared > limits.max_body_bytes {
            return Err(Reject::PayloadTooLarge {
                limit: limits.max_body_bytes,
            });
        }
    }
    Ok(())
}

/// Length of the request target, without formatting it.
fn target_len(uri: &http::Uri) -> usize {
    uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SizeLimits = SizeLimits {
        max_header_bytes: 1024,
        max_body_bytes: 100,
    };

    #[test]
    fn header_and_body_limits() {
        let ok = Request::get("/x").header("a", "b").body(()).unwrap();
        assert!(check_head(&ok, &LIMITS).is_ok());
        let big = Request::get("/x")
            .header("a", "b".repeat(1100))
            .body(())
            .unwrap();
        assert!(matches!(
            check_head(&big, &LIMITS),
            Err(Reject::HeadersTooLarge { .. })
        ));
        let body = Request::post("/x")
            .header("content-length", "101")
            .body(())
            .unwrap();
        assert!(matches!(
            check_declared_body(&body, &LIMITS),
            Err(Reject::PayloadTooLarge { .. })
        ));
        let body = Request::post("/x")
            .header("content-length", "100")
            .body(())
            .unwrap();
        assert!(check_declared_body(&body, &LIMITS).is_ok());
        let body = Request::post("/x")
            .header("content-length", "ten")
            .body(())
            .unwrap();
        assert!(matches!(
            check_declared_body(&body, &LIMITS),
            Err(Reject::BadRequest { .. })
        ));
    }
}
